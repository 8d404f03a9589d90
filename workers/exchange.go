package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/sirupsen/logrus"
)

// maxAttempts bounds how many workers one request is offered to when the
// earlier ones turn out dead before reading it. A retry costs little, and
// with several slots per worker a request can land, again and again, on
// the idle slot of a worker whose other slot is running a crashing handler
// (a replacement starts in a few milliseconds and its slots are the next
// idle ones); the bound only stops a request from circling forever.
const maxAttempts = 6

// RoundTrip sends req to a worker and returns its response head. If req.EOF
// is false, the rest of the request body is read from body while the worker
// consumes it. The caller must Close the response.
//
// A request goes to an idle worker slot; when there is none, a complete
// request may wait in line behind the exchange of a busy slot that is
// making progress (up to Config.Pipeline outstanding), and runs as soon as
// the one before it ends; if that slot stalls while the function has room
// elsewhere, the request is taken back and runs there (FeatureWithdraw).
// Waiting for a worker, in the dispatcher or in line, is bounded by
// Config.QueueTimeout and ctx. The request timeout counts from the moment
// the request runs in a worker.
//
// A request that a worker died without reading is sent to another one (up
// to maxAttempts in all). A streamed body is sent again too when the worker
// acknowledges request heads (ipc.FeatureHeadAck): body is wrapped in an
// *ipc.Replay (unless it is one), which keeps what was read of it until
// the worker acknowledges the request.
//
// When ctx ends (its client left, or the caller cancelled it with a cause),
// RoundTrip and Next return context.Cause(ctx).
func (p *Pool) RoundTrip(ctx context.Context, req *ipc.Request, body io.Reader) (*Response, error) {
	rp, own := replayOf(req, body)
	if own {
		body = rp
	}
	resp, err := p.roundTrip(ctx, req, body, rp)
	if err != nil && own {
		rp.Close()
	}
	return resp, err
}

// replayOf returns body as an *ipc.Replay if the request's body is
// streamed (nil otherwise), and whether it wrapped body in a new one.
func replayOf(req *ipc.Request, body io.Reader) (*ipc.Replay, bool) {
	if req.EOF || body == nil {
		return nil, false
	}
	if rp, ok := body.(*ipc.Replay); ok {
		return rp, false
	}
	return ipc.NewReplay(body), true
}

// errNoReplay reports a streamed body that cannot be sent again; RoundTrip
// never meets it unless a caller passes a Replay that already went to a
// worker.
var errNoReplay = errors.New("workers: the request body was already sent to a worker and cannot be sent again")

func (p *Pool) roundTrip(ctx context.Context, req *ipc.Request, body io.Reader, rp *ipc.Replay) (*Response, error) {
	var err error
	pipelinable := req.EOF
	var deadline time.Time // in the queue, kept across withdrawals
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 && ctx.Err() != nil {
			return nil, context.Cause(ctx) // the client left: no retry
		}
		if rp != nil && !rp.Rewind() {
			if err == nil {
				err = errNoReplay
			}
			return nil, err
		}
		r := &Response{p: p}
		s, e, aerr := p.adm.admit(ctx, req, pipelinable, &r.t, deadline)
		if aerr != nil {
			if errors.Is(aerr, ctx.Err()) && ctx.Err() != nil {
				aerr = context.Cause(ctx)
			}
			return nil, aerr
		}
		r.s, r.PID = s, s.w.proc.PID()
		if e != nil {
			deadline = e.deadline
		}
		if err = r.exchange(ctx, req, body, e); err == nil {
			r.replay = rp
			return r, nil
		}
		if errors.Is(err, ipc.ErrWithdrawn) {
			// Taken back from a stalled slot: it never ran, and waits for
			// a free one, keeping its place and deadline in the queue.
			pipelinable = false
			attempt--
			continue
		}
		if !errors.Is(err, ipc.ErrNotDelivered) {
			return nil, err
		}
		// It may have been queued behind a request that killed its worker:
		// the retry waits for an idle slot, where only the worker's own
		// death can stop it.
		pipelinable = false
		p.log.WithError(err).WithFields(logrus.Fields{"pid": r.PID, "req_id": req.RequestID, "streamed": !req.EOF}).Debug("request did not reach its worker; retrying on another")
	}
	return nil, fmt.Errorf("%w: %w", ErrNoWorker, err)
}

// Response is a worker's response. Its body is read with Next.
type Response struct {
	Status    int
	Header    http.Header
	PID       int  // the worker that answered
	Streaming bool // the worker flushed or sent a large body: flush each chunk

	t      ipc.Ticket
	s      *slot
	p      *Pool
	body   *ipc.Body
	replay *ipc.Replay // the streamed request body, closed with the exchange
	ctx    context.Context

	// stop ends the interruption hook; interrupt waits for a hook in
	// flight. cause is why the exchange was interrupted (the context's
	// cause: its client left, or the caller gave up), set once.
	stop      func() bool
	interrupt sync.WaitGroup
	cause     atomic.Pointer[error]

	id    string    // the request's ID
	began time.Time // when it was sent: what its worker wrote since is its

	done bool
	err  error
}

// exchange runs req on r's slot: it sends it, waits for its turn if it is
// parked (e), and reads the response head. The timeout runs from the turn.
func (r *Response) exchange(ctx context.Context, req *ipc.Request, body io.Reader, e *entry) error {
	p, s := r.p, r.s
	conn, t := s.conn, &r.t
	req.Timeout = handlerTimeout(p.cfg.Timeout)
	r.ctx, r.id, r.began = ctx, req.RequestID, time.Now()
	if e == nil {
		if err := conn.CheckIdle(); err != nil {
			return r.fail(err) // junk written while idle: try another worker
		}
		_ = conn.SetDeadline(time.Now().Add(p.cfg.Timeout))
	}
	// A parked request's write is bounded by the running exchange's
	// deadline.
	if err := conn.Send(t, req, body); err != nil {
		if e != nil {
			p.adm.unpark(e, false)
		}
		return r.fail(err)
	}
	if e == nil && t.Turn() != nil {
		// A request parked on the slot went out first: this one runs
		// right after it.
		select {
		case <-t.Turn():
		case <-ctx.Done():
			r.done, r.err = true, context.Cause(ctx)
			_ = t.Cancel()
			p.cancelExchange(r)
			return r.err
		}
		_ = conn.SetDeadline(time.Now().Add(p.cfg.Timeout))
	}
	if e != nil {
		if err := p.adm.await(ctx, e); err != nil {
			// The client left, or QueueTimeout passed: the worker skips
			// the request, told to cancel it; its abort is read when its
			// turn comes.
			r.done, r.err = true, err
			if ctx.Err() != nil {
				r.err = context.Cause(ctx)
			}
			_ = t.Cancel()
			p.cancelExchange(r)
			return r.err
		}
		_ = conn.SetDeadline(time.Now().Add(p.cfg.Timeout))
	}
	if ctx.Done() != nil {
		r.interrupt.Add(1)
		r.stop = context.AfterFunc(ctx, func() {
			defer r.interrupt.Done()
			err := context.Cause(ctx)
			r.cause.CompareAndSwap(nil, &err)
			t.Interrupt()
		})
	}
	head, rb, err := t.Head()
	if err != nil {
		return r.fail(err)
	}
	r.Status, r.Header, r.Streaming, r.body = head.Status, head.Header, !head.EOF, rb
	return nil
}

// handlerTimeout is the deadline the handler is told (Request.Timeout):
// a little less than the dispatcher's own, so that a handler that answers
// at its deadline is read before the worker is killed for the timeout.
func handlerTimeout(timeout time.Duration) time.Duration {
	return timeout - min(timeout/10, 100*time.Millisecond)
}

// Next returns the next chunk of the body, valid until the next call, or
// io.EOF after the last one. Any other error has already been dealt with
// (the worker killed or the exchange cancelled) and is typed like
// RoundTrip's.
func (r *Response) Next() ([]byte, error) {
	if r.done {
		if r.err != nil {
			return nil, r.err
		}
		return nil, io.EOF
	}
	b, err := r.body.Next()
	if err == io.EOF {
		r.finish()
		return nil, io.EOF
	}
	if err != nil {
		return nil, r.fail(err)
	}
	if r.Streaming {
		// A stream (server-sent events, a long download) lives as long as it
		// makes progress: Timeout bounds each wait for the next chunk.
		r.t.Extend(time.Now().Add(r.p.cfg.Timeout))
	}
	return b, nil
}

// Trailer returns the response trailers, valid after Next returned io.EOF.
func (r *Response) Trailer() http.Header { return r.t.Trailer() }

// Close ends the exchange. If the body was not read to the end (the client
// went away), the worker is told to cancel the handler and the rest of its
// response is discarded.
func (r *Response) Close() {
	if r.done {
		return
	}
	r.done = true
	r.err = context.Canceled
	r.stopInterrupt()
	_ = r.t.Cancel()
	r.replay.Close()
	r.p.cancelExchange(r)
}

func (r *Response) stopInterrupt() {
	if r.stop != nil && r.stop() {
		r.interrupt.Done()
	}
	r.interrupt.Wait()
}

// finish completes a fully read exchange and hands its slot on.
func (r *Response) finish() {
	r.done = true
	r.stopInterrupt()
	r.replay.Close()
	r.p.adm.release(r.s, true)
}

// fail classifies a failed exchange, disposes of its worker or slot, and
// returns the error RoundTrip or Next reports: a read that stopped at a
// deadline was interrupted (the exchange's cause) or timed out.
func (r *Response) fail(err error) error {
	r.done = true
	r.stopInterrupt()
	r.replay.Close()
	p, s, w := r.p, r.s, r.s.w
	var abort *ipc.AbortError
	var pe *ipc.ProtocolError
	cause := r.cause.Load()
	switch {
	case errors.Is(err, ipc.ErrWithdrawn):
		// Given back by the worker: the slot is fine.
	case errors.Is(err, ipc.ErrNotDelivered) && errors.As(err, &pe):
		w.kill(CauseProtocol, "protocol violation: "+pe.Reason)
		p.discard(s, &r.t, err)
	case errors.Is(err, ipc.ErrNotDelivered):
		w.kill(CauseBroken, "died before reading a request")
		p.discard(s, &r.t, err)
	case errors.Is(err, os.ErrDeadlineExceeded) && cause != nil && s.conn.Err() == nil:
		// Interrupted (a deadline alone, even inside a frame, leaves the
		// connection usable): the worker is told to cancel.
		err = *cause
		_ = r.t.Cancel()
		p.cancelExchange(r)
		return err
	case errors.Is(err, os.ErrDeadlineExceeded) && cause != nil:
		// Interrupted on a connection that had already failed: the worker
		// cannot be told. It goes.
		w.kill(CauseBroken, "exchange interrupted on a broken connection")
		p.discard(s, &r.t, err)
		err = *cause
	case errors.Is(err, os.ErrDeadlineExceeded):
		w.blameOn(r.id) // its goroutine dump is this request's
		p.sup.quarantine(w, CauseTimeout, "request timed out")
		err = &TimeoutError{Path: p.cfg.Path, PID: w.proc.PID(), Timeout: p.cfg.Timeout}
		p.discard(s, &r.t, err)
	case errors.As(err, &abort) && s.conn.Err() == nil:
	default:
		err = p.crashed(w, err, r)
		p.discard(s, &r.t, err)
	}
	r.err = err
	p.adm.release(s, false)
	return err
}

// discard gives up on the connection of s once its worker is dead, telling
// the requests queued on it whether they can be retried. Only the exchange
// holding the connection's turn does it (t.Holds): another one whose send
// failed leaves it to the holder, which may still be reading.
func (p *Pool) discard(s *slot, t *ipc.Ticket, cause error) {
	if !t.Holds() {
		return
	}
	select {
	case <-s.w.proc.Exited():
		s.conn.Discard(cause)
	default:
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			select {
			case <-s.w.proc.Exited():
			case <-time.After(killedWait):
				// Still not reaped: what it wrote may be incomplete; the
				// requests queued on it are judged by what was read.
			}
			s.conn.Discard(cause)
		}()
	}
}

// killedWait bounds the waits for a killed worker to be reaped.
const killedWait = 2 * time.Second

// crashed builds the error of a worker that died or broke the protocol
// during request r, making sure it is dead and, within killedWait, reaped.
// The error carries what the worker wrote on stderr since r was sent.
func (p *Pool) crashed(w *worker, err error, r *Response) error {
	w.blameOn(r.id)
	var pe *ipc.ProtocolError
	if errors.As(err, &pe) {
		w.kill(CauseProtocol, "protocol violation: "+pe.Reason)
	}
	w.gone()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-w.proc.Exited():
	case <-t.C:
		w.kill(CauseProtocol, "closed its connection but did not exit")
		t.Reset(killedWait)
		select {
		case <-w.proc.Exited():
		case <-t.C:
		}
	}
	if w.proc.OutOfMemory() {
		err = fmt.Errorf("%w (%w)", ErrOutOfMemory, err)
	}
	return &ExitError{
		Path:   p.cfg.Path,
		PID:    w.proc.PID(),
		State:  w.proc.ExitState(),
		Stderr: w.proc.StderrTail(r.began, 100*time.Millisecond),
		Err:    err,
	}
}

// cancelExchange discards the rest of r's exchange in the background, after
// the worker was told to cancel it (and, if it is queued, once its turn
// comes). The slot is handed on if the handler finishes within CancelGrace;
// otherwise the worker is quarantined.
func (p *Pool) cancelExchange(r *Response) {
	if !p.track() {
		return // Close stops every worker; nothing to hand the slot back to
	}
	go func() {
		defer p.wg.Done()
		s, t := r.s, &r.t
		if turn := t.Turn(); turn != nil {
			select {
			case <-turn:
			case <-p.ctx.Done():
				return // Close stops every worker
			}
		}
		_ = s.conn.SetDeadline(time.Now().Add(p.cfg.CancelGrace))
		if err := t.Drain(); err != nil && !errors.Is(err, ipc.ErrNotDelivered) {
			if !s.w.out() {
				reason := fmt.Sprintf("handler did not return within %s of its client going away", p.cfg.CancelGrace)
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					reason = "draining a cancelled exchange failed: " + err.Error()
				}
				p.sup.quarantine(s.w, CauseQuarantined, reason)
			}
			p.discard(s, t, err)
		}
		p.adm.release(s, false)
	}()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
