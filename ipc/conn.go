package ipc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	// ErrNotDelivered wraps a failure that happened before the worker read
	// any part of the request: retrying it elsewhere is safe.
	ErrNotDelivered = errors.New("ipc: request not delivered to the worker")
	// ErrPeerClosed reports that the worker end of the connection went away
	// (the worker exited or closed it) in the middle of an exchange.
	ErrPeerClosed = errors.New("ipc: worker closed the connection")
	// ErrBroken reports use of a connection that an earlier failure made
	// unusable.
	ErrBroken = errors.New("ipc: connection unusable after an earlier failure")
)

// AbortError reports a handler failure after the response head was sent, as
// told by the worker in an abort frame.
type AbortError struct {
	Reason string
}

func (e *AbortError) Error() string { return "ipc: worker aborted the response: " + e.Reason }

// BodyError reports a failure reading the request body from the client. The
// worker has seen a truncated body (or nothing) and the exchange is over.
type BodyError struct {
	Err error
}

func (e *BodyError) Error() string { return "ipc: read request body: " + e.Err.Error() }
func (e *BodyError) Unwrap() error { return e.Err }

type notDelivered struct{ err error }

func (e *notDelivered) Error() string        { return ErrNotDelivered.Error() + ": " + e.err.Error() }
func (e *notDelivered) Unwrap() error        { return e.err }
func (e *notDelivered) Is(target error) bool { return target == ErrNotDelivered }

// Conn is the dispatcher's end of one slot: a stream connection to a worker
// that carries one exchange (request and response) at a time, and may hold
// further complete requests queued behind it (pipelining, see the package
// doc).
//
// Each exchange has a Ticket: its place in the connection's line. Only the
// ticket at the head of the line (the one holding the turn) reads from the
// connection; when its response has been read to the end, the turn passes to
// the next ticket at once. After a failure the turn does not pass: the
// caller makes sure the worker is dead and calls Discard, which tells each
// queued ticket whether its request can be retried.
//
// A ticket's Head and Body must be used by one goroutine at a time; Send,
// Cancel, Discard and Close may be called from any goroutine.
type Conn struct {
	nc  net.Conn
	rc  syscall.RawConn // nc's, when it has one: to look for unsolicited bytes
	rdl time.Time       // the read deadline last set with SetDeadline or SetReadDeadline; guarded by qmu
	// peek, made once, peeks at the socket for pending; peekN is what it
	// found. Guarded by qmu.
	peek    func(fd uintptr) bool
	peekBuf [1]byte
	peekN   int
	fr      *frameReader
	pd      *payloadDecoder
	wmu     sync.Mutex
	fw      *frameWriter

	sent atomic.Uint64 // last exchange id sent; written under qmu and wmu
	errp atomic.Pointer[error]
	// headAck, cont, wideChunk, withdraw: the worker's last pong listed
	// FeatureHeadAck, FeatureContinue, FeatureWideChunk, FeatureWithdraw.
	headAck, cont, wideChunk, withdraw atomic.Bool

	qmu   sync.Mutex
	cur   *Ticket   // holder of the turn: it alone reads; nil when idle
	queue []*Ticket // sent after cur, in order

	// Owned by the holder of the turn.
	id     uint64 // cur's id
	state  connState
	pump   *pump
	pmu    sync.Mutex // guards pump for Close; held only to read or set it
	window int        // credit granted by the worker, consumed by the pump
	// replay is cur's streamed body while the worker may not have read
	// it; heard is set once a frame of cur's exchange arrived.
	replay *Replay
	heard  bool

	own Ticket // RoundTrip's
}

type connState uint8

const (
	stIdle connState = iota
	stHead           // request sent, waiting for the response head
	stBody           // head received, reading body frames
)

// Ticket is one exchange's place in a connection's line. Its zero value is
// ready for Send; a ticket is used for one exchange and may then be reused.
type Ticket struct {
	c      *Conn
	id     uint64
	single bool          // the request went out whole in one frame
	turn   chan struct{} // closed when the ticket gets the turn; nil if it had it at once
	err    error         // set by Discard before turn is closed
	// done: the exchange is over for this ticket. Set under the
	// connection's qmu while the ticket holds the turn: Interrupt and
	// Extend read it from other goroutines.
	done bool
	// interrupted is set by Interrupt; guarded by the connection's qmu.
	interrupted bool
	// withdrawing: Withdraw sent a withdraw frame for it; guarded by qmu.
	withdrawing bool
	informer    Informer
	resp        Response
	body        Body
}

// NewConn wraps the dispatcher's end of a slot connection. maxFrame bounds
// every frame read (DefaultMaxFrame if 0).
func NewConn(nc net.Conn, maxFrame int) *Conn {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	c := &Conn{nc: nc, fr: newFrameReader(nc, maxFrame), pd: newPayloadDecoder(), fw: newFrameWriter()}
	if sc, ok := nc.(syscall.Conn); ok {
		c.rc, _ = sc.SyscallConn()
		c.peek = func(fd uintptr) bool {
			c.peekN, _, _ = syscall.Recvfrom(int(fd), c.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return true
		}
	}
	return c
}

// errUnsolicited is the reason of the *ProtocolError of a worker that wrote
// something other than a late window frame on a connection with no exchange
// in progress: nothing asked for it, and a request sent now would read it as
// its answer.
const errUnsolicited = "wrote while no exchange was in progress"

// CheckIdle reads what the worker wrote since the last exchange ended, if
// anything, without waiting: window frames for exchanges that are over are
// normal (credit the worker granted late); anything else is a protocol
// violation, returned as an error wrapping ErrNotDelivered and a
// *ProtocolError, after which the connection is unusable. Call it before
// sending a request on an idle connection: a worker that wrote junk while
// idle would otherwise have it read as that request's answer. During an
// exchange it does nothing: what the worker wrote is that exchange's.
func (c *Conn) CheckIdle() error {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.cur != nil {
		return nil
	}
	if err := c.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrBroken, err)
	}
	if err := c.settle(); err != nil {
		c.fail(err)
		return &notDelivered{err}
	}
	return nil
}

// settleWait bounds CheckIdle's wait for the rest of a frame that arrived in
// part.
const settleWait = 50 * time.Millisecond

// settle is CheckIdle's reading. Called with qmu held.
func (c *Conn) settle() error {
	if !c.pending() {
		return nil
	}
	// Frames that arrived are read whole; one of which only a part came
	// gets a moment for the rest (a worker writes each frame at once).
	_ = c.nc.SetReadDeadline(time.Now().Add(settleWait))
	defer func() { _ = c.nc.SetReadDeadline(c.rdl) }()
	for c.pending() {
		k, p, err := c.fr.next()
		var pe *ProtocolError
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return protoErr(0, "%s: a partial frame", errUnsolicited)
		case errors.As(err, &pe):
			return err
		case err != nil:
			return nil // the worker closed: the request's send sees it
		}
		c.pd.reset(k, p)
		if k != KindWindow {
			return protoErr(k, errUnsolicited)
		}
		id, _, err := c.pd.idCount()
		if err != nil {
			return err
		}
		if id > c.sent.Load() {
			return protoErr(k, "%s: credit for exchange %d, never sent", errUnsolicited, id)
		}
	}
	return nil
}

// pending reports whether unread bytes from the worker are buffered or
// waiting in the socket. Called with qmu held.
func (c *Conn) pending() bool {
	if c.fr.br.Buffered() > 0 || c.fr.inFrame() {
		return true
	}
	if c.rc == nil {
		return false
	}
	c.peekN = 0
	_ = c.rc.Read(c.peek)
	return c.peekN > 0
}

// SetDeadline bounds every read and write of the current exchange.
func (c *Conn) SetDeadline(t time.Time) error {
	c.qmu.Lock()
	c.rdl = t
	c.qmu.Unlock()
	return c.nc.SetDeadline(t)
}

// SetReadDeadline bounds reads only. A read that times out leaves the
// connection usable (for Cancel and Drain), also inside a frame: the next
// read resumes where it stopped.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.qmu.Lock()
	c.rdl = t
	c.qmu.Unlock()
	return c.nc.SetReadDeadline(t)
}

// Close closes the connection. The worker sees end of stream. Tickets queued
// behind a failed exchange are released by Discard, not by Close.
func (c *Conn) Close() error {
	err := c.nc.Close()
	// A body pump waiting for credit would wait forever: release it.
	c.pmu.Lock()
	p := c.pump
	c.pmu.Unlock()
	if p != nil {
		p.abandon()
	}
	return err
}

// Err returns the error that made the connection unusable, or nil.
func (c *Conn) Err() error {
	if p := c.errp.Load(); p != nil {
		return *p
	}
	return nil
}

// HeadAck reports whether the worker listed FeatureHeadAck in its last pong
// (Ping): it acknowledges the head of each streamed request before its
// handler starts, so a streamed request it died without acknowledging can
// be sent again elsewhere.
func (c *Conn) HeadAck() bool { return c.headAck.Load() }

// Idle reports whether no exchange is in progress or queued and the
// connection is usable.
func (c *Conn) Idle() bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return c.cur == nil && c.Err() == nil
}

// Outstanding returns the number of exchanges in progress or queued.
func (c *Conn) Outstanding() int {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.cur == nil {
		return 0
	}
	return 1 + len(c.queue)
}

func (c *Conn) write(b []byte) error {
	_, err := c.nc.Write(b)
	return err
}

// fail makes the connection unusable; the first error sticks and is
// returned.
func (c *Conn) fail(err error) error {
	if c.errp.CompareAndSwap(nil, &err) {
		c.pmu.Lock()
		p := c.pump
		c.pmu.Unlock()
		if p != nil {
			p.abandon() // no more credit will be read for it
		}
	}
	return err
}

// isReset reports whether err means the worker closed its end while data we
// sent was still unread, or before we wrote: the request never reached it.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// Send writes req to the worker and gives t its place in line. If no
// exchange is in progress, t holds the turn at once and, if req.EOF is false,
// the rest of the body is read from body and streamed to the worker with
// flow control. Otherwise req must be complete (req.EOF) and t waits behind
// the exchanges before it: wait on t.Turn() before calling t.Head. The caller
// keeps the number of outstanding exchanges within the depth the worker was
// told.
//
// An error wrapping ErrNotDelivered means the worker read nothing of the
// request; t is then not in line.
//
// If body is a *Replay and the worker announced FeatureHeadAck (HeadAck),
// Head may also fail with an error wrapping ErrNotDelivered for a streamed
// body: the worker died before it acknowledged the request, so its handler
// never ran; after body.Rewind, the request (with the same first chunk in
// req.Body) can be sent to another worker.
func (c *Conn) Send(t *Ticket, req *Request, body io.Reader) error {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if err := c.Err(); err != nil {
		return &notDelivered{fmt.Errorf("%w: %w", ErrBroken, err)} // nothing was written
	}
	queued := c.cur != nil
	if queued && !req.EOF {
		return errors.New("ipc: a streamed request body on a busy connection")
	}
	*t = Ticket{c: c, single: req.EOF, informer: req.Informer}
	// A worker without FeatureContinue gets the usual window: the body is
	// read at once, as if the client had not asked to wait.
	cont := req.Continue && !req.EOF && len(req.Body) == 0 && c.cont.Load()
	c.wmu.Lock()
	t.id = c.sent.Add(1)
	req.ID = t.id
	err := c.write(c.fw.request(req, cont))
	c.wmu.Unlock()
	if err != nil {
		reset := isReset(err)
		switch {
		case queued && reset:
			// The worker closed its end: nothing of this request reached
			// it, and what it wrote before, the exchanges ahead of this one
			// still read.
		case queued:
			// The holder is reading: break its read too, the stream may be
			// torn.
			c.fail(err)
			c.nc.Close()
		default:
			c.fail(err)
			c.cur = t // holds a dead turn: nothing can queue behind it
		}
		if reset {
			return &notDelivered{err}
		}
		return err
	}
	if queued {
		t.turn = make(chan struct{})
		c.queue = append(c.queue, t)
		return nil
	}
	c.take(t)
	c.window = Window - len(req.Body)
	if cont {
		c.window = 0 // until the handler reads
	}
	if !req.EOF {
		if rp, ok := body.(*Replay); ok {
			c.replay = rp
			body = rp.view()
			if !c.headAck.Load() {
				// No acknowledgement will come: from now on the worker may
				// have read the request.
				c.hear()
			}
		}
		chunk := ChunkSize
		if c.wideChunk.Load() {
			chunk = WideChunkSize
		}
		p := startPump(c, t.id, body, req.Trailer, c.window, chunk)
		c.pmu.Lock()
		c.pump = p
		c.pmu.Unlock()
	}
	return nil
}

// chunkFrom is the largest body chunk the worker may send: WideChunkSize
// if the dispatcher announced FeatureWideChunk, which it does when its
// frame limit holds one (Announced).
func (c *Conn) chunkFrom() int {
	if c.fr.max >= WideChunkMaxFrame {
		return WideChunkSize
	}
	return ChunkSize
}

// take gives t the turn. Called with qmu held.
func (c *Conn) take(t *Ticket) {
	c.cur = t
	c.id = t.id
	c.state = stHead
	c.replay, c.heard = nil, false
}

// Turn returns a channel that is closed when t holds the turn (or was
// released by Discard), or nil if it held it from the start.
func (t *Ticket) Turn() <-chan struct{} { return t.turn }

// ID returns the exchange id of t's request.
func (t *Ticket) ID() uint64 { return t.id }

// Holds reports whether t holds the turn, also a dead one: after a failed
// Send on an idle connection, or a failed Head or Body read. Only the holder
// may Discard the connection. A ticket whose Send failed while another
// exchange held the turn, or that Discard released, leaves it alone: the
// holder's read fails too, and it discards.
func (t *Ticket) Holds() bool {
	c := t.c
	if c == nil {
		return false
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	return c.cur == t
}

// Head reads the response head. t must hold the turn. The returned response
// and body belong to t and stay valid while t is not reused; the body's
// chunks alias connection buffers and are valid until the next read.
//
// Errors wrapping ErrNotDelivered mean the worker cannot have started the
// request. Other errors leave the connection broken (see Err), except an
// *AbortError, and a read deadline (os.ErrDeadlineExceeded), after which
// the caller may Cancel and Drain.
func (t *Ticket) Head() (*Response, *Body, error) {
	if t.err != nil {
		t.done = true
		return nil, nil, t.err
	}
	c := t.c
	if err := c.Err(); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBroken, err)
	}
	if err := c.readHead(t); err != nil {
		return nil, nil, err
	}
	t.body.t = t
	return &t.resp, &t.body, nil
}

// RoundTrip sends req on an idle connection and returns the response head
// (Send and Head with the connection's own ticket). If req.EOF is false, the
// rest of the body is read from body and streamed to the worker with flow
// control; body may be nil when req.EOF is true. The returned Body aliases
// connection buffers: read it to the end (or call Drain) before the next
// RoundTrip.
func (c *Conn) RoundTrip(req *Request, body io.Reader) (*Response, *Body, error) {
	if c.Err() == nil && !c.Idle() {
		return nil, nil, errors.New("ipc: RoundTrip during another exchange")
	}
	if err := c.Send(&c.own, req, body); err != nil {
		return nil, nil, err
	}
	return c.own.Head()
}

// readHead reads frames until the response head of t arrives.
func (c *Conn) readHead(t *Ticket) error {
	for {
		k, p, err := c.fr.next()
		if err != nil {
			return c.readFailed(t, err)
		}
		c.pd.reset(k, p)
		switch k {
		case KindResponse:
			r := &t.resp
			if err := c.pd.responseInto(r); err != nil {
				return c.fail(err)
			}
			if r.ID != c.id {
				return c.fail(protoErr(k, "response for exchange %d during %d", r.ID, c.id))
			}
			c.hear()
			t.body.data = r.Body
			c.state = stBody
			if r.EOF {
				return c.finish(t)
			}
			return nil
		case KindWindow:
			if err := c.credit(); err != nil {
				return err
			}
		case KindInformational:
			id, status, h, err := c.pd.informational()
			if err != nil {
				return c.fail(err)
			}
			if id != c.id {
				return c.fail(protoErr(k, "informational response for exchange %d during %d", id, c.id))
			}
			c.hear()
			if t.informer != nil {
				t.informer.Informational(status, h)
			}
		case KindAbort:
			return c.aborted(t)
		case KindWithdrawn:
			if done, err := c.withdrawn(t); done || err != nil {
				return err
			}
		default:
			return c.fail(protoErr(k, "unexpected before the response head"))
		}
	}
}

// aborted ends the exchange on an abort frame. The connection stays usable.
func (c *Conn) aborted(t *Ticket) error {
	id, reason, err := c.pd.idString()
	if err != nil {
		return c.fail(err)
	}
	if id != c.id {
		return c.fail(protoErr(KindAbort, "abort for exchange %d during %d", id, c.id))
	}
	c.hear()
	if err := c.finish(t); err != nil {
		return err
	}
	return &AbortError{Reason: reason}
}

// readFailed classifies a read error of t's exchange.
func (c *Conn) readFailed(t *Ticket, err error) error {
	var pe *ProtocolError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && !c.fr.partial:
		return err // the stream is intact: a frame in progress is resumed
	case errors.As(err, &pe):
	case t.single && c.state == stHead && errors.Is(err, syscall.ECONNRESET) && t.id == c.sent.Load():
		// The worker closed with our only frame, the last one sent, still
		// unread.
		err = &notDelivered{err}
	case c.unacknowledged(t) && (err == io.EOF || isReset(err)):
		// The worker closed between frames without having acknowledged a
		// streamed request, which it does before its handler starts
		// (FeatureHeadAck): the handler never ran, and the body read so
		// far is kept to be sent again.
		err = &notDelivered{err}
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err):
		err = fmt.Errorf("%w: %w", ErrPeerClosed, err)
	}
	return c.fail(err)
}

// unacknowledged reports whether t's streamed request can be sent again
// after the worker died: it sent no frame of the exchange (the stream is
// between frames), and its body is a Replay still copying what it read.
func (c *Conn) unacknowledged(t *Ticket) bool {
	return !t.single && c.state == stHead && t.id == c.id && !c.heard && !c.fr.partial &&
		c.replay != nil && c.replay.replayable()
}

// hear notes that the worker has the current request (it sent a frame of
// the exchange, or it may have read the request without a word): its body
// is never sent again, and the copy kept for that is dropped.
func (c *Conn) hear() {
	if c.heard {
		return
	}
	c.heard = true
	if c.replay != nil {
		c.replay.acked()
		c.replay = nil
	}
}

func (c *Conn) credit() error {
	id, n, err := c.pd.idCount()
	if err != nil {
		return c.fail(err)
	}
	if id == c.id {
		c.hear() // the acknowledgement [id, 0], or credit
	}
	if id != c.id || c.pump == nil {
		return nil // late credit for a finished body: harmless
	}
	c.pump.grant(n)
	return nil
}

// finish completes t's exchange once its response is fully read: it stops
// the body pump and waits for it, so the connection carries nothing of this
// exchange any more, then passes the turn to the next ticket in line.
func (c *Conn) finish(t *Ticket) error {
	c.qmu.Lock()
	t.done = true
	c.qmu.Unlock()
	if c.pump != nil {
		err := c.pump.stop()
		c.pmu.Lock()
		c.pump = nil
		c.pmu.Unlock()
		if err != nil {
			c.state = stIdle
			return c.fail(err)
		}
	}
	c.state = stIdle
	if len(t.body.data) == 0 {
		c.pass(t)
	}
	return nil
}

// pass hands the turn from t, whose exchange is over and whose last chunk
// was consumed (it aliases the read buffer the next holder reads into), to
// the next ticket in line. Later calls do nothing.
func (c *Conn) pass(t *Ticket) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.cur != t {
		return
	}
	if len(c.queue) == 0 {
		c.cur = nil
	} else {
		next := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		c.take(next)
		close(next.turn)
	}
}

// Interrupt makes t's pending read return os.ErrDeadlineExceeded at once
// (the stream stays intact, even inside a frame), if t still holds the
// turn. Safe to call from any goroutine.
func (t *Ticket) Interrupt() {
	c := t.c
	c.qmu.Lock()
	t.interrupted = true
	if c.cur == t && !t.done {
		_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	}
	c.qmu.Unlock()
}

// Extend moves the read deadline of t's exchange to d, if t holds the turn
// and was not interrupted (an interrupt is never undone). Safe to call from
// any goroutine.
func (t *Ticket) Extend(d time.Time) {
	c := t.c
	c.qmu.Lock()
	if c.cur == t && !t.done && !t.interrupted {
		_ = c.nc.SetReadDeadline(d)
	}
	c.qmu.Unlock()
}

// Trailer returns the response trailers, valid after the body reached EOF.
func (t *Ticket) Trailer() http.Header { return t.resp.Trailer }

// Trailer returns the trailers of RoundTrip's last response.
func (c *Conn) Trailer() http.Header { return c.own.resp.Trailer }

// Body reads the body of a response. Its chunks alias the connection's read
// buffer.
type Body struct {
	t    *Ticket
	data []byte
}

// Next returns the rest of the current chunk, reading the next body frame if
// needed, or io.EOF after the last one. The slice is valid until the next
// call.
func (b *Body) Next() ([]byte, error) {
	for len(b.data) == 0 {
		if err := b.t.more(); err != nil {
			return nil, err
		}
	}
	d := b.data
	b.data = nil
	return d, nil
}

func (b *Body) Read(p []byte) (int, error) {
	for len(b.data) == 0 {
		if err := b.t.more(); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

// more reads the next body frame of t's exchange, or reports its end.
func (t *Ticket) more() error {
	if t.done {
		t.c.pass(t)
		return io.EOF
	}
	c := t.c
	if err := c.Err(); err != nil {
		return err
	}
	k, p, err := c.fr.next()
	if err != nil {
		return c.readFailed(t, err)
	}
	c.pd.reset(k, p)
	switch k {
	case KindBody:
		id, data, err := c.pd.idData()
		if err != nil {
			return c.fail(err)
		}
		if id != c.id {
			return c.fail(protoErr(k, "body for exchange %d during %d", id, c.id))
		}
		if limit := c.chunkFrom(); len(data) > limit {
			return c.fail(protoErr(k, "chunk of %d bytes, over the limit of %d", len(data), limit))
		}
		t.body.data = data
	case KindEnd:
		id, tr, err := c.pd.idHeader()
		if err != nil {
			return c.fail(err)
		}
		if id != c.id {
			return c.fail(protoErr(k, "end for exchange %d during %d", id, c.id))
		}
		t.resp.Trailer = tr
		t.body.data = nil
		if err := c.finish(t); err != nil {
			return err
		}
		return io.EOF
	case KindWindow:
		return c.credit()
	case KindAbort:
		return c.aborted(t)
	case KindWithdrawn:
		if _, err := c.withdrawn(t); err != nil {
			return err
		}
	default:
		return c.fail(protoErr(k, "unexpected in a response body"))
	}
	return nil
}

// ErrWithdrawn is wrapped by the error of an exchange the worker dropped,
// before starting it, when Withdraw asked (it wraps ErrNotDelivered too).
var ErrWithdrawn = errors.New("ipc: request withdrawn from the worker before it started")

// CanWithdraw reports whether the worker listed FeatureWithdraw in its last
// pong: Withdraw can take back its queued requests.
func (c *Conn) CanWithdraw() bool { return c.withdraw.Load() }

// Withdraw asks the worker to give back t's request, which waits in line
// behind another exchange, so that it can run elsewhere. It reports whether
// the request was sent: only for a queued ticket, to a worker that lists
// FeatureWithdraw, once. The answer comes on t.Turn: t is released with an
// error wrapping ErrWithdrawn if the worker dropped the request before
// starting it; otherwise (it had started it) t gets its turn as usual.
// Safe to call from any goroutine.
func (t *Ticket) Withdraw() bool {
	c := t.c
	if c == nil || !c.withdraw.Load() {
		return false
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.cur == t || t.withdrawing || !slices.Contains(c.queue, t) || c.Err() != nil {
		return false
	}
	c.wmu.Lock()
	err := c.write(c.fw.idFrame(KindWithdraw, t.id))
	c.wmu.Unlock()
	if err != nil {
		return false // the holder's reads see the failure
	}
	t.withdrawing = true
	return true
}

// withdrawn handles a withdrawn frame read by t, the holder of the turn: it
// releases the queued ticket it names, or ends t's own exchange if t was
// withdrawn before the worker answered anything of it (done). A withdrawn
// frame for an exchange nobody withdrew is a protocol violation.
func (c *Conn) withdrawn(t *Ticket) (done bool, err error) {
	id, err := c.pd.idOnly()
	if err != nil {
		return false, c.fail(err)
	}
	c.qmu.Lock()
	if id == c.id && c.cur == t && t.withdrawing && c.state == stHead && !c.heard {
		c.qmu.Unlock()
		if err := c.finish(t); err != nil {
			return true, err
		}
		return true, &notDelivered{ErrWithdrawn}
	}
	for i, q := range c.queue {
		if q.id == id && q.withdrawing {
			c.queue = slices.Delete(c.queue, i, i+1)
			q.err = &notDelivered{ErrWithdrawn}
			close(q.turn)
			c.qmu.Unlock()
			return false, nil
		}
	}
	c.qmu.Unlock()
	return false, c.fail(protoErr(KindWithdrawn, "for exchange %d, which was not withdrawn", id))
}

// Cancel tells the worker the dispatcher gave up on t's exchange, running
// or queued. The handler's context is cancelled (a queued request never
// starts); the worker still ends the response, which the holder of t must
// Drain once t has the turn. Safe to call from any goroutine.
func (t *Ticket) Cancel() error {
	c := t.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.write(c.fw.idFrame(KindCancel, t.id))
}

// Cancel cancels RoundTrip's exchange (see Ticket.Cancel).
func (c *Conn) Cancel() error { return c.own.Cancel() }

// Drain reads and discards the rest of t's exchange, which must hold the
// turn.
func (t *Ticket) Drain() error {
	if t.err != nil {
		t.done = true
		return t.err
	}
	c := t.c
	t.body.data = nil
	for !t.done {
		if err := c.Err(); err != nil {
			return err
		}
		var err error
		if c.state == stHead {
			err = c.readHead(t)
		} else {
			err = t.more()
		}
		t.body.data = nil
		var ae *AbortError
		if err != nil && err != io.EOF && !errors.As(err, &ae) {
			return err
		}
	}
	c.pass(t)
	return c.Err()
}

// Drain reads and discards the rest of RoundTrip's exchange.
func (c *Conn) Drain() error {
	c.qmu.Lock()
	busy := c.cur == &c.own
	c.qmu.Unlock()
	if !busy {
		return c.Err()
	}
	return c.own.Drain()
}

// Discard ends the use of a connection after a failure (the exchange
// holding the turn failed, and the caller made sure the worker process is
// dead), and releases every ticket queued behind it. It is called by the
// holder of the turn (Ticket.Holds), after its read returned: it inspects
// what is left unread. A queued request gets
// an error wrapping ErrNotDelivered if the worker cannot have started it:
// the failure was the worker closing its end or a timeout, not a protocol
// violation, and the worker wrote nothing after what was read (it starts a
// queued request only after writing the last frame of the one before).
// Otherwise it gets ErrPeerClosed. The connection is closed.
func (c *Conn) Discard(cause error) {
	c.fail(cause)
	c.qmu.Lock()
	queue := c.queue
	c.queue = nil
	c.qmu.Unlock()
	if len(queue) > 0 {
		var verdict error = &notDelivered{fmt.Errorf("queued behind a failed exchange: %w", c.Err())}
		if c.wroteMore() {
			verdict = fmt.Errorf("%w: queued behind a failed exchange: %w", ErrPeerClosed, c.Err())
		}
		for _, t := range queue {
			t.err = verdict
			close(t.turn)
		}
	}
	c.Close()
}

// wroteMore reports whether the worker may have written anything the
// holder of the turn did not read. Called after the worker died.
func (c *Conn) wroteMore() bool {
	var pe *ProtocolError
	if errors.As(c.Err(), &pe) || c.fr.partial || c.fr.inFrame() || c.fr.br.Buffered() > 0 {
		return true
	}
	if err := c.nc.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		return true
	}
	var b [1]byte
	n, _ := c.nc.Read(b[:])
	return n > 0
}

// Ping sends a ping on an idle connection and waits for the pong. The
// caller bounds it with SetDeadline.
func (c *Conn) Ping() error {
	c.qmu.Lock()
	if c.cur != nil || c.Err() != nil {
		c.qmu.Unlock()
		return errors.New("ipc: ping during an exchange")
	}
	c.wmu.Lock()
	id := c.sent.Add(1)
	err := c.write(c.fw.idFrame(KindPing, id))
	c.wmu.Unlock()
	c.qmu.Unlock()
	if err != nil {
		return c.fail(err)
	}
	k, p, err := c.fr.next()
	if err != nil {
		return c.readFailed(&Ticket{id: id}, err)
	}
	c.pd.reset(k, p)
	if k != KindPong {
		return c.fail(protoErr(k, "unexpected while waiting for a pong"))
	}
	got, f, err := c.pd.pong()
	if err != nil {
		return c.fail(err)
	}
	if got != id {
		return c.fail(protoErr(k, "pong %d for ping %d", got, id))
	}
	c.headAck.Store(f.headAck)
	c.cont.Store(f.cont)
	c.wideChunk.Store(f.wideChunk)
	c.withdraw.Store(f.withdraw)
	return nil
}

// pump streams the rest of a request body within the worker's credit.
type pump struct {
	c       *Conn
	id      uint64
	body    io.Reader
	trailer http.Header

	mu      sync.Mutex
	cond    sync.Cond
	credit  int
	stopped bool
	sending bool // writing a frame: stop waits for the write to end
	done    chan struct{}
	err     error
	chunk   int // the largest chunk the worker accepts
}

// pumpBufs recycle the pumps' read buffers, of ChunkSize and of
// WideChunkSize.
var pumpBufs = [2]sync.Pool{
	{New: func() any { b := make([]byte, ChunkSize); return &b }},
	{New: func() any { b := make([]byte, WideChunkSize); return &b }},
}

func startPump(c *Conn, id uint64, body io.Reader, trailer http.Header, credit, chunk int) *pump {
	p := &pump{c: c, id: id, body: body, trailer: trailer, credit: credit, chunk: chunk, done: make(chan struct{})}
	p.cond.L = &p.mu
	go p.run()
	return p
}

func (p *pump) grant(n int) {
	p.mu.Lock()
	p.credit += n
	p.mu.Unlock()
	p.cond.Signal()
}

// stop makes the pump give up at its next step and waits until it writes
// nothing more: for a frame being written to be written, not for a read of
// the body in flight (a client that stopped sending), after which the pump
// exits without writing. It returns the pump's write error, if any (a read
// error of the client body is the worker's concern: it sees a truncated
// body).
func (p *pump) stop() error {
	p.mu.Lock()
	p.stopped = true
	p.cond.Broadcast()
	for p.sending {
		p.cond.Wait()
	}
	err := p.err
	p.mu.Unlock()
	return err
}

// abandon makes the pump give up at its next step without waiting for it.
func (p *pump) abandon() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *pump) run() {
	defer close(p.done)
	pool := &pumpBufs[0]
	if p.chunk > ChunkSize {
		pool = &pumpBufs[1]
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	for {
		p.mu.Lock()
		for p.credit <= 0 && !p.stopped {
			p.cond.Wait()
		}
		stopped, want := p.stopped, min(p.credit, len(buf))
		p.mu.Unlock()
		if stopped {
			return
		}
		n, rerr := p.body.Read(buf[:want])
		if n > 0 {
			p.mu.Lock()
			p.credit -= n
			p.mu.Unlock()
			if err := p.sendParts(func(fw *frameWriter) ([]byte, []byte) { return fw.bodyParts(p.id, buf[:n]) }); err != nil {
				return
			}
		}
		if rerr != nil {
			var trailer http.Header
			if rerr == io.EOF {
				trailer = nonEmpty(p.trailer)
			} else {
				// The worker sees the body end early; the handler's read
				// returns an error because of the abort reason.
				_ = p.send(func(fw *frameWriter) []byte { return fw.abort(p.id, "client body: "+rerr.Error()) })
				return
			}
			_ = p.send(func(fw *frameWriter) []byte { return fw.end(p.id, trailer) })
			return
		}
	}
}

// errPumpStopped is send's answer once stop was called: nothing more is
// written for the exchange.
var errPumpStopped = errors.New("ipc: body pump stopped")

// send writes one frame under the connection's write lock, unless the pump
// was stopped.
func (p *pump) send(build func(*frameWriter) []byte) error {
	return p.sendParts(func(fw *frameWriter) ([]byte, []byte) { return build(fw), nil })
}

// sendParts is send for a frame built in two parts (see bodyParts).
func (p *pump) sendParts(build func(*frameWriter) (head, tail []byte)) error {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return errPumpStopped
	}
	p.sending = true
	p.mu.Unlock()
	p.c.wmu.Lock()
	head, tail := build(p.c.fw)
	err := writeFrame(p.c.nc, head, tail)
	p.c.wmu.Unlock()
	p.mu.Lock()
	p.sending = false
	if err != nil {
		p.err = err
	}
	p.mu.Unlock()
	p.cond.Broadcast()
	return err
}

func nonEmpty(h http.Header) http.Header {
	if len(h) == 0 {
		return nil
	}
	return h
}
