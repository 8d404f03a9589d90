package launch

import (
	"bytes"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of Config.LogLines and Config.LogBytes: far above what a
// handler logging a few lines per request writes, far below what it costs
// the dispatcher to log a flood.
const (
	DefaultLogLines = 2000
	DefaultLogBytes = 1 << 20
)

const (
	// pumpBuffer is the size of the reads of a worker's output pipes.
	pumpBuffer = 32 << 10
	// dropPause is how long the reading of a worker's output rests after a
	// read whose lines were dropped: the pipe fills meanwhile, so that the
	// next read takes many lines at once, and a worker writing faster than
	// that waits on its own writes, not the dispatcher on them.
	dropPause = 10 * time.Millisecond
)

// outputLimit is the budget of one worker's output lines and bytes per
// second, shared by its stdout and stderr. A line past it is dropped and
// counted; what was dropped is reported once per second, while it lasts.
type outputLimit struct {
	lines, bytes int                    // per second; 0: unlimited
	report       func(lines, bytes int) // called from a timer's goroutine

	mu                   sync.Mutex
	end                  time.Time // of the current one-second window
	usedLines, usedBytes int
	dropLines, dropBytes int  // not yet reported
	pending              bool // a report is scheduled
}

// admit decides whether a line starting now is logged. exempt lines (a
// stack trace being gathered) do not count against the line budget; their
// bytes do.
func (l *outputLimit) admit(now time.Time, exempt bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !now.Before(l.end) {
		l.end = now.Add(time.Second)
		l.usedLines, l.usedBytes = 0, 0
	}
	if l.lines > 0 && !exempt && l.usedLines >= l.lines || l.bytes > 0 && l.usedBytes >= l.bytes {
		return false
	}
	if !exempt {
		l.usedLines++
	}
	return true
}

// charge counts the bytes of an admitted line.
func (l *outputLimit) charge(n int) {
	l.mu.Lock()
	l.usedBytes += n
	l.mu.Unlock()
}

// drop counts dropped lines and bytes, and schedules their report for the
// end of the window.
func (l *outputLimit) drop(lines, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropLines += lines
	l.dropBytes += n
	if !l.pending {
		l.pending = true
		time.AfterFunc(time.Until(l.end), l.flush)
	}
}

// flush reports what was dropped since the last report.
func (l *outputLimit) flush() {
	l.mu.Lock()
	lines, n := l.dropLines, l.dropBytes
	l.dropLines, l.dropBytes, l.pending = 0, 0, false
	l.mu.Unlock()
	if lines > 0 || n > 0 {
		l.report(lines, n)
	}
}

// over reports whether the budget of the current window is spent.
func (l *outputLimit) over(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return now.Before(l.end) && (l.lines > 0 && l.usedLines >= l.lines || l.bytes > 0 && l.usedBytes >= l.bytes)
}

// outputPump is what go-plugin reads of a worker's stdout or stderr. It
// reads the pipe itself, in large reads, into sink, and gives go-plugin
// nothing but the end of file, so that go-plugin's reader (a read, a
// string and a channel send per line) never sees the worker's output; on
// stdout, handshake first passes the first line, go-plugin's handshake.
//
// While the limit is spent, the pipe leaves the runtime's poller, whose
// edge-triggered epoll would wake the dispatcher at every write of the
// worker, and is read on a timer instead (drain), every dropPause.
type outputPump struct {
	sink      io.Writer
	limit     *outputLimit  // nil: none
	handshake bool          // pass the first line to the reader
	eof       func()        // if set, called at the end of the stream, before done is closed
	done      chan struct{} // if set, closed at the end of the stream
	once      sync.Once

	// f is the pipe while it is read through the poller, nil while it is
	// drained; only Read's goroutine changes it, under mu.
	f      *os.File
	mu     sync.Mutex
	closed bool
	stop   chan struct{} // closed by Close
}

func newOutputPump(f *os.File, sink io.Writer, limit *outputLimit) *outputPump {
	return &outputPump{f: f, sink: sink, limit: limit, stop: make(chan struct{})}
}

func (o *outputPump) Read(p []byte) (int, error) {
	if o.handshake {
		n, err := o.f.Read(p)
		if i := bytes.IndexByte(p[:n], '\n'); i >= 0 {
			o.handshake = false
			_, _ = o.sink.Write(p[i+1 : n])
			n = i + 1
		}
		if err != nil {
			o.end()
			return n, io.EOF
		}
		return n, nil
	}
	buf := make([]byte, pumpBuffer)
	for {
		n, err := o.f.Read(buf)
		if n > 0 {
			_, _ = o.sink.Write(buf[:n])
		}
		if err != nil || o.limit != nil && o.limit.over(time.Now()) && o.drain(buf) {
			o.end()
			return 0, io.EOF
		}
	}
}

// drain reads the pipe on a timer, out of the poller, until the limit has
// room again; it reports whether the stream ended (or was closed).
func (o *outputPump) drain(buf []byte) (ended bool) {
	fd, err := o.detach()
	if err != nil {
		return o.closing()
	}
	t := time.NewTimer(dropPause)
	defer t.Stop()
	for {
		select {
		case <-o.stop:
			unix.Close(fd)
			return true
		case <-t.C:
		}
		// What is there, at most a pipe's worth a few times over: a
		// writer as fast as this reader never holds it.
		for range 8 {
			n, err := unix.Read(fd, buf)
			if n > 0 {
				_, _ = o.sink.Write(buf[:n])
			}
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				break
			}
			if err != nil || n == 0 {
				unix.Close(fd)
				return true
			}
		}
		if !o.limit.over(time.Now()) {
			if o.attach(fd) {
				return false
			}
			return true
		}
		t.Reset(dropPause)
	}
}

// detach takes the pipe out of the poller: a duplicate of its descriptor
// stays, non-blocking, and the file is closed (which removes it from the
// poller).
func (o *outputPump) detach() (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return -1, os.ErrClosed
	}
	rc, err := o.f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if cerr := rc.Control(func(d uintptr) { fd, err = unix.FcntlInt(d, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, err
	}
	o.f.Close()
	o.f = nil
	return fd, nil
}

// attach puts the pipe's descriptor back in the poller; false if the pump
// was closed meanwhile (the descriptor is closed then).
func (o *outputPump) attach(fd int) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		unix.Close(fd)
		return false
	}
	o.f = os.NewFile(uintptr(fd), "worker-output") // non-blocking: the poller takes it
	return true
}

func (o *outputPump) closing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closed
}

// end closes the pipe (go-plugin never does) and tells that the stream
// ended, once.
func (o *outputPump) end() {
	o.once.Do(func() {
		o.Close()
		if o.eof != nil {
			o.eof()
		}
		if o.done != nil {
			close(o.done)
		}
	})
}

// Close closes the pipe, ending Read whatever holds its other end.
func (o *outputPump) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	close(o.stop)
	if o.f != nil {
		return o.f.Close()
	}
	return nil
}

// newOutputLimit returns the limit of Config.LogLines and LogBytes.
func newOutputLimit(lines, n int, report func(lines, bytes int)) *outputLimit {
	if lines == 0 {
		lines = DefaultLogLines
	}
	if n == 0 {
		n = DefaultLogBytes
	}
	return &outputLimit{lines: max(lines, 0), bytes: max(n, 0), report: report}
}

// limitedSink returns a sink of w's lines within limit.
func (w *workerLog) limitedSink(limit *outputLimit) *lineSink {
	return &lineSink{emit: w.line, limit: limit, exempt: &w.gathering}
}
