package dispatcher

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// errBodyReleased is what a read of a request body returns once ServeHTTP
// has returned. Only a body pump still running on a failure path sees it.
var errBodyReleased = errors.New("dispatcher: request body read after the handler returned")

// stopCheck bounds how long a read of the request body by the exchange's
// body pump waits for the client before it returns (0, nil). The pump then
// checks whether the exchange is over and reads again if not. Without it, a
// worker that answers before reading the whole body of a client that has
// stopped sending would keep its slot until the client sends or leaves: the
// ipc pump waits for its read in progress when the exchange ends.
const stopCheck = 20 * time.Millisecond

// requestBody is what the body pump of an exchange reads: the client's
// request body, bounded by Config.MaxBody, with the trailers captured at its
// end. Nothing reads the client's body once ServeHTTP has returned (net/http
// forbids it; the pump may outlive ServeHTTP when an exchange fails), and the
// pump is never stuck in a read of a client that stopped sending.
//
// Read runs each read of the client's body in its own goroutine and waits
// for it at most stopCheck; a read that takes longer stays in flight and
// the next Read collects it. At most one read is in flight, into buf.
type requestBody struct {
	src     io.Reader
	max     int64 // 0: no limit
	read    int64 // bytes read from src; owned by whoever reads src
	w       http.ResponseWriter
	r       *http.Request
	trailer http.Header // sent by the pump in the end frame; filled at EOF
	onLimit func(error) // called once, when the body crosses the limit
	buf     []byte      // target of the read in flight
	timer   *time.Timer // used by Read only

	mu      sync.Mutex
	op      *readOp // the read in flight or not yet collected, or nil
	pending []byte  // bytes of a collected read not yet returned
	pendErr error   // the error of that read, returned after pending
	closed  bool    // ServeHTTP is returning: no more reads of src
	limit   error   // the *http.MaxBytesError, once crossed
}

type readOp struct {
	done chan struct{} // closed when n and err are set
	n    int
	err  error
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

// Read is the pump's read. It may return (0, nil) after stopCheck.
func (b *requestBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, errBodyReleased
	}
	if len(b.pending) > 0 || b.pendErr != nil {
		n, err := b.takePending(p)
		b.mu.Unlock()
		return n, err
	}
	op := b.op
	if op == nil {
		if b.buf == nil {
			b.buf = make([]byte, ipc.ChunkSize)
		}
		op = &readOp{done: make(chan struct{})}
		b.op = op
		go func(buf []byte) {
			op.n, op.err = b.readSrc(buf)
			close(op.done)
		}(b.buf[:min(len(p), len(b.buf))])
	}
	b.mu.Unlock()

	select {
	case <-op.done:
	default:
		if b.timer == nil {
			b.timer = time.NewTimer(stopCheck)
		} else {
			b.timer.Reset(stopCheck)
		}
		select {
		case <-op.done:
			b.timer.Stop()
		case <-b.timer.C:
			return 0, nil
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	b.op = nil
	if b.closed {
		return 0, errBodyReleased
	}
	b.pending, b.pendErr = b.buf[:op.n], op.err
	return b.takePending(p)
}

// takePending returns what is left of the last read, with its error once
// all of it is returned. Called with mu held.
func (b *requestBody) takePending(p []byte) (int, error) {
	n := copy(p, b.pending)
	b.pending = b.pending[n:]
	if len(b.pending) > 0 {
		return n, nil
	}
	err := b.pendErr
	b.pending, b.pendErr = nil, nil
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
	op := b.op
	b.mu.Unlock()
	if op == nil {
		return
	}
	select {
	case <-op.done:
		return
	default:
	}
	// If the deadline cannot be set, the read ends when the client sends
	// more or goes away.
	_ = http.NewResponseController(b.w).SetReadDeadline(time.Unix(1, 0))
	<-op.done
}
