// Package dispatcher is the HTTP front: it turns each incoming request into
// an ipc.Request, hands it to an Invoker (a *workers.Pool), relays the
// worker's response, maps failures to status codes, and writes the access
// log. It owns HTTP semantics (hop-by-hop headers, request IDs, response
// validation); it does not own processes.
package dispatcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strconv"
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
	AccessLog bool
	// ErrorHandler answers a request that failed before the worker's
	// response head was relayed. If nil, the default writes the status
	// statusFor gives, a short plain-text body and the X-Dispatcher-Error
	// header, and logs the failure once.
	ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)
}

// Server is the HTTP front. It is an http.Handler.
type Server struct {
	inv       Invoker
	log       *logrus.Entry
	accessLog bool
	onError   func(http.ResponseWriter, *http.Request, error)
	idPrefix  string
	idSeq     atomic.Uint64
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
		inv:       cfg.Invoker,
		log:       cfg.Logger,
		accessLog: cfg.AccessLog,
		onError:   cfg.ErrorHandler,
		idPrefix:  hex.EncodeToString(b[:]) + "-",
	}
	if s.onError == nil {
		s.onError = s.defaultErrorHandler
	}
	return s, nil
}

// HeaderRequestID carries the request ID to the worker and back to the
// client. An incoming value is kept if it is 1-128 visible ASCII characters.
const HeaderRequestID = "X-Request-Id"

// HeaderError marks responses the dispatcher generated itself, so clients
// can tell them from a handler's.
const HeaderError = "X-Dispatcher-Error"

var chunkPool = sync.Pool{New: func() any { b := make([]byte, ipc.ChunkSize); return &b }}

type ctxKey struct{}

// info is what the access log and error handler need to know of a request.
type info struct {
	id     string
	pid    int
	status int
	bytes  int64
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	in := &info{id: s.requestID(r)}
	w.Header()[HeaderRequestID] = []string{in.id}
	s.serve(w, r, in)
	if s.accessLog {
		s.log.WithFields(logrus.Fields{
			"method":      r.Method,
			"path":        r.URL.Path,
			"status":      in.status,
			"bytes":       in.bytes,
			"duration_ms": float64(time.Since(start).Microseconds()) / 1000,
			"pid":         in.pid,
			"req_id":      in.id,
		}).Info("request")
	}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, in *info) {
	req := ipc.Request{
		Method:        r.Method,
		URI:           r.RequestURI,
		Proto:         r.Proto,
		Header:        forwardHeader(r.Header),
		Host:          r.Host,
		RemoteAddr:    r.RemoteAddr,
		ContentLength: r.ContentLength,
		RequestID:     in.id,
		EOF:           true,
		Trailer:       r.Trailer,
	}
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		bp := chunkPool.Get().(*[]byte)
		defer chunkPool.Put(bp)
		n, err := io.ReadFull(r.Body, *bp)
		switch {
		case err == nil:
			req.EOF = false
		case err == io.EOF || err == io.ErrUnexpectedEOF:
		default:
			s.fail(w, r, in, &ipc.BodyError{Err: err})
			return
		}
		req.Body = (*bp)[:n]
		if !req.EOF {
			// The worker may answer while it still reads the body (an
			// echo, a transform): without this, net/http's HTTP/1 server
			// discards up to 256 KiB of unread body once the response
			// head is out.
			_ = http.NewResponseController(w).EnableFullDuplex()
		}
	}
	ctx := context.WithValue(r.Context(), ctxKey{}, in)
	resp, err := s.inv.RoundTrip(ctx, &req, r.Body)
	if err != nil {
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
	if err := copyResponseHeader(w.Header(), resp.Header); err != nil {
		s.fail(w, r, in, &BadResponseError{PID: resp.PID, Err: err})
		return
	}
	in.status = resp.Status
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
			// The head is out: all we can do is cut the connection.
			s.log.WithError(err).WithFields(logrus.Fields{"req_id": in.id, "pid": in.pid}).Error("response failed after its head was sent; connection cut")
			panic(http.ErrAbortHandler)
		}
		n, werr := w.Write(b)
		in.bytes += int64(n)
		if werr != nil {
			s.log.WithError(werr).WithField("req_id", in.id).Debug("client went away during the response")
			return // deferred Close cancels the handler
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
	for k, vs := range resp.Trailer() {
		w.Header()[http.TrailerPrefix+k] = vs
	}
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

// RequestID returns the request ID the Server gave the request whose context
// ctx is (as seen by an Invoker), or "".
func RequestID(ctx context.Context) string {
	if in, ok := ctx.Value(ctxKey{}).(*info); ok {
		return in.id
	}
	return ""
}
