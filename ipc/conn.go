package ipc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
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
// that carries one exchange (request and response) at a time.
//
// RoundTrip and the returned Response.Body must be used by one goroutine at a
// time; Cancel, SetDeadline and Close may be called from any goroutine.
type Conn struct {
	nc  net.Conn
	fr  *frameReader
	pd  *payloadDecoder
	wmu sync.Mutex
	fw  *frameWriter

	id     uint64
	state  connState
	err    error // sticky: once set the connection is unusable
	pump   *pump
	pmu    sync.Mutex // guards pump for Close; held only to read or set it
	body   Body
	resp   Response
	window int // credit granted by the worker, consumed by the pump
}

type connState uint8

const (
	stIdle connState = iota
	stHead           // request sent, waiting for the response head
	stBody           // head received, reading body frames
)

// NewConn wraps the dispatcher's end of a slot connection. maxFrame bounds
// every frame read (DefaultMaxFrame if 0).
func NewConn(nc net.Conn, maxFrame int) *Conn {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	c := &Conn{nc: nc, fr: newFrameReader(nc, maxFrame), pd: newPayloadDecoder(), fw: newFrameWriter()}
	c.body.c = c
	return c
}

// SetDeadline bounds every read and write of the current exchange.
func (c *Conn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// SetReadDeadline bounds reads only. A read that times out between frames
// leaves the connection usable (for Cancel and Drain); one that times out
// inside a frame breaks it.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// Close closes the connection. The worker sees end of stream.
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
func (c *Conn) Err() error { return c.err }

// Idle reports whether no exchange is in progress and the connection is
// usable.
func (c *Conn) Idle() bool { return c.state == stIdle && c.err == nil }

func (c *Conn) write(b []byte) error {
	_, err := c.nc.Write(b)
	return err
}

func (c *Conn) fail(err error) error {
	if c.err == nil {
		c.err = err
		if c.pump != nil {
			c.pump.abandon() // no more credit will be read for it
		}
	}
	return err
}

// isReset reports whether err means the worker closed its end while data we
// sent was still unread, or before we wrote: the request never reached it.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// RoundTrip sends req and returns the response head. If req.EOF is false,
// the rest of the body is read from body and streamed to the worker with flow
// control; body may be nil when req.EOF is true. The returned Response.Body
// aliases connection buffers: read it to the end (or call Drain) before the
// next RoundTrip.
//
// Errors wrapping ErrNotDelivered mean the worker read nothing of the
// request. Other errors leave the connection broken (see Err), except
// *BodyError, after which the caller must Drain.
func (c *Conn) RoundTrip(req *Request, body io.Reader) (*Response, *Body, error) {
	if c.err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBroken, c.err)
	}
	if c.state != stIdle {
		return nil, nil, errors.New("ipc: RoundTrip during another exchange")
	}
	c.id++
	req.ID = c.id
	c.wmu.Lock()
	err := c.write(c.fw.request(req))
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
		if isReset(err) {
			return nil, nil, &notDelivered{err}
		}
		return nil, nil, err
	}
	c.state = stHead
	c.window = Window - len(req.Body)
	if !req.EOF {
		p := startPump(c, req.ID, body, req.Trailer, c.window)
		c.pmu.Lock()
		c.pump = p
		c.pmu.Unlock()
	}
	resp, err := c.readHead(req.EOF)
	if err != nil {
		return nil, nil, err
	}
	return resp, &c.body, nil
}

// readHead reads frames until the response head arrives.
func (c *Conn) readHead(single bool) (*Response, error) {
	for {
		k, p, err := c.fr.next()
		if err != nil {
			return nil, c.readFailed(err, single)
		}
		c.pd.reset(k, p)
		switch k {
		case KindResponse:
			r, err := c.pd.response()
			if err != nil {
				return nil, c.fail(err)
			}
			if r.ID != c.id {
				return nil, c.fail(protoErr(k, "response for exchange %d during %d", r.ID, c.id))
			}
			c.resp = *r
			c.body.data = r.Body
			c.state = stBody
			if r.EOF {
				c.finish()
			}
			return &c.resp, nil
		case KindWindow:
			if err := c.credit(); err != nil {
				return nil, err
			}
		case KindAbort:
			return nil, c.aborted()
		default:
			return nil, c.fail(protoErr(k, "unexpected before the response head"))
		}
	}
}

// aborted ends the exchange on an abort frame. The connection stays usable.
func (c *Conn) aborted() error {
	id, reason, err := c.pd.idString()
	if err != nil {
		return c.fail(err)
	}
	if id != c.id {
		return c.fail(protoErr(KindAbort, "abort for exchange %d during %d", id, c.id))
	}
	c.finish()
	if c.err != nil {
		return c.err
	}
	return &AbortError{Reason: reason}
}

// readFailed classifies a read error of the current exchange.
func (c *Conn) readFailed(err error, single bool) error {
	var pe *ProtocolError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && !c.fr.partial:
		return err // between frames: the stream is intact
	case errors.As(err, &pe):
	case single && c.state == stHead && errors.Is(err, syscall.ECONNRESET):
		// The worker closed with our only frame still unread.
		err = &notDelivered{err}
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err):
		err = fmt.Errorf("%w: %w", ErrPeerClosed, err)
	}
	return c.fail(err)
}

func (c *Conn) credit() error {
	id, n, err := c.pd.idCount()
	if err != nil {
		return c.fail(err)
	}
	if id != c.id || c.pump == nil {
		return nil // late credit for a finished body: harmless
	}
	c.pump.grant(n)
	return nil
}

// finish completes the exchange once the response is fully read: it stops
// the body pump and waits for it, so the connection carries nothing of this
// exchange any more.
func (c *Conn) finish() {
	if c.pump != nil {
		err := c.pump.stop()
		c.pmu.Lock()
		c.pump = nil
		c.pmu.Unlock()
		if err != nil {
			c.fail(err)
			c.state = stIdle
			return
		}
	}
	c.state = stIdle
}

// Trailer returns the response trailers, valid after the body reached EOF.
func (c *Conn) Trailer() http.Header { return c.resp.Trailer }

// Body reads the body of the current response. Its chunks alias the
// connection's read buffer.
type Body struct {
	c    *Conn
	data []byte
}

// Next returns the rest of the current chunk, reading the next body frame if
// needed, or io.EOF after the last one. The slice is valid until the next
// call.
func (b *Body) Next() ([]byte, error) {
	c := b.c
	for len(b.data) == 0 {
		if c.state != stBody {
			if c.err != nil {
				return nil, c.err
			}
			return nil, io.EOF
		}
		if err := c.nextBodyFrame(); err != nil {
			return nil, err
		}
	}
	d := b.data
	b.data = nil
	return d, nil
}

func (b *Body) Read(p []byte) (int, error) {
	c := b.c
	for len(b.data) == 0 {
		if c.state != stBody {
			if c.err != nil {
				return 0, c.err
			}
			return 0, io.EOF
		}
		if err := c.nextBodyFrame(); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

func (c *Conn) nextBodyFrame() error {
	k, p, err := c.fr.next()
	if err != nil {
		return c.readFailed(err, false)
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
		c.body.data = data
	case KindEnd:
		id, tr, err := c.pd.idHeader()
		if err != nil {
			return c.fail(err)
		}
		if id != c.id {
			return c.fail(protoErr(k, "end for exchange %d during %d", id, c.id))
		}
		c.resp.Trailer = tr
		c.finish()
	case KindWindow:
		return c.credit()
	case KindAbort:
		return c.aborted()
	default:
		return c.fail(protoErr(k, "unexpected in a response body"))
	}
	return nil
}

// Cancel tells the worker the dispatcher gave up on the current exchange.
// The handler's context is cancelled; the worker still ends the response,
// which the caller must Drain. Safe to call from any goroutine.
func (c *Conn) Cancel() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.write(c.fw.idFrame(KindCancel, c.id))
}

// Drain reads and discards the rest of the current exchange, if any.
func (c *Conn) Drain() error {
	for c.err == nil && c.state != stIdle {
		if c.state == stHead {
			if _, err := c.readHead(false); err != nil {
				return err
			}
			continue
		}
		c.body.data = nil
		if err := c.nextBodyFrame(); err != nil {
			return err
		}
	}
	c.body.data = nil
	return c.err
}

// Ping sends a ping on an idle connection and waits for the pong. The
// caller bounds it with SetDeadline.
func (c *Conn) Ping() error {
	if !c.Idle() {
		return errors.New("ipc: ping during an exchange")
	}
	c.id++
	c.wmu.Lock()
	err := c.write(c.fw.idFrame(KindPing, c.id))
	c.wmu.Unlock()
	if err != nil {
		return c.fail(err)
	}
	k, p, err := c.fr.next()
	if err != nil {
		return c.readFailed(err, false)
	}
	c.pd.reset(k, p)
	if k != KindPong {
		return c.fail(protoErr(k, "unexpected while waiting for a pong"))
	}
	id, err := c.pd.idOnly()
	if err != nil {
		return c.fail(err)
	}
	if id != c.id {
		return c.fail(protoErr(k, "pong %d for ping %d", id, c.id))
	}
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
	done    chan struct{}
	err     error
	buf     []byte
}

func startPump(c *Conn, id uint64, body io.Reader, trailer http.Header, credit int) *pump {
	p := &pump{c: c, id: id, body: body, trailer: trailer, credit: credit, done: make(chan struct{})}
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

// stop makes the pump give up at its next step and waits for it. It returns
// the pump's write error, if any (a read error of the client body is the
// worker's concern: it sees a truncated body).
func (p *pump) stop() error {
	p.abandon()
	<-p.done
	return p.err
}

// abandon makes the pump give up at its next step without waiting for it.
func (p *pump) abandon() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.cond.Signal()
}

func (p *pump) run() {
	defer close(p.done)
	p.buf = make([]byte, ChunkSize)
	for {
		p.mu.Lock()
		for p.credit <= 0 && !p.stopped {
			p.cond.Wait()
		}
		stopped, want := p.stopped, min(p.credit, ChunkSize)
		p.mu.Unlock()
		if stopped {
			return
		}
		n, rerr := p.body.Read(p.buf[:want])
		if n > 0 {
			p.mu.Lock()
			p.credit -= n
			stopped = p.stopped
			p.mu.Unlock()
			if stopped {
				return
			}
			if err := p.send(func(fw *frameWriter) []byte { return fw.body(p.id, p.buf[:n]) }); err != nil {
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

// send writes one frame under the connection's write lock.
func (p *pump) send(build func(*frameWriter) []byte) error {
	p.c.wmu.Lock()
	err := p.c.write(build(p.c.fw))
	p.c.wmu.Unlock()
	if err != nil {
		p.err = err
	}
	return err
}

func nonEmpty(h http.Header) http.Header {
	if len(h) == 0 {
		return nil
	}
	return h
}
