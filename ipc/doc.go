// Package ipc is the wire protocol between the dispatcher and its worker
// processes: framing, message layouts, their bounded decoding, the exchange
// state machine of one connection (Conn, the dispatcher's end; ServerConn,
// the worker's), and the worker's side of go-plugin's handshake
// (ServeWorker). Its subpackage launch is the dispatcher's side of
// go-plugin, which launches, handshakes and stops workers: only it imports
// go-plugin and hclog, so worker binaries, which import ipc through the
// sdk, do not link them (nor gRPC and protobuf under them: a worker starts
// about 10 ms sooner and its binary is 10.5 MB instead of 19). ipc does not
// own process policy (package workers) or HTTP semantics (packages
// dispatcher and sdk).
//
// PROTOCOL.md in this directory is the complete, standalone specification
// for implementers of workers in other languages (with example frames in
// hex and a conformance kit, cmd/conformance); this comment summarises it.
//
// # Transport
//
// go-plugin starts the worker and performs its handshake: the worker must
// find DISPATCHER_WORKER_COOKIE in its environment, print go-plugin's
// handshake line ("1|1|unix|/path/to/socket|netrpc|") as the first line of
// standard output and serve go-plugin's net/rpc control connection on that
// socket if one is made (earlier dispatchers and the conformance checker
// use it to ping the process and to ask it to quit; this dispatcher removes
// the socket unconnected and stops a worker by closing its slots). Requests
// never travel over it.
//
// Requests travel over slot connections: for each unit of concurrency the
// dispatcher creates a socketpair(AF_UNIX, SOCK_STREAM) and passes one end to
// the worker as an inherited descriptor. DISPATCHER_IPC_FDS lists them
// ("3,4,5"), DISPATCHER_IPC_MAX_FRAME gives the largest frame the dispatcher
// accepts. A worker should mark them close-on-exec at once so its own children
// do not inherit them. One slot runs one exchange (a request and its
// response) at a time; complete requests may wait queued on it (see
// Exchanges). This transport was chosen by measurement: frames on
// inherited socketpairs ran at the bare-socket floor (43 µs per small round
// trip, 41-44k round trips/s 32-way on 2 cores), where go-plugin's MuxBroker
// streams cost 2.5x and net/rpc or gRPC 3-4x (see ../shared/GO-PLUGIN.md and
// bench/).
//
// # Frames
//
// Every message is a frame:
//
//	uint32 length (big endian) | uint8 kind | msgpack payload (length-1 bytes)
//
// length counts the kind byte and the payload; it is at least 1 and at most
// the receiver's limit (DefaultMaxFrame, 1 MiB, unless configured; never less
// than MinMaxFrame). The payload is one msgpack array whose elements are, by
// position:
//
//	kind      dir   payload
//	1 request  H>W  [id uint, method str, uri str, proto str, header map,
//	                 host str, remote_addr str, content_length int,
//	                 request_id str, body bin, eof bool]
//	                 + continue bool, only with "continue" (below)
//	2 body     both [id uint, data bin]                 data <= ChunkSize (64 KiB);
//	                 <= WideChunkSize (256 KiB) with "wide-chunk"
//	3 end      both [id uint, trailer map]
//	4 response W>H  [id uint, status int, header map, body bin, eof bool, trailer map]
//	5 cancel   H>W  [id uint]
//	6 ping     H>W  [id uint]
//	7 pong     W>H  [id uint] or [id uint, features [str]]   echoes the ping's id;
//	                 features: the announced features the worker uses
//	8 window   W>H  [id uint, n uint]                   n <= WideWindow (1 MiB);
//	                 [id, 0] first: the acknowledgement ("head-ack"),
//	                 [id, 786432] with "wide-window": a 1 MiB window
//	9 abort    both [id uint, reason str]
//	10 informational W>H [id uint, status int, header map]   1xx before the head;
//	                 only if DISPATCHER_IPC_FEATURES lists "informational"
//
// A header map is a msgpack map from str to an array of str (or nil), with
// keys as net/http canonicalises them. str may also be sent as bin; absent
// optional values are nil. uri is the request-target as received
// ("/path?query"); content_length is -1 when unknown (chunked); remote_addr
// is the real client's "ip:port"; status is 100-999.
//
// # Exchanges
//
// The dispatcher numbers exchanges on each connection with increasing ids
// (pings use the same counter) and starts one with a request frame. If eof is
// true, body is the whole request body. Otherwise body is its first chunk and
// the rest follows as body frames, then an end frame (with request trailers)
// or an abort frame if the client's body failed. The dispatcher sends at most
// Window body bytes (counting the first chunk) beyond what the worker has
// acknowledged; the worker acknowledges bytes its handler consumed with
// window frames, so its reader never blocks and always sees a cancel.
//
// A worker whose pongs list FeatureHeadAck ("head-ack", announced by the
// dispatcher) also acknowledges the head of each request whose body is
// streamed: a window frame [id, 0], its first frame of the exchange, sent
// before its handler starts. Until it (or any frame of the exchange)
// arrives, the dispatcher keeps a copy of the body it sent (Replay); flow
// control bounds the copy to one Window, since credit comes only in window
// frames. A worker that also lists FeatureWideWindow ("wide-window") grants
// WideWindow - Window bytes in that acknowledgement, for a 1 MiB window:
// an upload then waits for credit a quarter as often.
//
// A worker whose pongs list FeatureContinue ("continue") may get requests
// with a twelfth element, continue, true (Request.Continue): the client
// waits for "100 Continue", no byte of its body was read, and the exchange
// starts with no credit. The worker grants its whole window when the
// handler first reads the body; a handler that answers without reading it
// grants nothing, and the client never sends the body.
//
// A worker whose pongs list FeatureWithdraw ("withdraw") answers a withdraw
// frame for a queued request it has not started by dropping it and sending
// a withdrawn frame at once (Ticket.Withdraw, ServerConn.WriteWithdrawn):
// the dispatcher then runs the request on a free worker instead of letting
// it wait behind a slow one.
//
// A request's thirteenth element, timeout_ms (Request.Timeout), is the
// dispatcher's request timeout: the worker's handler has that long, from the
// moment it starts, to send the response head. The Go sdk puts the deadline
// on the handler's context.
//
// FeatureWideChunk ("wide-chunk") raises the body chunk limit of body frames
// to WideChunkSize (256 KiB): the dispatcher announces it when its frame
// limit holds such a chunk (Announced) and then accepts them from the
// worker; a worker that lists it in its pongs accepts them from the
// dispatcher. The first chunk, in a request or response frame, stays within
// ChunkSize. A chunk over the limit is a protocol error.
//
// With DISPATCHER_IPC_DEPTH=d (default 1) the dispatcher may send up to d
// requests on a slot before the first ends; the worker runs them one at a
// time in arrival order, each starting when the previous one's last frame is
// written, so the dispatcher knows a queued request has not started until
// the response before it ended. Only the running request, or one sent after
// the end of the previous response was received, may have a streamed body.
// A queued request that is cancelled never starts: when its turn comes, the
// worker answers it with an abort frame ("cancelled before it started"), so
// that answers stay in request order.
//
// The worker answers with a response frame. If eof is true it holds the whole
// body and the trailers and the exchange is over. Otherwise body frames
// follow (each one a flush point, relayed to the client at once), then an end
// frame with the trailers, or an abort frame if the handler failed after the
// head was sent (the client's connection is cut). The response body is
// flow-controlled by the socket itself: the dispatcher reads it as fast as
// its client takes it.
//
// A cancel frame tells the worker the dispatcher gave up on the exchange
// (client gone): the handler's context is cancelled and the worker still ends
// the response as usual; the dispatcher discards it. Frames for an exchange
// that already ended are ignored. A ping is answered with a pong at once,
// whatever the slot is doing (the dispatcher sends health pings on idle
// slots only).
//
// # Limits and failures
//
// Every decode is bounded by the frame it reads: a declared length larger
// than the bytes that remain is an error, never an allocation. An oversized,
// truncated or malformed frame, or one out of order, is a *ProtocolError: the
// dispatcher kills the worker that sent it and its client gets 502. A worker
// that closes a slot while the dispatcher's request frame is still unread in
// it (a worker dying while idle) yields ErrNotDelivered: the request is safe to
// retry elsewhere. So does a worker using FeatureHeadAck that closes the slot,
// between two frames, before it acknowledged a streamed request: its handler
// never ran, and the body sent so far is replayed from its Replay, followed by
// the rest of the client's body.
//
// # Versions
//
// ProtocolVersion (1) travels in the go-plugin handshake; a worker of another
// version is refused at start with go-plugin's "Incompatible API version"
// error. Within a version, fields are only ever appended to a payload array:
// a receiver ignores elements beyond those it knows, and rejects an array
// shorter than it requires. Frame kinds unknown to a receiver are protocol
// errors. Any other change needs a new ProtocolVersion, or an optional
// feature the dispatcher announces in EnvFeatures and a worker uses only
// when announced (FeatureInformational: kind 10; FeatureHeadAck: the
// acknowledgement, which the worker lists in its pongs so that the dispatcher
// knows to wait for it).
package ipc
