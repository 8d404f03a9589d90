package sdk

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/sirupsen/logrus"
)

// responseWriter implements http.ResponseWriter and http.Flusher over a slot,
// and what http.ResponseController looks for: FlushError, SetReadDeadline,
// SetWriteDeadline and EnableFullDuplex. Small responses go out in a single
// frame when the handler returns; larger ones, or flushed ones, as a head
// with up to ipc.ChunkSize bytes of body, followed by body frames of up to
// the worker's chunk size (ipc.WideChunkSize if the dispatcher accepts it):
// the first bytes go out early, the bulk in few frames.
type responseWriter struct {
	s      *slot
	ex     *exchange
	req    *http.Request
	header http.Header // what the handler sees and edits

	sent        http.Header // snapshot taken at WriteHeader
	status      int
	wroteHeader bool
	headSent    bool
	failed      bool // a write to the dispatcher failed: drop the rest
	timedOut    bool // a flush came after the write deadline: abort the response
	buf         []byte
	written     int64

	writeDeadline time.Time
}

var (
	_ http.ResponseWriter = (*responseWriter)(nil)
	_ http.Flusher        = (*responseWriter)(nil)
)

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if w.wroteHeader {
		w.log().Warnf("superfluous WriteHeader(%d) call; the status stays %d", code, w.status)
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// An informational response (103 Early Hints) goes out at once,
		// with the header as it is now, if the dispatcher relays them;
		// the final status follows.
		if w.s.w.informational && !w.failed {
			if err := w.s.sc.WriteInformational(w.ex.id, code, w.header); err != nil {
				w.failed = true
			}
		}
		return
	}
	w.wroteHeader = true
	w.status = code
	if len(w.header) > 0 {
		w.sent = w.header.Clone()
	}
}

func (w *responseWriter) bodyAllowed() bool {
	return !(w.status == http.StatusNoContent || w.status == http.StatusNotModified ||
		(w.status >= 100 && w.status < 200))
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	if w.failed {
		return 0, http.ErrHandlerTimeout
	}
	w.written += int64(len(p))
	if w.req != nil && w.req.Method == http.MethodHead {
		return len(p), nil
	}
	n := len(p)
	limit := ipc.ChunkSize
	if w.headSent {
		limit = w.s.w.chunk()
	}
	for len(p) > 0 {
		room := limit - len(w.buf)
		if room == 0 {
			if err := w.flushChunk(); err != nil {
				return n - len(p), err
			}
			limit = w.s.w.chunk()
			continue
		}
		take := min(room, len(p))
		if w.buf == nil {
			w.buf = make([]byte, 0, min(ipc.ChunkSize, max(len(p), 512)))
		}
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
	}
	return n, nil
}

// Flush sends the head and whatever body is buffered.
func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError is Flush that reports a failure: the dispatcher is gone or the
// write deadline passed. http.ResponseController.Flush calls it.
func (w *responseWriter) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.flushChunk()
}

// SetReadDeadline bounds reads of the request body: a read blocked past the
// deadline, or started after it, fails with os.ErrDeadlineExceeded. A body
// that arrived whole with the request never blocks and is not affected.
// The zero time means no deadline.
func (w *responseWriter) SetReadDeadline(t time.Time) error {
	if w.ex.body != nil {
		w.ex.body.setDeadline(t)
	}
	return nil
}

// SetWriteDeadline sets the deadline for writing the response: once it has
// passed, Write still buffers but sending (a flush, or a full chunk) fails
// with os.ErrDeadlineExceeded and the response is aborted (the client's
// connection is cut, or it gets 502 if nothing was sent). A send already
// blocked because the client reads slowly is not interrupted. The zero time
// means no deadline.
func (w *responseWriter) SetWriteDeadline(t time.Time) error {
	w.writeDeadline = t
	return nil
}

// EnableFullDuplex reports success: a handler may always read the request
// body while it writes the response.
func (w *responseWriter) EnableFullDuplex() error { return nil }

// flushChunk sends the buffered bytes: with the head if it is not sent yet.
func (w *responseWriter) flushChunk() error {
	if w.failed {
		return http.ErrHandlerTimeout
	}
	if w.timedOut || (!w.writeDeadline.IsZero() && !time.Now().Before(w.writeDeadline)) {
		w.timedOut = true
		return os.ErrDeadlineExceeded
	}
	var err error
	if !w.headSent {
		w.headSent = true
		w.ex.headOut.Store(true)
		err = w.s.sc.WriteResponse(&ipc.Response{ID: w.ex.id, Status: w.status, Header: w.sent, Body: w.buf})
	} else if len(w.buf) > 0 {
		err = w.s.sc.WriteBody(w.ex.id, w.buf)
	}
	w.buf = w.buf[:0]
	if err != nil {
		w.failed = true
	}
	return err
}

// finish completes the response after the handler returned.
func (w *responseWriter) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	trailer := w.trailers()
	w.s.finishing(w.ex)
	if w.failed {
		return
	}
	if !w.writeDeadline.IsZero() && !time.Now().Before(w.writeDeadline) {
		w.timedOut = true // what is still buffered cannot be sent in time
	}
	if w.timedOut {
		_ = w.s.sc.WriteAbort(w.ex.id, "write deadline exceeded")
		return
	}
	if !w.headSent {
		if w.req != nil && w.req.Method == http.MethodHead && w.written > 0 && w.sent.Get("Content-Length") == "" {
			if w.sent == nil {
				w.sent = make(http.Header)
			}
			w.sent.Set("Content-Length", strconv.FormatInt(w.written, 10))
		}
		_ = w.s.sc.WriteResponse(&ipc.Response{ID: w.ex.id, Status: w.status, Header: w.sent, Body: w.buf, EOF: true, Trailer: trailer})
		return
	}
	if len(w.buf) > 0 {
		if err := w.s.sc.WriteBody(w.ex.id, w.buf); err != nil {
			return
		}
	}
	_ = w.s.sc.WriteEnd(w.ex.id, trailer)
}

// trailers collects the values of declared trailers and of keys carrying
// http.TrailerPrefix, as net/http does.
func (w *responseWriter) trailers() http.Header {
	var t http.Header
	for _, decl := range w.header["Trailer"] {
		for _, k := range strings.Split(decl, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if vs, ok := w.header[k]; ok && k != "" {
				if t == nil {
					t = make(http.Header)
				}
				t[k] = vs
			}
		}
	}
	for k, vs := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if t == nil {
				t = make(http.Header)
			}
			t[http.CanonicalHeaderKey(strings.TrimPrefix(k, http.TrailerPrefix))] = vs
		}
	}
	if w.sent != nil {
		for k := range w.sent {
			if strings.HasPrefix(k, http.TrailerPrefix) {
				delete(w.sent, k)
			}
		}
	}
	return t
}

// panicked answers for a handler that panicked: a 500 if nothing was sent
// yet, otherwise an abort that cuts the client's connection.
func (w *responseWriter) panicked(v any, stack []byte) {
	if v != http.ErrAbortHandler {
		w.log().WithField("stack", string(stack)).Errorf("handler panic: %v", v)
	}
	w.s.finishing(w.ex)
	if w.failed {
		return
	}
	if w.headSent || w.timedOut {
		_ = w.s.sc.WriteAbort(w.ex.id, fmt.Sprintf("handler panic: %v", v))
		return
	}
	h := http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Content-Type-Options": {"nosniff"}}
	_ = w.s.sc.WriteResponse(&ipc.Response{ID: w.ex.id, Status: http.StatusInternalServerError, Header: h,
		Body: []byte("Internal Server Error\n"), EOF: true})
}

func (w *responseWriter) log() *logrus.Entry {
	e := logrus.NewEntry(logger)
	if w.ex.requestID != "" {
		e = e.WithField("request_id", w.ex.requestID)
	}
	return e
}
