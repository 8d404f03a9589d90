package ipc

import (
	"errors"
	"io"
	"sync"
)

var (
	errReplayClosed  = errors.New("ipc: request body read after its replay was closed")
	errReplayRewound = errors.New("ipc: request body read by an abandoned exchange")
)

// maxReplay bounds the copy a Replay keeps. Flow control bounds it already:
// a worker grants credit only in window frames, and the first one stops the
// copy, so the body pump reads at most Window bytes (first chunk included)
// before the copy stops.
const maxReplay = Window

// replayPool recycles the chunks of Replay copies.
var replayPool = sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}

// Replay is a streamed request body that can be sent again from its start
// to another worker when the first one died without reading the request.
// Pass it as the body to Conn.Send: until the worker acknowledges the
// request head (FeatureHeadAck), Replay keeps a copy of what the body pump
// read from src; after an error wrapping ErrNotDelivered, Rewind makes the
// next exchange read that copy again, then the rest of src. The copy is in
// pooled chunks and holds at most Window bytes (the worker grants no credit
// before its acknowledgement). It is dropped when the acknowledgement (or
// any other frame of the exchange) arrives, and at once when the worker
// does not announce FeatureHeadAck: such a worker may have read the body,
// which is then never sent again.
//
// Reads of src are serialised: a read that a failed exchange left in flight
// (a client that sends slowly) completes before the next exchange reads,
// and its bytes go to that exchange.
type Replay struct {
	src io.Reader
	rmu sync.Mutex // held across each read of src

	mu sync.Mutex
	// bufs holds the copy: while recording, the body's bytes [0, n); after
	// the copy stopped, the bytes up to n still to be read again.
	bufs      []*[]byte
	n         int    // bytes in bufs
	off       int    // the reader's position in bufs
	gen       uint64 // counts Rewinds: a read of src begun before one belongs to an abandoned exchange
	recording bool
	err       error // src's error, returned once bufs is read
	closed    bool
}

// NewReplay wraps src, the rest of a request body after its first chunk
// (which the request frame carries, and the caller keeps).
func NewReplay(src io.Reader) *Replay { return &Replay{src: src, recording: true} }

// Read reads what is left of the copy to read again, then src.
func (r *Replay) Read(p []byte) (int, error) {
	r.mu.Lock()
	gen := r.gen
	r.mu.Unlock()
	return r.read(p, gen)
}

// view returns the reader of one exchange: it reads as Read does until the
// next Rewind, and then fails, leaving what is left to the next exchange.
// (A pump its exchange abandoned may still be reading.)
func (r *Replay) view() io.Reader {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &replayView{r: r, gen: r.gen}
}

type replayView struct {
	r   *Replay
	gen uint64
}

func (v *replayView) Read(p []byte) (int, error) { return v.r.read(p, v.gen) }

// read is a read by the exchange of generation gen.
func (r *Replay) read(p []byte, gen uint64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return 0, errReplayClosed
	case gen != r.gen:
		// An abandoned exchange's pump: the copy is the next one's.
		r.mu.Unlock()
		return 0, errReplayRewound
	case r.off < r.n:
		k := r.copyOut(p)
		if !r.recording && r.off == r.n {
			r.release()
		}
		r.mu.Unlock()
		return k, nil
	case r.err != nil:
		err := r.err
		r.mu.Unlock()
		return 0, err
	}
	r.mu.Unlock()

	k, err := r.src.Read(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.err = err
	}
	switch {
	case r.closed:
		return 0, errReplayClosed
	case gen != r.gen:
		// Rewound while src was read: the reader is an abandoned exchange's
		// pump, and these are the next bytes for the one after it.
		r.append(p[:k])
		return 0, errReplayRewound
	case r.recording && r.n+k > maxReplay:
		// More than flow control lets through before an acknowledgement:
		// the peer broke it. The body cannot be sent again.
		r.recording = false
		r.release()
	case r.recording:
		r.append(p[:k])
		r.off = r.n
	}
	return k, err
}

// copyOut reads from the copy at off. Called with mu held and off < n.
func (r *Replay) copyOut(p []byte) int {
	i := r.off / ChunkSize
	end := min(ChunkSize, r.n-i*ChunkSize)
	k := copy(p, (*r.bufs[i])[r.off%ChunkSize:end])
	r.off += k
	return k
}

// append adds b to the copy. Called with mu held.
func (r *Replay) append(b []byte) {
	for len(b) > 0 {
		i := r.n / ChunkSize
		if i == len(r.bufs) {
			r.bufs = append(r.bufs, replayPool.Get().(*[]byte))
		}
		k := copy((*r.bufs[i])[r.n%ChunkSize:], b)
		r.n += k
		b = b[k:]
	}
}

// release returns the copy's chunks to their pool. Called with mu held.
func (r *Replay) release() {
	for i, b := range r.bufs {
		replayPool.Put(b)
		r.bufs[i] = nil
	}
	r.bufs = r.bufs[:0]
	r.n, r.off = 0, 0
}

// Rewind makes the next Read start again from the beginning of the body,
// for another exchange after one failed with an error wrapping
// ErrNotDelivered. It reports false if the body cannot be sent again: a
// worker acknowledged it, or may have read it.
func (r *Replay) Rewind() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || !r.recording {
		return false
	}
	r.gen++
	r.off = 0
	return true
}

// replayable reports whether Rewind would succeed.
func (r *Replay) replayable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.closed && r.recording
}

// acked stops the copy: a worker has the request, and its body is never
// sent again. What was copied and not yet read again is still read first.
func (r *Replay) acked() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recording = false
	if r.off == r.n {
		r.release()
	}
}

// Close drops the copy, returning its chunks to their pool. Reads fail
// afterwards. A nil *Replay may be closed.
func (r *Replay) Close() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.recording = false
	r.release()
	return nil
}
