package sdk

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"sync"

	"github.com/childproc/dispatcher/ipc"
)

// slot serves one connection: one exchange at a time, whose handler runs in
// its own goroutine while the slot keeps reading body, cancel and ping frames.
type slot struct {
	w  *worker
	sc *ipc.ServerConn

	mu  sync.Mutex
	cur *exchange
}

// exchange is one request in flight on a slot.
type exchange struct {
	id        uint64
	requestID string
	cancel    context.CancelFunc
	body      *requestBody // nil when the request arrived whole
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
				ex.cancel()
				if ex.body != nil {
					ex.body.finish(context.Canceled, nil)
				}
			}
		case ipc.KindPing:
			s.w.restoreStdio()
			if err := s.sc.WritePong(f.ID); err != nil {
				s.abandon()
				return
			}
		}
	}
}

func (s *slot) current(id uint64) *exchange {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && s.cur.id == id {
		return s.cur
	}
	return nil
}

// abandon cancels the exchange in flight when the connection is gone.
func (s *slot) abandon() {
	s.mu.Lock()
	ex := s.cur
	s.mu.Unlock()
	if ex != nil {
		ex.cancel()
		if ex.body != nil {
			ex.body.finish(context.Canceled, nil)
		}
	}
}

func (s *slot) start(req *ipc.Request) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	ex := &exchange{id: req.ID, requestID: req.RequestID, cancel: cancel}
	// The frame buffer is reused by the next read: keep a copy.
	inline := append([]byte(nil), req.Body...)
	req.Body = nil
	if !req.EOF {
		ex.body = newRequestBody(s.sc, req.ID, inline)
	}
	s.cur = ex
	s.w.inflight.Add(1)
	go s.run(context.WithValue(ctx, ctxKey{}, ex), ex, req, inline)
	return true
}

// end clears the current exchange before its last frame goes out, so the
// dispatcher's next request never finds the slot busy.
func (s *slot) end(ex *exchange) {
	s.mu.Lock()
	if s.cur == ex {
		s.cur = nil
	}
	s.mu.Unlock()
	ex.cancel()
}

func (s *slot) run(ctx context.Context, ex *exchange, req *ipc.Request, inline []byte) {
	defer s.w.inflight.Done()
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
		ex.body.req = r
		r.Body = ex.body
	case len(inline) > 0:
		r.Body = &inlineBody{data: inline}
	default:
		r.Body = http.NoBody
	}
	if req.ContentLength < 0 {
		r.TransferEncoding = []string{"chunked"}
	}
	return r.WithContext(ctx), nil
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
