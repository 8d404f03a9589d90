package sdk

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// requestBody is a request body streamed in body frames. The slot's reader
// pushes chunks without ever blocking (the dispatcher sends at most window
// unacknowledged bytes); the handler's reads return credit to the
// dispatcher in window frames, a quarter of the window at a time.
type requestBody struct {
	sc     *ipc.ServerConn
	id     uint64
	window int // ipc.Window, or ipc.WideWindow (FeatureWideWindow)
	// grant is credit to give at the first read: the whole window, for a
	// request marked continue (ipc.FeatureContinue), which the dispatcher
	// sends with none.
	grant int

	mu       sync.Mutex
	cond     sync.Cond
	chunks   []chunk
	queued   int // bytes received and not yet read
	consumed int // bytes read and not yet acknowledged
	done     bool
	err      error // io.EOF once finished normally
	closed   bool
	trailer  http.Header
	req      *http.Request
	deadline time.Time   // reads fail once it has passed; zero: none
	timer    *time.Timer // wakes blocked reads at the deadline
}

// chunk is a received piece of the body not yet read. buf, if set, came
// from pool and goes back once the chunk is read.
type chunk struct {
	data []byte
	buf  *[]byte
	pool *sync.Pool
}

// chunkPool recycles the copies of body frames: an upload then costs no
// allocation (and no garbage collection) per chunk.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, ipc.ChunkSize); return &b }}

// wideChunkPool does the same for chunks over ipc.ChunkSize
// (FeatureWideChunk).
var wideChunkPool = sync.Pool{New: func() any { b := make([]byte, ipc.WideChunkSize); return &b }}

func newRequestBody(sc *ipc.ServerConn, id uint64, first []byte, window int, cont bool) *requestBody {
	b := &requestBody{sc: sc, id: id, window: window}
	if cont {
		b.grant = window
	}
	b.cond.L = &b.mu
	if len(first) > 0 {
		b.chunks = append(b.chunks, chunk{data: first})
		b.queued = len(first)
	}
	return b
}

// push queues a chunk; data is copied. It fails if the dispatcher exceeded
// its window.
func (b *requestBody) push(data []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done || b.closed || len(data) == 0 {
		return nil
	}
	if b.queued+len(data) > b.window {
		return fmt.Errorf("dispatcher sent %d body bytes beyond the window", b.queued+len(data)-b.window)
	}
	var c chunk
	switch {
	case len(data) <= ipc.ChunkSize:
		c.buf, c.pool = chunkPool.Get().(*[]byte), &chunkPool
		c.data = (*c.buf)[:copy(*c.buf, data)]
	case len(data) <= ipc.WideChunkSize:
		c.buf, c.pool = wideChunkPool.Get().(*[]byte), &wideChunkPool
		c.data = (*c.buf)[:copy(*c.buf, data)]
	default:
		c.data = append([]byte(nil), data...)
	}
	b.chunks = append(b.chunks, c)
	b.queued += len(data)
	b.cond.Signal()
	return nil
}

// finish ends the body: normally (err nil, with trailers) or with err.
func (b *requestBody) finish(err error, trailer http.Header) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	if err == nil {
		err = io.EOF
		b.trailer = trailer
	}
	b.err = err
	b.cond.Broadcast()
}

// setDeadline makes reads fail with os.ErrDeadlineExceeded from t on,
// including one blocked at that moment. The zero time removes the deadline.
func (b *requestBody) setDeadline(t time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deadline = t
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if t.IsZero() || b.closed {
		return
	}
	if d := time.Until(t); d > 0 {
		b.timer = time.AfterFunc(d, func() {
			b.mu.Lock()
			b.cond.Broadcast()
			b.mu.Unlock()
		})
	}
	b.cond.Broadcast()
}

func (b *requestBody) expired() bool {
	return !b.deadline.IsZero() && !time.Now().Before(b.deadline)
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if grant := b.grant; grant > 0 && !b.closed {
		// The handler wants the body: the dispatcher starts reading it
		// (and its client gets its 100 Continue).
		b.grant = 0
		b.mu.Unlock()
		_ = b.sc.WriteWindow(b.id, grant)
		b.mu.Lock()
	}
	for len(b.chunks) == 0 && !b.done && !b.closed && !b.expired() {
		b.cond.Wait()
	}
	if b.closed {
		b.mu.Unlock()
		return 0, http.ErrBodyReadAfterClose
	}
	if b.expired() {
		b.mu.Unlock()
		return 0, os.ErrDeadlineExceeded
	}
	if len(b.chunks) == 0 {
		err := b.err
		if err == io.EOF && b.trailer != nil && b.req != nil {
			b.req.Trailer = b.trailer
			b.trailer = nil
		}
		b.mu.Unlock()
		return 0, err
	}
	c := &b.chunks[0]
	n := copy(p, c.data)
	if n == len(c.data) {
		if c.buf != nil {
			c.pool.Put(c.buf)
		}
		*c = chunk{}
		b.chunks = b.chunks[1:]
	} else {
		c.data = c.data[n:]
	}
	b.queued -= n
	b.consumed += n
	var credit int
	if b.consumed >= b.window/4 && !b.done {
		credit, b.consumed = b.consumed, 0
	}
	b.mu.Unlock()
	if credit > 0 {
		// A failed write means the dispatcher is gone; the next read of the
		// slot sees it.
		_ = b.sc.WriteWindow(b.id, credit)
	}
	return n, nil
}

func (b *requestBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.chunks = nil
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	b.cond.Broadcast()
	return nil
}
