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
	p.mu.Lock()
	st := Status{
		Path:     p.cfg.Path,
		Mode:     p.cfg.Mode,
		Starting: p.starting,
		Queued:   len(p.waiters),
		Breaker:  BreakerStatus{Open: p.breaker.open, Probing: p.breaker.probing, Until: p.breaker.until},
		Draining: p.draining,
	}
	for c := range p.children {
		ws := WorkerStatus{PID: c.proc.PID(), Started: c.started, Served: c.served, Busy: c.busy}
		switch {
		case c.dead.Load() && !c.retired:
			ws.State = StateDead
		case c.retired || c.recycling:
			ws.State = StateRetiring
		case c.busy > 0:
			ws.State = StateBusy
		default:
			ws.State = StateIdle
		}
		for _, s := range c.slots {
			if s.n > 0 && (ws.Since.IsZero() || s.since.Before(ws.Since)) {
				ws.Current, ws.Since = describe(s.cur), s.since
			}
		}
		st.Workers = append(st.Workers, ws)
	}
	for i := range p.exitLog {
		e := p.exitLog[(p.exitNext-1-i+2*keptExits)%keptExits]
		if e.PID == 0 {
			break
		}
		st.Exits = append(st.Exits, e)
	}
	p.mu.Unlock()
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
// for it: it is not closed or draining, and a worker is in rotation or, in
// the modes that start workers on demand, the breaker allows a start.
func (p *Pool) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.draining || p.ctx == nil {
		return false
	}
	if p.liveLocked() > 0 {
		return true
	}
	return p.cfg.Mode != ModePool && !(p.breaker.open && time.Now().Before(p.breaker.until))
}

// recordExit keeps c's exit in the pool's recent exits and reports it.
// Called with p.mu held.
func (p *Pool) recordExit(c *child, cause Cause, reason string, now time.Time) {
	p.exitLog[p.exitNext] = ExitRecord{PID: c.proc.PID(), Cause: cause, Reason: reason, At: now, Uptime: now.Sub(c.started)}
	p.exitNext = (p.exitNext + 1) % keptExits
	p.obs.WorkerExited(cause)
}
