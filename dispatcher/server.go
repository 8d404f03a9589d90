// Package dispatcher is the HTTP front: it turns each incoming request into
// an ipc.Request, hands it to an Invoker (a *workers.Pool), relays the
// worker's response, maps failures to status codes, and writes the access
// log. It owns HTTP semantics (hop-by-hop headers, forwarding headers,
// request IDs, body and header limits, response validation); it does not
// own processes, nor the listener and its protocols and timeouts (the
// caller's http.Server).
package dispatcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
)

// Invoker runs a request in a worker. *workers.Pool implements it.
type Invoker interface {
	RoundTrip(ctx context.Context, req *ipc.Request, body io.Reader) (*workers.Response, error)
}

var _ Invoker = (*workers.Pool)(nil)

// Config configures a Server.
type Config struct {
	// Invoker runs the requests. Required.
	Invoker Invoker
	// Logger receives the access log and failures. If nil, logrus's standard
	// logger.
	Logger *logrus.Entry
	// AccessLog, if false, turns the per-request access log entry off.
	// The entry is an info entry "request" with the fields bytes, client
	// (the client's IP: the peer's, or from a trusted proxy the one it
	// forwards for), duration_ms, host, method, path, pid (of the worker;
	// 0 if none), query (the raw query string), req_id, status and
	// user_agent; empty strings are left out. A Logger writing to a
	// LogWriter gets it built without logrus's per-entry fields map (see
	// LogWriter).
	AccessLog bool
	// AccessLogOmitQuery leaves the query string out of the access log (it
	// may carry tokens or personal data).
	AccessLogOmitQuery bool
	// Observer, if set, is told each request's status and duration
	// (metrics).
	Observer Observer
	// ErrorHandler answers a request that failed before the worker's
	// response head was relayed. If nil, the default writes the status
	// statusFor gives, a short plain-text body and the X-Dispatcher-Error
	// header, and logs the failure once.
	ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)

	// MaxBody bounds a request body, in bytes. A request whose
	// Content-Length exceeds it gets 413 before any of its body is read;
	// one without a length (chunked) gets 413 as soon as it crosses it, or,
	// if the worker's response has already started, a cut connection. The
	// rest of the body is not read. If zero, DefaultMaxBody; if negative,
	// no limit.
	MaxBody int64
	// MaxResponse bounds a response body relayed from a worker, in bytes.
	// A response declaring a larger Content-Length gets 502; one that grows
	// past it is cut (the client's connection is closed) and logged as an
	// error. If zero or negative, no limit.
	MaxResponse int64
	// MaxHeaders bounds the number of request header fields (each value of
	// a repeated field counts); past it the client gets 431. Their size is
	// bounded by http.Server.MaxHeaderBytes, which answers 431 too. If zero,
	// DefaultMaxHeaders; if negative, no limit.
	MaxHeaders int
	// TrustedProxies are the networks of proxies whose X-Forwarded-For,
	// X-Forwarded-Proto, X-Forwarded-Host and Forwarded headers are passed
	// on to the worker (with the peer's address appended to
	// X-Forwarded-For). From any other peer they are replaced by the
	// dispatcher's own view (Forwarded is dropped). If empty, no peer is
	// trusted. The worker's RemoteAddr is always the real peer.
	TrustedProxies []netip.Prefix
}

// Defaults for Config fields left at zero.
const (
	DefaultMaxBody    = 32 << 20
	DefaultMaxHeaders = 100
)

// Observer receives the outcome of each request a Server handles. Served
// is called once the response is complete (or cut), on the request's
// goroutine; it must be fast.
type Observer interface {
	Served(status int, d time.Duration)
}

// Server is the HTTP front. It is an http.Handler.
type Server struct {
	inv       Invoker
	log       *logrus.Entry
	accessLog *accessLog // nil: none
	obs       Observer
	onError   func(http.ResponseWriter, *http.Request, error)
	idPrefix  string
	idSeq     atomic.Uint64

	maxBody        int64 // 0: no limit
	maxResponse    int64 // 0: no limit
	maxHeaders     int   // 0: no limit
	trustedProxies []netip.Prefix
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Invoker == nil {
		return nil, errors.New("dispatcher: Config.Invoker is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = logrus.NewEntry(logrus.StandardLogger())
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	s := &Server{
		inv:            cfg.Invoker,
		log:            cfg.Logger,
		obs:            cfg.Observer,
		onError:        cfg.ErrorHandler,
		idPrefix:       hex.EncodeToString(b[:]) + "-",
		maxBody:        max(orDefault(cfg.MaxBody, DefaultMaxBody), 0),
		maxResponse:    max(cfg.MaxResponse, 0),
		maxHeaders:     max(orDefault(cfg.MaxHeaders, DefaultMaxHeaders), 0),
		trustedProxies: slices.Clone(cfg.TrustedProxies),
	}
	for i, p := range s.trustedProxies {
		if !p.IsValid() {
			return nil, fmt.Errorf("dispatcher: Config.TrustedProxies[%d] is not a valid prefix", i)
		}
		s.trustedProxies[i] = p.Masked()
	}
	if s.onError == nil {
		s.onError = s.defaultErrorHandler
	}
	if cfg.AccessLog {
		s.accessLog = newAccessLog(cfg.Logger, !cfg.AccessLogOmitQuery)
	}
	return s, nil
}

func orDefault[T int | int64](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// HeaderRequestID carries the request ID to the worker and back to the
// client. An incoming value is kept if it is 1-128 visible ASCII characters.
const HeaderRequestID = "X-Request-Id"

// HeaderError marks responses the dispatcher generated itself, so clients
// can tell them from a handler's.
const HeaderError = "X-Dispatcher-Error"

var chunkPool = sync.Pool{New: func() any { b := make([]byte, ipc.ChunkSize); return &b }}

// info is what the access log and error handler need to know of a request.
type info struct {
	set    [3]ipc.HeaderField // forwarding fields sent to the worker
	id     string
	idv    [1]string // the X-Request-Id header's value, allocated with info
	pid    int
	status int
	bytes  int64
	w      http.ResponseWriter // for Informational
	s      *Server
}

// Informational relays a worker's informational response (103 Early
// Hints, 102 Processing) to the client at once, with its own header
// fields only. 100 Continue is net/http's: it answers Expect itself.
func (in *info) Informational(status int, h http.Header) {
	if status == http.StatusContinue {
		return
	}
	if err := validHeader("informational header", h); err != nil {
		in.s.log.WithError(err).WithFields(logrus.Fields{"req_id": in.id, "status": status}).Warn("informational response from the worker not relayed")
		return
	}
	dst := in.w.Header()
	saved := make(http.Header, len(dst))
	for k, vs := range dst {
		saved[k] = vs
	}
	clear(dst)
	for k, vs := range h {
		dst[k] = vs
	}
	removeHop(dst)
	dst[HeaderRequestID] = saved[HeaderRequestID]
	in.w.WriteHeader(status)
	clear(dst)
	for k, vs := range saved {
		dst[k] = vs
	}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	in := &info{id: s.requestID(r), w: w, s: s}
	in.idv[0] = in.id
	w.Header()[HeaderRequestID] = in.idv[:]
	if s.accessLog != nil || s.obs != nil {
		// Deferred: a response cut with http.ErrAbortHandler counts too.
		defer s.served(r, in, time.Now())
	}
	s.serve(w, r, in)
}

func (s *Server) served(r *http.Request, in *info, start time.Time) {
	d := time.Since(start)
	if s.obs != nil {
		s.obs.Served(in.status, d)
	}
	if s.accessLog != nil && s.log.Logger.IsLevelEnabled(logrus.InfoLevel) {
		s.accessLog.write(r, in, s.clientAddr(r), d)
	}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, in *info) {
	if s.maxHeaders > 0 {
		if n := headerFields(r.Header); n > s.maxHeaders {
			s.fail(w, r, in, &HeaderLimitError{Count: n, Limit: s.maxHeaders})
			return
		}
	}
	if s.maxBody > 0 && r.ContentLength > s.maxBody {
		// Refused before a byte of the body is read: net/http sends no
		// 100 Continue and closes the connection rather than read the rest.
		s.fail(w, r, in, &ipc.BodyError{Err: &http.MaxBytesError{Limit: s.maxBody}})
		return
	}
	ctx := r.Context()
	req := ipc.Request{
		Method:        r.Method,
		URI:           r.RequestURI,
		Proto:         r.Proto,
		Host:          r.Host,
		RemoteAddr:    r.RemoteAddr,
		ContentLength: r.ContentLength,
		RequestID:     in.id,
		EOF:           true,
		Informer:      in,
	}
	req.Header, req.Set = s.forwarding(r, &in.set)
	var body *requestBody
	var bodyReader io.Reader // nil unless body is: no typed nil
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		// A body crossing MaxBody while the worker has it interrupts the
		// exchange at once: RoundTrip or Next returns, and the cause tells
		// why.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		body = newRequestBody(w, r, s.maxBody, func(err error) { cancel(&ipc.BodyError{Err: err}) })
		cont := expectsContinue(r)
		if cont {
			defer body.refuseUnread() // after release: nothing reads any more
		}
		defer body.release()
		if cont {
			// The client waits for 100 Continue, which net/http sends at
			// the first read of the body: nothing is read until the
			// worker's handler asks for it (ipc.FeatureContinue), and a
			// handler that answers without it gets no body sent.
			req.EOF, req.Continue = false, true
		} else {
			bp := chunkPool.Get().(*[]byte)
			defer chunkPool.Put(bp)
			n, eof, err := body.first(*bp, r.ContentLength)
			if err != nil {
				s.fail(w, r, in, &ipc.BodyError{Err: err})
				return
			}
			req.Body = (*bp)[:n]
			// Trailers travel in the end frame: a body with trailers
			// (declared or received) is streamed even when it fits in the
			// first chunk.
			req.EOF = eof && len(body.trailer) == 0 && len(r.Trailer) == 0
		}
		if !req.EOF {
			req.Trailer = body.trailer
			bodyReader = body
			// The worker may answer while it still reads the body (an
			// echo, a transform): without this, net/http's HTTP/1 server
			// discards up to 256 KiB of unread body once the response
			// head is out. (HTTP/2 is always full duplex.)
			_ = http.NewResponseController(w).EnableFullDuplex()
		}
	}
	resp, err := s.inv.RoundTrip(ctx, &req, bodyReader)
	if err != nil {
		var be *ipc.BodyError
		switch {
		case errors.As(context.Cause(ctx), &be):
			err = be // interrupted because the body crossed MaxBody
		case r.Context().Err() != nil && !errors.Is(err, context.Canceled):
			// Interrupted because the client went away, whatever the
			// interruption looked like.
			err = fmt.Errorf("%w: %w", context.Canceled, err)
		}
		var xe *workers.ExitError
		if errors.As(err, &xe) {
			in.pid = xe.PID
		}
		var te *workers.TimeoutError
		if errors.As(err, &te) {
			in.pid = te.PID
		}
		s.fail(w, r, in, err)
		return
	}
	defer resp.Close()
	in.pid = resp.PID
	if body != nil {
		if err := body.overLimit(); err != nil {
			s.fail(w, r, in, &ipc.BodyError{Err: err})
			return
		}
	}
	if err := s.checkHead(resp); err != nil {
		s.fail(w, r, in, err)
		return
	}
	if err := copyResponseHeader(w.Header(), resp.Header); err != nil {
		s.fail(w, r, in, &BadResponseError{PID: resp.PID, Err: err})
		return
	}
	in.status = resp.Status
	if body != nil && !body.eof.Load() {
		// The worker answers before the client's body was read to its
		// end: the rest would have to be discarded after the handler,
		// which net/http does unreliably in full-duplex mode (it can
		// desynchronise the connection or collide with its next read).
		// This connection ends with this response.
		w.Header().Set("Connection", "close")
	}
	w.WriteHeader(resp.Status)
	var flusher http.Flusher
	if resp.Streaming {
		flusher, _ = w.(http.Flusher)
		if flusher != nil {
			flusher.Flush()
		}
	}
	for {
		b, err := resp.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			// An interrupted exchange may fail in several ways (a read
			// deadline that struck inside a frame looks like a timeout):
			// what interrupted it is the cause.
			var be *ipc.BodyError
			if errors.As(context.Cause(ctx), &be) {
				err = be
			} else if r.Context().Err() != nil {
				err = context.Canceled
			}
			s.cut(in, err)
		}
		if s.maxResponse > 0 && in.bytes+int64(len(b)) > s.maxResponse {
			s.cut(in, &ResponseTooLargeError{PID: resp.PID, Limit: s.maxResponse, Size: in.bytes + int64(len(b))})
		}
		n, werr := w.Write(b)
		in.bytes += int64(n)
		if errors.Is(werr, http.ErrContentLength) {
			s.cut(in, &BadResponseError{PID: resp.PID, Err: werr})
		}
		if werr != nil {
			s.log.WithError(werr).WithField("req_id", in.id).Debug("client went away during the response")
			return // deferred Close cancels the handler
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
	if body != nil {
		if err := body.overLimit(); err != nil {
			// The handler ended its response normally after its body
			// failed: the client must not take it for a whole answer.
			s.cut(in, &ipc.BodyError{Err: err})
		}
	}
	tr := resp.Trailer()
	if err := validHeader("trailer", tr); err != nil {
		s.cut(in, &BadResponseError{PID: resp.PID, Err: err})
	}
	for k, vs := range tr {
		w.Header()[http.TrailerPrefix+k] = vs
	}
}

// checkHead refuses a response head that cannot be relayed as is: status
// 101 (a worker cannot take over the connection) or a Content-Length over
// MaxResponse.
func (s *Server) checkHead(resp *workers.Response) error {
	if resp.Status == http.StatusSwitchingProtocols {
		return &BadResponseError{PID: resp.PID, Err: errors.New("status 101 Switching Protocols: workers cannot upgrade the connection")}
	}
	if s.maxResponse > 0 {
		if vs := resp.Header["Content-Length"]; len(vs) == 1 {
			if n, err := strconv.ParseInt(vs[0], 10, 64); err == nil && n > s.maxResponse {
				return &ResponseTooLargeError{PID: resp.PID, Limit: s.maxResponse, Size: n}
			}
		}
	}
	return nil
}

// cut ends a response whose head is already out: it logs why, once, and
// aborts the handler so that net/http closes the client's connection (or
// resets the HTTP/2 stream): the client cannot take a truncated body for a
// whole one. The deferred Response.Close tells the worker to stop.
func (s *Server) cut(in *info, err error) {
	e := s.log.WithError(err).WithFields(logrus.Fields{"req_id": in.id, "pid": in.pid})
	var be *ipc.BodyError
	var tooLarge *ResponseTooLargeError
	switch {
	case errors.As(err, &be):
		e.Info("request body refused after the response started; connection cut")
	case errors.Is(err, context.Canceled):
		e.Debug("client went away during the response")
	case errors.As(err, &tooLarge):
		e.WithField("limit", tooLarge.Limit).Error("response larger than the limit; connection cut")
	default:
		e.Error("response failed after its head was sent; connection cut")
	}
	panic(http.ErrAbortHandler)
}

// requestID returns the incoming X-Request-Id if acceptable, else a new ID.
func (s *Server) requestID(r *http.Request) string {
	if vs := r.Header[HeaderRequestID]; len(vs) == 1 && validRequestID(vs[0]) {
		return vs[0]
	}
	return s.idPrefix + strconv.FormatUint(s.idSeq.Add(1), 36)
}

func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] >= 0x7f {
			return false
		}
	}
	return true
}

// expectsContinue reports whether the client sent "Expect: 100-continue"
// and waits for the 100 before it sends its body.
func expectsContinue(r *http.Request) bool {
	for _, v := range r.Header["Expect"] {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "100-continue") {
				return true
			}
		}
	}
	return false
}
