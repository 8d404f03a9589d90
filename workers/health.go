package workers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/internal/procstatus"
	"github.com/sirupsen/logrus"
)

// Defaults of the health, recycling and quarantine settings.
const (
	DefaultQuarantineGrace = time.Second
	DefaultPingInterval    = 10 * time.Second
	DefaultPingTimeout     = 2 * time.Second
	DefaultRSSInterval     = 5 * time.Second
)

// Breaker stops the starts of a worker binary that keeps crashing or
// failing its handshake: Failures of them within Window open it for Backoff,
// doubling (up to MaxBackoff) each time it opens again without having
// stayed closed for a Window. While it is open no worker starts and requests
// are refused at once; then one probe worker is started: if it completes its
// handshake the breaker closes, otherwise it opens again.
type Breaker struct {
	// Failures opens the breaker. If zero, 5; negative disables the breaker.
	Failures int
	// Window is the period in which they count. If zero, 30s.
	Window time.Duration
	// Backoff is the first open period. If zero, 5s.
	Backoff time.Duration
	// MaxBackoff caps the open period. If zero, 5m.
	MaxBackoff time.Duration
}

func (b Breaker) withDefaults() Breaker {
	if b.Failures == 0 {
		b.Failures = 5
	}
	if b.Window <= 0 {
		b.Window = 30 * time.Second
	}
	if b.Backoff <= 0 {
		b.Backoff = 5 * time.Second
	}
	if b.MaxBackoff <= 0 {
		b.MaxBackoff = 5 * time.Minute
	}
	return b
}

// breaker is the state of a pool's Breaker. Guarded by Pool.mu.
type breaker struct {
	failures []time.Time // within the window
	open     bool
	probing  bool // the probe worker is starting
	until    time.Time
	backoff  time.Duration // of the last opening
	closedAt time.Time
}

// failed records a crash or a failed start; it reports whether the breaker
// opened. Called with p.mu held.
func (p *Pool) failed(now time.Time) bool {
	cfg, b := p.cfg.Breaker, &p.breaker
	if cfg.Failures < 0 {
		return false
	}
	if b.probing {
		b.probing = false
		p.openBreaker(now, "the probe worker failed")
		return true
	}
	if b.open {
		return false
	}
	keep := b.failures[:0]
	for _, t := range b.failures {
		if now.Sub(t) < cfg.Window {
			keep = append(keep, t)
		}
	}
	b.failures = append(keep, now)
	if len(b.failures) < cfg.Failures {
		return false
	}
	p.openBreaker(now, fmt.Sprintf("%d failures within %s", len(b.failures), cfg.Window))
	return true
}

// openBreaker opens the breaker and refuses the waiting requests. Called
// with p.mu held.
func (p *Pool) openBreaker(now time.Time, why string) {
	cfg, b := p.cfg.Breaker, &p.breaker
	switch {
	case b.backoff == 0 || (!b.open && !b.closedAt.IsZero() && now.Sub(b.closedAt) >= cfg.Window):
		b.backoff = cfg.Backoff
	default:
		b.backoff = min(2*b.backoff, cfg.MaxBackoff)
	}
	b.open, b.until, b.failures = true, now.Add(b.backoff), b.failures[:0]
	p.log.WithFields(logrus.Fields{"why": why, "until": b.until.Format(time.RFC3339), "backoff": b.backoff.String()}).
		Error("worker binary quarantined: breaker open, no worker starts and requests are refused until then")
	p.obs.BreakerChanged(true)
	err := p.quarantinedLocked(now)
	for _, w := range p.waiters {
		w.err = err
		w.ch <- nil
	}
	p.waiters = nil
}

// quarantinedLocked returns the error of a request refused while the
// breaker is open. Called with p.mu held.
func (p *Pool) quarantinedLocked(now time.Time) error {
	until := p.breaker.until
	return &OverloadError{
		Reason:     fmt.Sprintf("the worker binary is quarantined after repeated failures, until %s", until.UTC().Format(time.RFC3339)),
		RetryAfter: max(until.Sub(now), time.Second),
	}
}

// probeDue reports whether the breaker is open and its period is over:
// the supervisor starts one probe worker. Called with p.mu held.
func (p *Pool) probeDue(now time.Time) bool {
	b := &p.breaker
	return b.open && !b.probing && !now.Before(b.until)
}

// started records a worker that completed its handshake: a probe closes
// the breaker. Called with p.mu held.
func (p *Pool) startedLocked(now time.Time) {
	b := &p.breaker
	if b.probing {
		b.probing, b.open, b.closedAt = false, false, now
		p.obs.BreakerChanged(false)
		p.log.Warn("worker binary out of quarantine: the probe worker started; breaker closed")
	}
}

// quarantine takes a worker out of rotation at once because it hung or
// misbehaved. A Go worker is sent SIGQUIT first, so that its goroutine
// stacks land in the log, then its process group is killed after
// QuarantineGrace.
func (p *Pool) quarantine(c *child, cause Cause, reason string) {
	if !c.reason.CompareAndSwap(nil, &exitNote{cause, reason}) {
		return // already on its way out
	}
	c.dead.Store(true)
	p.log.WithFields(logrus.Fields{"pid": c.proc.PID(), "reason": reason}).Warn("worker quarantined: sending SIGQUIT for its goroutine dump, then killing it")
	_ = c.proc.Signal(syscall.SIGQUIT)
	go func() {
		t := time.NewTimer(p.cfg.QuarantineGrace)
		defer t.Stop()
		select {
		case <-c.proc.Exited():
		case <-t.C:
		}
		c.killNow()
	}()
}

// served counts a request a worker finished and reports whether the worker
// reached its MaxRequests. Called with p.mu held.
func (p *Pool) servedLocked(c *child) bool {
	c.served++
	return c.maxRequests > 0 && c.served >= c.maxRequests && !c.recycling
}

// maxRequestsFor returns a worker's request limit: MaxRequests plus up to
// 10% of jitter, so that workers started together do not all recycle
// together.
func (p *Pool) maxRequestsFor() int {
	n := p.cfg.MaxRequests
	if n <= 0 {
		return 0
	}
	return n + rand.IntN(n/10+1)
}

// recycleLocked marks c for a graceful replacement: a new worker is started
// first; once it is in rotation, c takes no new request, finishes what it
// has and stops. Called with p.mu held.
func (p *Pool) recycleLocked(c *child, why string) {
	if c.recycling || c.retired || c.dead.Load() {
		return
	}
	c.recycling = true
	p.log.WithFields(logrus.Fields{"pid": c.proc.PID(), "why": why}).Info("recycling worker: starting its replacement")
	if p.cfg.Mode != ModePool {
		// No replacement to wait for: demand starts one if needed.
		p.retire(c, true, CauseRecycled)
	}
	p.wake()
}

// replaceRecycled retires one worker waiting for its replacement, now that
// a new worker joined. Called with p.mu held.
func (p *Pool) replaceRecycled() {
	for c := range p.children {
		if c.recycling && !c.retired && !c.dead.Load() {
			p.retire(c, true, CauseRecycled)
			return
		}
	}
}

// checkRSS recycles the workers whose resident memory exceeds MaxRSS.
func (p *Pool) checkRSS() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.children {
		if c.dead.Load() || c.retired || c.recycling {
			continue
		}
		rss, err := residentBytes(c.proc.PID())
		if err != nil {
			continue // it is exiting
		}
		if rss > p.cfg.MaxRSS {
			p.recycleLocked(c, fmt.Sprintf("resident memory %d MiB over the limit of %d MiB", rss>>20, p.cfg.MaxRSS>>20))
		}
	}
}

// residentBytes returns the resident memory of a worker process and its
// descendants (under a sandbox, the process the pool started is the
// sandbox's init, and the worker is its child), summed from /proc.
func residentBytes(pid int) (int64, error) {
	total, err := procstatus.Bytes(pid, "VmRSS")
	if err != nil {
		return 0, err
	}
	seen := map[int]bool{pid: true}
	queue := []int{pid}
	for len(queue) > 0 && len(seen) < 4096 {
		p := queue[0]
		queue = queue[1:]
		for _, child := range childPIDs(p) {
			if seen[child] {
				continue
			}
			seen[child] = true
			queue = append(queue, child)
			if rss, err := procstatus.Bytes(child, "VmRSS"); err == nil {
				total += rss
			}
		}
	}
	return total, nil
}

// childPIDs lists a process's children (forked by any of its threads).
func childPIDs(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var pids []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
	}
	return pids
}

// pingIdle checks the health of idle slots that have not been used for a
// PingInterval: each is taken out of rotation, pinged within PingTimeout
// and put back. A worker that does not answer is quarantined.
func (p *Pool) pingIdle() {
	now := time.Now()
	p.mu.Lock()
	var due []*slot
	keep := p.idle[:0]
	for _, s := range p.idle {
		if !s.c.dead.Load() && now.Sub(s.progress) >= p.cfg.PingInterval {
			due = append(due, s)
			s.n++ // not reserve: a pinged oneshot spare stays unused
			s.c.busy++
			continue
		}
		keep = append(keep, s)
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.wg.Add(len(due))
	p.mu.Unlock()
	for _, s := range due {
		go func() {
			defer p.wg.Done()
			_ = s.conn.SetDeadline(time.Now().Add(p.cfg.PingTimeout))
			if err := s.conn.Ping(); err != nil && !s.c.dead.Load() {
				p.quarantine(s.c, CauseQuarantined, fmt.Sprintf("no answer to a health ping within %s: %v", p.cfg.PingTimeout, err))
			}
			p.done(s)
		}()
	}
}

// stopWhenIdle stops a retired worker once nothing is outstanding on it.
// Called with p.mu held.
func (p *Pool) stopWhenIdle(c *child) {
	if !c.retired || c.stopping || c.busy > 0 {
		return
	}
	c.stopping = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.StopTimeout)
		defer cancel()
		_ = c.proc.Stop(ctx)
	}()
}
