package workers

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/ipc/launch"
)

// Process is one started worker as a pool drives it: its slot connections
// and the means to stop it. The default (Config.Start nil) is the binary
// at Config.Path, started through go-plugin's handshake (package
// ipc/launch) and confined by Config.Sandbox. Tests start workers in memory.
type Process interface {
	// PID identifies the worker in logs and status pages.
	PID() int
	// Conns are its slot connections, each answered a ping already.
	Conns() []*ipc.Conn
	// Signal sends sig to the worker (SIGQUIT asks a Go worker for its
	// goroutine dump).
	Signal(sig syscall.Signal) error
	// Kill kills the whole worker at once (its process, group and cell)
	// without waiting.
	Kill()
	// Stop closes the slots, on which a worker exits, and waits for it to
	// exit until ctx is done; then it kills it. It waits a bounded time
	// for a killed worker and says so if it is still not reaped.
	Stop(ctx context.Context) error
	// Exited is closed once the worker has exited and its process tree is
	// gone.
	Exited() <-chan struct{}
	// ExitState says how the process ended, once Exited is closed; nil if
	// unknown.
	ExitState() *os.ProcessState
	// StderrTail returns its last stderr lines read at or after since
	// (all it kept if since is zero), waiting up to d for the stream to
	// end so that a dying worker's last words are in.
	StderrTail(since time.Time, d time.Duration) []string
	// OutOfMemory reports whether its memory limit killed it.
	OutOfMemory() bool
}

// StartSpec is what a pool asks of a worker it starts.
type StartSpec struct {
	Slots    int           // slot connections (Config.Concurrency)
	Depth    int           // requests that may be outstanding on a slot (Config.Pipeline)
	MaxFrame int           // the largest frame read from the worker
	Timeout  time.Duration // bound on the start and handshake (Config.StartTimeout)
	LogLines int           // output lines per second that reach the log (Config.LogLines)
	LogBytes int           // output bytes per second that reach the log (Config.LogBytes)
	// LogDropped is told what of the worker's output was dropped.
	LogDropped func(lines, bytes int)
	// Requests returns the IDs of the requests the worker serves, or the
	// one it is blamed for, for the log entry of a stack trace it writes.
	Requests func() []string
}

// child is a worker process started by launch, with its sandbox cell.
type child struct {
	*launch.Child
	cell Cell // nil without a Sandbox
}

func (c *child) Kill() {
	c.Child.Kill()
	if c.cell != nil {
		c.cell.Kill()
	}
}

func (c *child) OutOfMemory() bool { return c.cell != nil && c.cell.OutOfMemory() }

var _ Process = (*child)(nil)

// startChild starts a worker of cfg's binary: the default Config.Start.
// socketDir is the pool's socket directory.
func (c *Config) startChild(spec StartSpec, socketDir string) (Process, error) {
	cmd, cell, err := c.command(socketDir)
	if err != nil {
		return nil, err
	}
	// The cell's processes (even those that left the worker's process
	// group) die, and the cell goes, as soon as the worker is reaped; so
	// do the strays the Reaper adopted.
	var onExit func()
	var start func(*exec.Cmd) error
	if cell != nil {
		start = cell.Start
		onExit = func() {
			if err := cell.Release(); err != nil {
				c.Logger.WithError(err).Warn("worker's sandbox cell not fully removed")
			}
		}
	}
	if r := c.Reaper; r != nil {
		inner := start
		start = func(cmd *exec.Cmd) error {
			return r.Track(func() (int, error) {
				var err error
				if inner != nil {
					err = inner(cmd)
				} else {
					err = cmd.Start()
				}
				if err != nil {
					return 0, err
				}
				return cmd.Process.Pid, nil
			})
		}
		cellExit := onExit
		var once sync.Once
		onExit = func() {
			once.Do(func() {
				if cellExit != nil {
					cellExit()
				}
				if cmd.Process != nil {
					r.Forget(cmd.Process.Pid)
				}
				if cell != nil && cell.ReapsOrphans() {
					// Its orphans never reach this process. (A stray of
					// another, unsandboxed pool waits for that pool's next
					// exit: its cell, if any, has killed it already.)
					return
				}
				if n := r.Sweep(); n > 0 {
					c.Logger.WithField("killed", n).Warn("killed processes that escaped a worker")
				}
			})
		}
	}
	proc, err := launch.Start(launch.Config{
		Cmd:          cmd,
		Name:         c.Path,
		StartProcess: start,
		OnExit:       onExit,
		Slots:        spec.Slots,
		MaxFrame:     spec.MaxFrame,
		Depth:        spec.Depth,
		StartTimeout: spec.Timeout,
		SocketDir:    socketDir,
		Logger:       c.Logger,
		LogLines:     spec.LogLines,
		LogBytes:     spec.LogBytes,
		LogDropped:   spec.LogDropped,
		Requests:     spec.Requests,
	})
	if err != nil {
		if onExit != nil {
			onExit() // Release is idempotent; a start that failed before exec did not call it
		}
		return nil, err
	}
	return &child{Child: proc, cell: cell}, nil
}

// Worker states. A worker is in rotation while live or recycling; retired
// and dead workers take no request, and stay known to the pool until their
// process has exited.
const (
	stateLive      int32 = iota
	stateRecycling       // live, until its replacement runs (MaxRequests, MaxRSS)
	stateRetired         // out of rotation on purpose: its exit is no failure
	stateDead            // killed by the pool, or found dead
)

// worker is one worker process of a pool.
type worker struct {
	proc        Process
	slots       []*slot
	started     time.Time
	maxRequests int // recycled after that many requests (0: never)

	state   atomic.Int32
	note    atomic.Pointer[exitNote] // why the pool took it out, if it did
	retired atomic.Pointer[exitNote] // why it was retired
	used    atomic.Bool              // it took a request (ModeOneShot: not a spare)
	served  atomic.Int64             // requests it completed
	// hardKilled: it was sent SIGKILL, and no longer counts against
	// MaxWorkers whatever its process still does.
	hardKilled atomic.Bool
	// blame is the ID of the request its death or goroutine dump is
	// reported with: the one that timed out, or first saw it crash.
	blame atomic.Pointer[string]
	stop  sync.Once

	// Guarded by admission.mu.
	busy      int       // exchanges reserved on its slots
	idleSince time.Time // when busy last dropped to zero
}

func newWorker(proc Process, maxRequests int, now time.Time) *worker {
	w := &worker{proc: proc, started: now, maxRequests: maxRequests, idleSince: now}
	for _, conn := range proc.Conns() {
		w.slots = append(w.slots, &slot{w: w, conn: conn})
	}
	return w
}

// jittered returns a worker's request limit: n plus up to 10% of jitter,
// so that workers started together do not all recycle together (0: never).
func jittered(n int) int {
	if n <= 0 {
		return 0
	}
	return n + rand.IntN(n/10+1)
}

// inRotation reports whether the worker may be given new requests.
func (w *worker) inRotation() bool {
	s := w.state.Load()
	return s == stateLive || s == stateRecycling
}

// out reports whether the worker left rotation for good.
func (w *worker) out() bool { return !w.inRotation() }

// kill takes the worker out of rotation and kills it at once with
// everything it started. The first reason given is kept for the log.
func (w *worker) kill(cause Cause, reason string) {
	w.note.CompareAndSwap(nil, &exitNote{cause, reason})
	w.state.Store(stateDead)
	w.hardKilled.Store(true)
	w.proc.Kill()
}

// gone takes a worker found dead out of rotation, without a note of the
// pool's: its exit status says what happened.
func (w *worker) gone() {
	for {
		s := w.state.Load()
		if s == stateRetired || s == stateDead || w.state.CompareAndSwap(s, stateDead) {
			return
		}
	}
}

// markDead takes the worker out of rotation without killing it (it is
// being quarantined, or already gone). It reports whether this call did.
func (w *worker) markDead(cause Cause, reason string) bool {
	if !w.note.CompareAndSwap(nil, &exitNote{cause, reason}) {
		return false
	}
	w.state.Store(stateDead)
	return true
}

// retire takes a worker in rotation out of it on purpose. It reports
// whether this call did.
func (w *worker) retire(cause Cause, why string) bool {
	for {
		s := w.state.Load()
		if s != stateLive && s != stateRecycling {
			return false
		}
		if w.state.CompareAndSwap(s, stateRetired) {
			w.retired.Store(&exitNote{cause, why})
			return true
		}
	}
}

// retireNow retires a worker in rotation and kills it at once (a used
// oneshot worker).
func (w *worker) retireNow(cause Cause, why string) {
	if w.retire(cause, why) {
		w.hardKilled.Store(true)
		w.proc.Kill()
	}
}

// recycle marks a live worker for replacement. It reports whether this
// call did.
func (w *worker) recycle() bool { return w.state.CompareAndSwap(stateLive, stateRecycling) }

// exitedNow reports whether the worker's process has exited.
func (w *worker) exitedNow() bool {
	select {
	case <-w.proc.Exited():
		return true
	default:
		return false
	}
}

// slot is one slot connection of a worker.
type slot struct {
	w    *worker
	conn *ipc.Conn
	// Guarded by admission.mu.
	n         int       // exchanges reserved on it: running, parked or being discarded
	parked    []*entry  // the requests queued on it, not started, in order
	streaming bool      // one of them streams its request body: nothing queues behind it
	progress  time.Time // when it last became busy or finished an exchange
	pinged    time.Time // when it last answered a health ping
	// cur is the running request, if known, and since when.
	cur   *ipc.Request
	since time.Time
}

// blameOn makes request id the one w's death and goroutine dump are
// reported with, unless another request already is.
func (w *worker) blameOn(id string) {
	if id != "" {
		w.blame.CompareAndSwap(nil, &id)
	}
}
