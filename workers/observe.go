package workers

import (
	"sort"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// Observer receives a pool's events, for metrics. Its methods are called
// from the pool's goroutines, some on the request path: they must be fast
// and must not block or call back into the pool.
type Observer interface {
	// WorkerStarted reports a spawn and its handshake: how long it took
	// and, if it failed, why.
	WorkerStarted(d time.Duration, err error)
	// WorkerExited reports a worker's exit and its cause.
	WorkerExited(cause Cause)
	// Admitted reports a request's wait for a worker slot (0 if one was
	// free) and, if it got none, why (an *OverloadError, ErrClosed, the
	// request's context error, a start failure).
	Admitted(wait time.Duration, err error)
	// BreakerChanged reports the binary's circuit breaker opening or
	// closing.
	BreakerChanged(open bool)
	// LogDropped reports output lines of a worker dropped over
	// Config.LogLines or LogBytes, and their bytes.
	LogDropped(lines, bytes int)
}

// Cause classifies why a worker exited.
type Cause string

// The causes of a worker's exit.
const (
	CauseCrashed     Cause = "crashed"     // it exited or was killed by a signal on its own
	CauseOutOfMemory Cause = "oom"         // its sandbox's memory limit killed it
	CauseTimeout     Cause = "timeout"     // a request ran past Timeout
	CauseQuarantined Cause = "quarantined" // it hung (a ping or a cancel went unanswered)
	CauseProtocol    Cause = "protocol"    // it broke the IPC protocol
	CauseBroken      Cause = "broken"      // its connection broke, or a request it never read was lost with it
	CauseRecycled    Cause = "recycled"    // MaxRequests or MaxRSS
	CauseIdle        Cause = "idle"        // ModeOnDemand's IdleTimeout
	CauseOneShot     Cause = "oneshot"     // ModeOneShot: its request is over
	CauseStopped     Cause = "stopped"     // the pool closed or drained
)

// exitNote is why the pool took a worker out, when it did.
type exitNote struct {
	cause Cause
	text  string
}

type nopObserver struct{}

func (nopObserver) WorkerStarted(time.Duration, error) {}
func (nopObserver) WorkerExited(Cause)                 {}
func (nopObserver) Admitted(time.Duration, error)      {}
func (nopObserver) BreakerChanged(bool)                {}
func (nopObserver) LogDropped(int, int)                {}

// Worker states in a Status.
const (
	StateIdle     = "idle"     // in rotation, nothing outstanding
	StateBusy     = "busy"     // serving
	StateRetiring = "retiring" // recycled or retired: finishing what it has, then stopping
	StateDead     = "dead"     // exited or being killed; about to be replaced
)

// Status is a snapshot of a pool, for status pages and metrics.
type Status struct {
	Path     string
	Mode     Mode
	Workers  []WorkerStatus // by start time
	Starting int            // spawns in flight
	Queued   int            // requests waiting for a worker
	Breaker  BreakerStatus
	Exits    []ExitRecord // the latest, newest first
	Draining bool
}

// WorkerStatus describes one worker process.
type WorkerStatus struct {
	PID     int
	State   string
	Started time.Time
	Served  int
	Busy    int   // exchanges outstanding on its slots
	RSS     int64 // resident memory in bytes; 0 if unknown
	// Current is the method and URI of the oldest request it is serving
	// ("" if idle, "(pipelined)" if that request's predecessor on the slot
	// just finished), and Since when it started.
	Current string
	Since   time.Time
}

// BreakerStatus is the state of the binary's circuit breaker.
type BreakerStatus struct {
	Open    bool
	Probing bool
	Until   time.Time
	Why     string // why it last opened
}

// ExitRecord describes a worker's exit.
type ExitRecord struct {
	PID    int
	Cause  Cause
	Reason string // the pool's reason, or the exit status
	At     time.Time
	Uptime time.Duration
}

// keptExits is how many ExitRecords a pool keeps.
const keptExits = 16

// Status returns a snapshot of the pool. It reads each worker's memory
// from /proc, so it is meant for status pages and scrapes, not hot paths.
func (p *Pool) Status() Status {
	sup, adm := p.sup, p.adm
	sup.mu.Lock()
	st := Status{
		Path:     p.cfg.Path,
		Mode:     p.cfg.Mode,
		Starting: sup.starting,
		Breaker:  sup.breaker.State(),
	}
	ws := make([]*worker, 0, len(sup.workers))
	for w := range sup.workers {
		ws = append(ws, w)
	}
	for i := range sup.exitLog {
		e := sup.exitLog[(sup.exitNext-1-i+2*keptExits)%keptExits]
		if e.PID == 0 {
			break
		}
		st.Exits = append(st.Exits, e)
	}
	sup.mu.Unlock()
	adm.mu.Lock()
	st.Queued = adm.admittedLocked()
	st.Draining = adm.draining
	for _, w := range ws {
		ws := WorkerStatus{PID: w.proc.PID(), Started: w.started, Served: int(w.served.Load()), Busy: w.busy}
		switch state := w.state.Load(); {
		case state == stateDead:
			ws.State = StateDead
		case state == stateRetired || state == stateRecycling:
			ws.State = StateRetiring
		case w.busy > 0:
			ws.State = StateBusy
		default:
			ws.State = StateIdle
		}
		for _, s := range w.slots {
			if s.n > 0 && (ws.Since.IsZero() || s.since.Before(ws.Since)) {
				ws.Current, ws.Since = describe(s.cur), s.since
			}
		}
		st.Workers = append(st.Workers, ws)
	}
	adm.mu.Unlock()
	sort.Slice(st.Workers, func(i, j int) bool { return st.Workers[i].Started.Before(st.Workers[j].Started) })
	for i := range st.Workers {
		if st.Workers[i].State != StateDead {
			st.Workers[i].RSS, _ = residentBytes(st.Workers[i].PID)
		}
	}
	return st
}

func describe(r *ipc.Request) string {
	if r == nil {
		return "(pipelined)"
	}
	return r.Method + " " + r.URI
}

// Ready reports whether the pool can serve a request now or start a worker
// for it: it is not closed or draining, and a worker is in rotation or
// one may start (the breaker allows it, and MaxWorkers leaves room).
func (p *Pool) Ready() bool {
	if p.isClosed() {
		return false
	}
	p.adm.mu.Lock()
	draining := p.adm.draining
	p.adm.mu.Unlock()
	if draining {
		return false
	}
	p.sup.mu.Lock()
	defer p.sup.mu.Unlock()
	if p.sup.liveLocked() > 0 {
		return true
	}
	if p.cfg.Mode == ModePool {
		return false
	}
	_, room := p.sup.deficitLocked()
	_, refusing := p.sup.breaker.Refusing(time.Now())
	return room > 0 && !refusing
}
