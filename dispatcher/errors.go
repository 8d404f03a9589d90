package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
)

// StatusClientClosed is the status logged (never sent) for a request whose
// client went away before the answer, after nginx's convention.
const StatusClientClosed = 499

// statusFor maps a request failure to the status the client gets.
func statusFor(err error) int {
	var (
		maxBytes *http.MaxBytesError
		bodyErr  *ipc.BodyError
		exitErr  *workers.ExitError
		startErr *launch.StartError
		protoErr *ipc.ProtocolError
		abortErr *ipc.AbortError
		badResp  *BadResponseError
		tooLarge *ResponseTooLargeError
		headers  *HeaderLimitError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return StatusClientClosed
	case errors.As(err, &maxBytes):
		return http.StatusRequestEntityTooLarge
	case errors.As(err, &headers):
		return http.StatusRequestHeaderFieldsTooLarge
	case errors.As(err, &bodyErr):
		return http.StatusBadRequest
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.Is(err, workers.ErrClosed), errors.Is(err, workers.ErrOverloaded):
		return http.StatusServiceUnavailable
	case errors.As(err, &exitErr), errors.As(err, &startErr), errors.As(err, &protoErr),
		errors.As(err, &abortErr), errors.As(err, &badResp), errors.As(err, &tooLarge),
		errors.Is(err, workers.ErrNoWorker):
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// fail answers a request that failed before a response head was relayed.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, in *info, err error) {
	in.status = statusFor(err)
	if in.status == http.StatusRequestEntityTooLarge {
		// Read no more of a refused body. (An HTTP/2 stream is reset;
		// the connection lives on.)
		readNoMore(w, r)
		if r.ProtoMajor == 1 {
			w = &closingWriter{ResponseWriter: w}
		}
	}
	s.onError(w, r, err)
}

// readNoMore ends all reading of r's body: without a read deadline in the
// past, net/http reads up to 256 KiB more of it after the handler, waiting
// on a client that may have stopped. What is left of it on an HTTP/1
// connection makes the connection unusable: it is closed after the
// answer, lingering for a client that still sends.
func readNoMore(w http.ResponseWriter, r *http.Request) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Unix(1, 0))
	if r.ProtoMajor == 1 {
		lingerClose(w)
	}
}

// lingerClose has net/http close an HTTP/1 connection after the response
// the way it does when its own MaxBytesReader trips: it sends the response,
// half-closes the connection, waits half a second, then closes it. A client
// still sending a body it was not read to the end then gets the response,
// not a connection reset (closing a socket with unread data resets it).
// net/http offers this only through MaxBytesReader, which calls the
// unexported requestTooLarge of its ResponseWriter: a zero limit and one
// byte reach it. It does nothing to a ResponseWriter that does not unwrap
// to net/http's HTTP/1 one.
func lingerClose(w http.ResponseWriter) {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	var b [1]byte
	_, _ = http.MaxBytesReader(w, io.NopCloser(strings.NewReader("x")), 0).Read(b[:])
}

// closingWriter adds Connection: close to the response head, whatever the
// error handler does with the header before it writes.
type closingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *closingWriter) WriteHeader(code int) {
	if !w.wrote && code >= 200 {
		w.wrote = true
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *closingWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Flush writes the head, if not yet written, as the server's Flush would.
func (w *closingWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *closingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// defaultErrorHandler logs the failure once and writes a short plain-text
// answer marked with HeaderError.
func (s *Server) defaultErrorHandler(w http.ResponseWriter, r *http.Request, err error) {
	status := statusFor(err)
	e := s.log.WithError(err).WithField("req_id", w.Header().Get(HeaderRequestID))
	var msg string
	var exitErr *workers.ExitError
	var te *workers.TimeoutError
	var overload *workers.OverloadError
	var tooLarge *ResponseTooLargeError
	switch {
	case status == StatusClientClosed:
		e.Debug("client went away before the response")
		return
	case status == http.StatusRequestHeaderFieldsTooLarge:
		e.Info("request refused: too many header fields")
		msg = "too many request header fields"
	case errors.As(err, &tooLarge):
		e.WithField("pid", tooLarge.PID).Error("worker response refused: over the size limit")
		msg = "the worker's response is too large"
	case errors.As(err, &exitErr):
		f := logrus.Fields{"pid": exitErr.PID, "exit": exitErr.How()}
		if len(exitErr.Stderr) > 0 {
			// What it wrote since the request was sent, as lines.
			f["stderr"] = strings.Join(exitErr.Stderr, "\n") + "\n"
		}
		e.WithFields(f).Error("worker failed during the request")
		msg = "the worker handling this request failed"
	case errors.As(err, &te):
		e.WithFields(logrus.Fields{"pid": te.PID, "timeout": te.Timeout.String()}).Error("request timed out; worker killed")
		msg = fmt.Sprintf("the worker did not answer within %s", te.Timeout)
	case status == http.StatusRequestEntityTooLarge:
		e.Info("request body refused: over the limit")
		msg = "the request body is too large"
	case status == http.StatusBadRequest:
		e.Info("request body could not be read")
		msg = "the request body could not be read"
	case errors.As(err, &overload):
		// The pool logs refusals, at most once a second.
		e.Debug("request refused: overloaded")
		msg = overload.Reason
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((overload.RetryAfter+time.Second-1)/time.Second))))
	case status == http.StatusServiceUnavailable:
		e.Warn("no worker available")
		msg = "no worker is available"
		w.Header().Set("Retry-After", "1")
	case status == http.StatusBadGateway:
		e.Error("worker failed")
		msg = "the worker failed to answer"
	default:
		e.Error("request failed")
		msg = "internal error"
	}
	h := w.Header()
	for k := range h {
		if k != HeaderRequestID && k != "Retry-After" {
			delete(h, k)
		}
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(HeaderError, "true")
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %s: %s\n", status, http.StatusText(status), msg)
}

// HeaderLimitError reports a request with more header fields than
// Config.MaxHeaders allows. The client gets 431.
type HeaderLimitError struct {
	Count, Limit int
}

func (e *HeaderLimitError) Error() string {
	return fmt.Sprintf("dispatcher: %d request header fields, more than the limit of %d", e.Count, e.Limit)
}

// ResponseTooLargeError reports a worker's response body larger than
// Config.MaxResponse. Found from its Content-Length, the client gets 502;
// found while relaying, the client's connection is cut.
type ResponseTooLargeError struct {
	PID   int
	Limit int64
	Size  int64 // the declared Content-Length, or the bytes relayed so far and the chunk that crossed the limit
}

func (e *ResponseTooLargeError) Error() string {
	return fmt.Sprintf("worker pid %d sent a response body of at least %d bytes, more than the limit of %d", e.PID, e.Size, e.Limit)
}
