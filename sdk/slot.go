package sdk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// slot serves one connection: one exchange at a time, whose handler runs in
// its own goroutine while the slot keeps reading body, cancel and ping
// frames. Complete requests that arrive while an exchange runs wait in a
// queue (up to the pipelining depth the dispatcher announced) and run in
// order, each as soon as the previous response has ended.
type slot struct {
	w  *worker
	sc *ipc.ServerConn

	mu    sync.Mutex
	cur   *exchange
	queue []queued
}

type queued struct {
	ex  *exchange
	req *ipc.Request
}

// exchange is one request in flight on a slot.
type exchange struct {
	id        uint64
	requestID string
	ctx       context.Context // the handler's; cancelled by a cancel frame, its deadline, or at the end
	cancel    context.CancelCauseFunc
	body      *requestBody // nil when the request arrived whole
	finishing bool         // its last frame is being written
	headOut   atomic.Bool  // the response head was sent: the deadline no longer applies
}

func (s *slot) serve() {
	defer s.w.slots.Done()
	defer s.sc.Close()
	for {
		f, err := s.sc.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				logger.WithError(err).Error("slot connection failed; closing it")
			}
			s.abandon()
			return
		}
		switch f.Kind {
		case ipc.KindRequest:
			if !s.start(f.Request) {
				logger.WithField("id", f.ID).Error("request frame during another exchange; closing the slot")
				s.abandon()
				return
			}
		case ipc.KindBody, ipc.KindEnd, ipc.KindAbort:
			ex := s.current(f.ID)
			if ex == nil || ex.body == nil {
				continue // the exchange ended: late frames are harmless
			}
			var err error
			switch f.Kind {
			case ipc.KindBody:
				err = ex.body.push(f.Data)
			case ipc.KindEnd:
				ex.body.finish(nil, f.Trailer)
			case ipc.KindAbort:
				ex.body.finish(errors.New("request body aborted: "+f.Reason), nil)
			}
			if err != nil {
				logger.WithError(err).Error("closing the slot")
				s.abandon()
				return
			}
		case ipc.KindCancel:
			if ex := s.current(f.ID); ex != nil {
				ex.cancel(nil)
				if ex.body != nil {
					ex.body.finish(context.Canceled, nil)
				}
			} else {
				s.cancelQueued(f.ID)
			}
		case ipc.KindWithdraw:
			if err := s.withdraw(f.ID); err != nil {
				s.abandon()
				return
			}
		case ipc.KindPing:
			if err := s.sc.WritePong(f.ID); err != nil {
				s.abandon()
				return
			}
		}
	}
}

// current returns the exchange id, running or queued (a request queued while
// its predecessor writes its last frame may already get body frames).
func (s *slot) current(id uint64) *exchange {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && s.cur.id == id {
		return s.cur
	}
	for _, q := range s.queue {
		if q.ex.id == id && q.ex.body != nil {
			return q.ex
		}
	}
	return nil
}

// cancelQueued cancels a queued request: when its turn comes it is
// answered with an abort frame instead of running (answers stay in order).
func (s *slot) cancelQueued(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.queue {
		if q.ex.id == id && q.ex.body == nil {
			q.ex.cancel(nil)
			return
		}
	}
}

// withdraw takes a queued request that has not started out of the queue,
// as the dispatcher asked, and says so with a withdrawn frame; a request
// that started, or is unknown, stays as it is. The frame is written before
// the lock that advance takes is released: no frame of a request after it
// in line may go out first (the dispatcher would read it as the withdrawn
// request's answer).
func (s *slot) withdraw(id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, q := range s.queue {
		if q.ex.id == id {
			q.ex.cancel(nil)
			s.queue = slices.Delete(s.queue, i, i+1)
			return s.sc.WriteWithdrawn(id)
		}
	}
	return nil
}

// abandon cancels the exchange in flight and drops the queued ones when the
// connection is gone.
func (s *slot) abandon() {
	s.mu.Lock()
	ex := s.cur
	s.queue = nil
	s.mu.Unlock()
	if ex != nil {
		ex.cancel(nil)
		if ex.body != nil {
			ex.body.finish(context.Canceled, nil)
		}
	}
}

// start runs a request at once if the slot is idle, or queues it. It
// reports false for a protocol violation: a request with a streamed body on
// a busy slot, or more queued requests than the announced depth.
func (s *slot) start(req *ipc.Request) bool {
	// The frame buffer is reused by the next read: keep a copy.
	req.Body = append([]byte(nil), req.Body...)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		room := s.w.depth - 1
		if s.cur.finishing {
			room++ // the dispatcher may have seen its end already
		}
		// A streamed body may only follow an exchange whose end the
		// dispatcher may have seen, with nothing queued between them.
		streamOK := s.cur.finishing && len(s.queue) == 0
		if (!req.EOF && !streamOK) || len(s.queue) >= room {
			return false
		}
		s.queue = append(s.queue, queued{newExchange(s.sc, req, s.w.window()), req})
		return true
	}
	ex := newExchange(s.sc, req, s.w.window())
	s.cur = ex
	s.w.inflight.Add(1)
	go s.loop(ex, req)
	return true
}

func newExchange(sc *ipc.ServerConn, req *ipc.Request, window int) *exchange {
	ex := &exchange{id: req.ID, requestID: req.RequestID}
	ex.ctx, ex.cancel = context.WithCancelCause(context.WithValue(context.Background(), ctxKey{}, ex))
	if !req.EOF {
		ex.body = newRequestBody(sc, req.ID, req.Body, window, req.Continue)
	}
	return ex
}

// finishing marks the current exchange as writing its last frame, after
// which the dispatcher may already send the next request.
func (s *slot) finishing(ex *exchange) {
	s.mu.Lock()
	ex.finishing = true
	s.mu.Unlock()
}

// advance ends ex (its last frame is out) and makes the next queued request
// current, returning it, or nil.
func (s *slot) advance(ex *exchange) (*exchange, *ipc.Request) {
	ex.cancel(nil)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == ex {
		s.cur = nil
	}
	if s.cur != nil || len(s.queue) == 0 {
		return nil, nil
	}
	q := s.queue[0]
	s.queue[0] = queued{}
	s.queue = s.queue[1:]
	s.cur = q.ex
	return q.ex, q.req
}

// loop runs ex, then the requests queued behind it, in order, in this
// goroutine: a busy worker goes from one to the next without waiting.
func (s *slot) loop(ex *exchange, req *ipc.Request) {
	defer s.w.inflight.Done()
	for ex != nil {
		s.run(ex, req)
		ex, req = s.advance(ex)
	}
}

func (s *slot) run(ex *exchange, req *ipc.Request) {
	if ex.ctx.Err() != nil {
		// Cancelled while queued: the handler never sees it.
		s.finishing(ex)
		_ = s.sc.WriteAbort(ex.id, "cancelled before it started")
		return
	}
	if ex.body != nil && s.w.headAck {
		// The dispatcher may send the request to another worker if this
		// one dies before the acknowledgement: it goes out before the
		// handler can do anything. If it cannot, the dispatcher is gone.
		// With FeatureWideWindow, the acknowledgement also grants the
		// window's extra credit; a request marked continue gets all of its
		// window at the handler's first read instead.
		grant := s.w.window() - ipc.Window
		if req.Continue {
			grant = 0
		}
		if err := s.sc.WriteWindow(ex.id, grant); err != nil {
			ex.body.Close()
			return
		}
	}
	ctx := ex.ctx
	if req.Timeout > 0 {
		// The dispatcher gives up on a response head that has not come
		// within the timeout, counted from now: the handler's context says
		// so, and is done then unless the head went out (a streamed
		// response is bounded by the dispatcher chunk by chunk instead).
		ctx = headDeadline{Context: ex.ctx, deadline: time.Now().Add(req.Timeout)}
		t := time.AfterFunc(req.Timeout, func() {
			if !ex.headOut.Load() {
				ex.cancel(context.DeadlineExceeded)
			}
		})
		defer t.Stop()
	}
	inline := req.Body
	req.Body = nil
	rw := &responseWriter{s: s, ex: ex, header: make(http.Header)}
	r, err := newHTTPRequest(ctx, req, ex, inline)
	if err != nil {
		rw.header.Set("Content-Type", "text/plain; charset=utf-8")
		rw.WriteHeader(http.StatusBadRequest)
		io.WriteString(rw, "bad request: "+err.Error()+"\n")
		rw.finish()
		return
	}
	rw.req = r
	defer func() {
		if ex.body != nil {
			ex.body.Close()
		}
		if v := recover(); v != nil {
			rw.panicked(v, debug.Stack())
			return
		}
		rw.finish()
	}()
	s.w.h.ServeHTTP(rw, r)
}

// headDeadline is a handler's context when the dispatcher sent a timeout:
// Deadline reports when the response head is due, and Err says
// context.DeadlineExceeded once the exchange was cancelled for it.
type headDeadline struct {
	context.Context
	deadline time.Time
}

func (c headDeadline) Deadline() (time.Time, bool) { return c.deadline, true }

func (c headDeadline) Err() error {
	err := c.Context.Err()
	if err != nil && context.Cause(c.Context) == context.DeadlineExceeded {
		return context.DeadlineExceeded
	}
	return err
}

// newHTTPRequest rebuilds the *http.Request the dispatcher's server received.
func newHTTPRequest(ctx context.Context, req *ipc.Request, ex *exchange, inline []byte) (*http.Request, error) {
	var u *url.URL
	var err error
	if req.Method == http.MethodConnect && len(req.URI) > 0 && req.URI[0] != '/' {
		u = &url.URL{Host: req.URI}
	} else if u, err = url.ParseRequestURI(req.URI); err != nil {
		return nil, err
	}
	major, minor, ok := http.ParseHTTPVersion(req.Proto)
	if !ok {
		major, minor = 1, 1
	}
	h := http.Header(req.Header)
	if h == nil {
		h = make(http.Header)
	}
	if req.RequestID != "" && len(h["X-Request-Id"]) == 0 {
		h["X-Request-Id"] = []string{req.RequestID}
	}
	r := &http.Request{
		Method:        req.Method,
		URL:           u,
		Proto:         req.Proto,
		ProtoMajor:    major,
		ProtoMinor:    minor,
		Header:        h,
		ContentLength: req.ContentLength,
		Host:          req.Host,
		RemoteAddr:    req.RemoteAddr,
		RequestURI:    req.URI,
	}
	switch {
	case ex.body != nil:
		r.Body = ex.body
	case len(inline) > 0:
		r.Body = &inlineBody{data: inline}
	default:
		r.Body = http.NoBody
	}
	if req.ContentLength < 0 {
		r.TransferEncoding = []string{"chunked"}
	}
	r = r.WithContext(ctx)
	if ex.body != nil {
		// The body sets the trailers at EOF on the request the handler gets.
		ex.body.req = r
	}
	return r, nil
}

// inlineBody is a request body that arrived whole in the request frame.
type inlineBody struct {
	data   []byte
	closed bool
}

func (b *inlineBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if len(b.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

func (b *inlineBody) Close() error {
	b.closed = true
	return nil
}
