package ipc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
)

// ProtocolVersion is the version of this wire protocol. It travels in the
// go-plugin handshake: a dispatcher refuses a worker built for another
// version with a clear error instead of misreading its frames.
const ProtocolVersion = 1

// The go-plugin handshake's magic cookie: a worker serves only if it finds
// this variable with this value in its environment.
const (
	CookieKey   = "DISPATCHER_WORKER_COOKIE"
	CookieValue = "b6f3f1c4e0a94f3c9d3c2a7e5b1d8f60"
)

// Environment variables the dispatcher sets for a worker, besides go-plugin's.
const (
	// EnvFDs lists the inherited descriptors of the slot connections, as
	// comma-separated decimal numbers ("3,4").
	EnvFDs = "DISPATCHER_IPC_FDS"
	// EnvMaxFrame is the largest frame the dispatcher accepts from the
	// worker, in bytes.
	EnvMaxFrame = "DISPATCHER_IPC_MAX_FRAME"
	// EnvDepth is the pipelining depth: how many exchanges the dispatcher
	// may start on one slot before the first ends (1 if unset). The worker
	// runs them one at a time, in order.
	EnvDepth = "DISPATCHER_IPC_DEPTH"
	// MaxDepth bounds the pipelining depth.
	MaxDepth = 64
	// EnvControl, set to ControlNone, tells the worker that the dispatcher
	// will not connect to its control socket: the worker prints the
	// handshake line without listening on the path it names (PROTOCOL.md
	// 2.2). Unset, the worker listens.
	EnvControl  = "DISPATCHER_CONTROL"
	ControlNone = "none"
	// EnvFeatures lists the optional protocol features the dispatcher
	// understands, comma-separated. A worker uses a feature only if it is
	// listed.
	EnvFeatures = "DISPATCHER_IPC_FEATURES"
	// FeatureInformational: the dispatcher relays informational (1xx)
	// responses sent as KindInformational frames.
	FeatureInformational = "informational"
	// FeatureHeadAck: a worker acknowledges the head of each request whose
	// body is streamed with a window frame granting no credit ([id, 0]; see
	// ServerConn.WriteAck) before its handler starts, and lists the feature
	// in its pongs (ServerConn.SetFeatures). The dispatcher then knows that a
	// worker that died before sending any frame of such an exchange never
	// ran its handler, and sends the request again to another worker,
	// replaying the start of its body (Replay).
	FeatureHeadAck = "head-ack"
	// FeatureWideWindow: with FeatureHeadAck, a worker that lists this
	// feature in its pongs grants WideWindow - Window more bytes of credit
	// in each acknowledgement ([id, 786432] instead of [id, 0]), and so
	// buffers up to WideWindow unacknowledged bytes of a streamed request
	// body: fewer flow-control round trips for an upload. The dispatcher
	// adds the grant to the exchange's window like any credit.
	FeatureWideWindow = "wide-window"
	// FeatureContinue: a worker that lists this feature in its pongs
	// accepts requests with the continue element (Request.Continue): such
	// an exchange starts with no credit, and the worker grants its window
	// (Window, or WideWindow with FeatureWideWindow) in a window frame when
	// the handler first reads the body; with FeatureHeadAck its
	// acknowledgement grants nothing. The dispatcher reads nothing of the
	// client's body until then, so the client's "100 Continue" comes when
	// the handler wants the body, and not at all if it answers without it.
	FeatureContinue = "continue"
	// FeatureWideChunk: body frames may carry up to WideChunkSize bytes
	// instead of ChunkSize. A dispatcher that announces it accepts such
	// frames from the worker (it announces it only when its frame limit is
	// at least WideChunkMaxFrame); a worker that lists it in its pongs
	// accepts them from the dispatcher. Each side sends wide chunks only
	// if the other accepts them. A bulk transfer then costs a quarter of
	// the frames, system calls and wake-ups.
	FeatureWideChunk = "wide-chunk"
	// FeatureWithdraw: a worker that lists this feature in its pongs
	// answers a withdraw frame for a request queued on the slot (pipelined,
	// not started) by dropping the request and sending a withdrawn frame at
	// once, even amid the frames of the running exchange; for a request it
	// has started, or does not know, it ignores the withdraw. The
	// dispatcher then moves a request queued behind a slow one to a worker
	// that is free, knowing its handler never ran.
	FeatureWithdraw = "withdraw"
)

// Features are the optional protocol features this dispatcher announces
// with the default frame limit (see Announced).
var Features = []string{FeatureInformational, FeatureHeadAck, FeatureWideWindow, FeatureContinue, FeatureWideChunk, FeatureWithdraw}

// Announced returns the features a dispatcher whose frame limit is
// maxFrame announces: Features, without FeatureWideChunk when a wide chunk
// would not fit in a frame.
func Announced(maxFrame int) []string {
	if maxFrame >= WideChunkMaxFrame {
		return Features
	}
	return slices.DeleteFunc(slices.Clone(Features), func(f string) bool { return f == FeatureWideChunk })
}

// HasFeature reports whether the dispatcher that started this worker
// announced the feature.
func HasFeature(name string) bool {
	for f := range strings.SplitSeq(os.Getenv(EnvFeatures), ",") {
		if strings.TrimSpace(f) == name {
			return true
		}
	}
	return false
}

// Info describes a worker, as reported over the control connection.
type Info struct {
	SDK string // implementation and version, e.g. "go-sdk/1"
}

// ErrNotWorker reports a process started outside a dispatcher.
var ErrNotWorker = errors.New("ipc: not started by a dispatcher (no " + EnvFDs + " in the environment)")

// WorkerConns returns the slot connections the dispatcher passed to this
// process, and the frame limit and pipelining depth it announced. Each inherited descriptor is
// closed after being duplicated into a close-on-exec connection, so
// processes the worker starts do not inherit it.
func WorkerConns() (conns []net.Conn, maxFrame, depth int, err error) {
	list := os.Getenv(EnvFDs)
	if list == "" || os.Getenv(CookieKey) != CookieValue {
		return nil, 0, 0, ErrNotWorker
	}
	maxFrame, depth = DefaultMaxFrame, 1
	if s := os.Getenv(EnvMaxFrame); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < MinMaxFrame {
			return nil, 0, 0, fmt.Errorf("ipc: bad %s=%q", EnvMaxFrame, s)
		}
		maxFrame = n
	}
	if s := os.Getenv(EnvDepth); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxDepth {
			return nil, 0, 0, fmt.Errorf("ipc: bad %s=%q", EnvDepth, s)
		}
		depth = n
	}
	for _, f := range strings.Split(list, ",") {
		fd, err := strconv.Atoi(f)
		if err != nil || fd < 3 {
			return nil, 0, 0, fmt.Errorf("ipc: bad %s=%q", EnvFDs, list)
		}
		file := os.NewFile(uintptr(fd), "slot-"+f)
		c, err := net.FileConn(file)
		file.Close()
		if err != nil {
			return nil, 0, 0, fmt.Errorf("ipc: slot descriptor %d: %w", fd, err)
		}
		conns = append(conns, c)
	}
	_ = os.Unsetenv(EnvFDs)
	return conns, maxFrame, depth, nil
}
