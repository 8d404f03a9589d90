package dispatcher

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// errBodyReleased is what a read of a request body returns once ServeHTTP
// has returned. Only a body pump still running on a failure path sees it.
var errBodyReleased = errors.New("dispatcher: request body read after the handler returned")

// requestBody is what the body pump of an exchange reads: the client's
// request body, bounded by Config.MaxBody, with the trailers captured at its
// end. Nothing reads the client's body once ServeHTTP has returned (net/http
// forbids it; the pump may outlive ServeHTTP when an exchange fails): release
// interrupts a read in flight and waits for it. The ipc pump does not wait
// for a read in flight when the exchange ends (a client that stopped
// sending), so reads are plain blocking reads.
type requestBody struct {
	src     io.Reader
	max     int64 // 0: no limit
	read    int64 // bytes read from src; owned by whoever reads src
	w       http.ResponseWriter
	r       *http.Request
	trailer http.Header // sent by the pump in the end frame; filled at EOF
	onLimit func(error) // called once, when the body crosses the limit
	eof     atomic.Bool // the client's body was read to its end

	mu       sync.Mutex
	started  bool          // a read of src began: a client waiting for 100 Continue got it
	reading  bool          // a read of src is in flight
	released chan struct{} // closed by the read in flight once release waits for it
	closed   bool          // ServeHTTP is returning: no more reads of src
	limit    error         // the *http.MaxBytesError, once crossed
}

// newRequestBody wraps r.Body. If max is positive, reading past max bytes
// fails with *http.MaxBytesError and onLimit is called with it at once. (Not
// http.MaxBytesReader: it edits the response's header, and the pump reads
// in another goroutine than the handler's.)
func newRequestBody(w http.ResponseWriter, r *http.Request, max int64, onLimit func(error)) *requestBody {
	return &requestBody{src: r.Body, max: max, w: w, r: r, trailer: make(http.Header), onLimit: onLimit}
}

// readSrc reads the client's body and notes its end (trailers) and a limit
// crossing. One goroutine at a time calls it.
func (b *requestBody) readSrc(p []byte) (int, error) {
	if b.max > 0 {
		if b.read > b.max {
			return 0, &http.MaxBytesError{Limit: b.max}
		}
		// One byte more than the limit allows tells a body that ends
		// exactly there from one that goes on.
		if left := b.max - b.read + 1; int64(len(p)) > left {
			p = p[:left]
		}
	}
	n, err := b.src.Read(p)
	b.read += int64(n)
	if err == io.EOF {
		b.eof.Store(true)
		// net/http has read the trailers by now; the pump sends b.trailer
		// once it sees io.EOF.
		for k, vs := range b.r.Trailer {
			b.trailer[k] = vs
		}
	}
	if b.max > 0 && b.read > b.max {
		n -= int(b.read - b.max)
		err = &http.MaxBytesError{Limit: b.max}
		b.mu.Lock()
		first := b.limit == nil
		b.limit = err
		b.mu.Unlock()
		if first && b.onLimit != nil {
			b.onLimit(err)
		}
	}
	return n, err
}

// first reads the start of the body into buf, in the handler's goroutine
// before the exchange starts: as much as fits when the length is known,
// what the first read returns otherwise (a chunked body may be an
// interactive stream whose next bytes wait for the response). eof reports
// that buf holds the whole body.
func (b *requestBody) first(buf []byte, contentLength int64) (n int, eof bool, err error) {
	read := readerFunc(b.readSrc)
	if contentLength >= 0 {
		n, err = io.ReadFull(read, buf)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, true, nil
		}
		return n, false, err
	}
	for n == 0 && err == nil {
		n, err = read.Read(buf)
	}
	if err == io.EOF {
		return n, true, nil
	}
	return n, false, err
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// Read is the pump's read: a read of the client's body, refused once
// release was called.
func (b *requestBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, errBodyReleased
	}
	b.reading, b.started = true, true
	b.mu.Unlock()
	n, err := b.readSrc(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reading = false
	if b.closed {
		if b.released != nil {
			close(b.released)
		}
		return 0, errBodyReleased
	}
	return n, err
}

// overLimit returns the *http.MaxBytesError if the body crossed the limit.
func (b *requestBody) overLimit() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit
}

// release ends all reading of the client's body; ServeHTTP calls it before
// it returns. A read in flight (a client that stopped sending, after the
// exchange ended or failed) is interrupted with a read deadline in the past,
// which also makes net/http close the connection after the response rather
// than read on, and waited for.
func (b *requestBody) release() {
	b.mu.Lock()
	b.closed = true
	if !b.reading {
		b.mu.Unlock()
		return
	}
	done := make(chan struct{})
	b.released = done
	b.mu.Unlock()
	// If the deadline cannot be set, the read ends when the client sends
	// more or goes away.
	rc := http.NewResponseController(b.w)
	_ = rc.SetReadDeadline(time.Unix(1, 0))
	<-done
	// net/http reads on after the handler: it discards what is left of an
	// unread body (up to 256 KiB) and, if it could, keeps the connection
	// for the next request. A deadline left in the past would cut that
	// read at an arbitrary byte and the rest of the body would be parsed as
	// the next request. Give the discard a short, bounded time instead; the
	// next request on the connection gets the server's own deadlines.
	_ = rc.SetReadDeadline(time.Now().Add(discardTime))
	if b.r.ProtoMajor == 1 && !b.eof.Load() {
		// The interrupted read may have broken the body's framing (a
		// chunked body's reader keeps its error), and then net/http closes
		// at once, with unread data: the client, still sending, would get
		// a reset instead of the response.
		lingerClose(b.w)
	}
}

// refuseUnread ends the exchange of a client that asked for 100 Continue
// and was answered without its body being read: it got no 100 and must not
// send the body, which nothing would read. Without this, net/http would
// wait for it (up to 256 KiB) before closing the connection, and the
// client waits for the close. Called after release.
func (b *requestBody) refuseUnread() {
	b.mu.Lock()
	started := b.started
	b.mu.Unlock()
	if !started {
		readNoMore(b.w, b.r) // a client that sends anyway gets the answer, not a reset
	}
}

// discardTime bounds net/http's discarding of the unread rest of a body
// after an interrupted read: a client that keeps sending is read to the end
// of its body; one that stalls loses its connection.
const discardTime = time.Second
