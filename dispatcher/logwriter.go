package dispatcher

import (
	"bytes"
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// LogWriter is the output of a logrus Logger (its Out) that never makes a
// logging goroutine wait on the destination: lines are appended to a buffer
// in memory, and one goroutine of its own writes them out. Each Write is one
// whole entry, and entries are written whole and in the order they came,
// so lines are never torn or interleaved, whoever logs them.
//
// Access-log lines (from a Server whose Logger writes here) are buffered:
// they go out together at most FlushInterval after the first of them, or
// as soon as FlushSize bytes are waiting. Any other entry is written at
// once, with the access lines before it.
//
// If the destination blocks (a full pipe nobody reads), lines keep
// arriving in the buffer until Limit bytes are waiting; after that they are
// dropped, and counted, rather than stall the requests that log them. Once
// the destination takes lines again, the count is reported through
// Config.Dropped. nginx, by contrast, blocks its worker on a blocked log.
//
// Close writes what is left: call it before the process exits.
type LogWriter struct {
	out       io.Writer
	interval  time.Duration
	flushSize int
	limit     int
	onDrop    func(n int)

	mu      sync.Mutex
	buf     []byte // entries the goroutine has yet to take
	dropped int    // entries dropped since the last report
	closed  bool   // the goroutine has stopped: Write writes directly
	timer   *time.Timer

	wake    chan struct{} // 1-buffered: write what is waiting now
	stop    chan struct{}
	done    chan struct{}
	total   atomic.Uint64
	pending []byte // the goroutine's: the buffer being written
}

// LogWriterConfig configures a LogWriter. Zero fields take the defaults.
type LogWriterConfig struct {
	// FlushInterval is the longest an access-log line waits in memory.
	// If zero, DefaultFlushInterval; if negative, access-log lines are
	// written at once, as other entries are.
	FlushInterval time.Duration
	// FlushSize is the number of waiting bytes that get written without
	// waiting for FlushInterval. If zero, DefaultFlushSize.
	FlushSize int
	// Limit bounds the bytes waiting for a destination that does not take
	// them; an entry that would go past it is dropped. If zero,
	// DefaultLogLimit.
	Limit int
	// Dropped, if set, is called with the number of entries dropped, from
	// the LogWriter's goroutine, after the destination has taken a write
	// again (and at Close). It may log: the entry goes to the LogWriter.
	Dropped func(n int)
}

// Defaults of LogWriterConfig.
const (
	DefaultFlushInterval = 100 * time.Millisecond
	DefaultFlushSize     = 32 << 10
	DefaultLogLimit      = 1 << 20
)

// NewLogWriter returns a LogWriter writing to out, and starts its
// goroutine.
func NewLogWriter(out io.Writer, cfg LogWriterConfig) *LogWriter {
	w := &LogWriter{
		out:       out,
		interval:  cfg.FlushInterval,
		flushSize: cmpOr(cfg.FlushSize, DefaultFlushSize),
		limit:     cmpOr(cfg.Limit, DefaultLogLimit),
		onDrop:    cfg.Dropped,
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	if w.interval == 0 {
		w.interval = DefaultFlushInterval
	}
	w.timer = time.NewTimer(time.Hour)
	w.timer.Stop()
	go w.run()
	return w
}

func cmpOr(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Write takes one whole log entry and has it written at once (by the
// LogWriter's goroutine, with the buffered lines before it). It never
// fails and never waits on the destination.
func (w *LogWriter) Write(p []byte) (int, error) {
	w.add(p, true)
	return len(p), nil
}

// buffered takes one whole access-log line, written within the flush
// interval.
func (w *LogWriter) buffered(p []byte) { w.add(p, w.interval < 0) }

func (w *LogWriter) add(p []byte, now bool) {
	w.mu.Lock()
	if w.closed {
		// After Close: written here, in order, as a plain writer would.
		_, _ = w.out.Write(p)
		w.mu.Unlock()
		return
	}
	if len(w.buf) > 0 && len(w.buf)+len(p) > w.limit {
		w.dropped++
		w.mu.Unlock()
		w.total.Add(1)
		return
	}
	if len(w.buf) == 0 && !now {
		w.timer.Reset(w.interval)
	}
	w.buf = append(w.buf, p...)
	now = now || len(w.buf) >= w.flushSize
	w.mu.Unlock()
	if now {
		select {
		case w.wake <- struct{}{}:
		default: // already woken
		}
	}
}

// Dropped returns the number of entries dropped since the LogWriter was
// made, because the destination did not take them in time.
func (w *LogWriter) Dropped() uint64 { return w.total.Load() }

// Close writes what is waiting and stops the LogWriter's goroutine; later
// entries are written directly, by the goroutine that logs them. If the
// destination does not take what is waiting before ctx is done, Close
// returns ctx's error and the rest is lost.
func (w *LogWriter) Close(ctx context.Context) error {
	w.mu.Lock()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *LogWriter) run() {
	defer close(w.done)
	for {
		select {
		case <-w.wake:
		case <-w.timer.C:
		case <-w.stop:
			for w.flush(true) {
			}
			return
		}
		w.flush(false)
	}
}

// flush writes what is waiting. When last, it marks the writer closed if
// nothing was; it reports whether there was anything.
func (w *LogWriter) flush(last bool) bool {
	w.mu.Lock()
	if len(w.buf) == 0 {
		w.closed = w.closed || last
		w.mu.Unlock()
		return false
	}
	b := w.buf
	w.buf, w.pending = w.pending[:0], nil
	w.timer.Stop()
	w.mu.Unlock()

	_, err := w.out.Write(b)
	w.mu.Lock()
	if err != nil {
		// Lost with the failed write: counted as dropped, reported once
		// a write succeeds.
		n := bytes.Count(b, []byte{'\n'})
		w.dropped += n
		w.total.Add(uint64(n))
	}
	n := w.dropped
	if err == nil {
		w.dropped = 0
	}
	w.mu.Unlock()
	if cap(b) <= w.limit {
		w.pending = b[:0] // reused (not one grown past the limit by one huge entry)
	}
	if err == nil && n > 0 && w.onDrop != nil {
		w.onDrop(n)
	}
	return true
}
