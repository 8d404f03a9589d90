// Package workers runs the processes of one function: it spawns them,
// hands each request to an idle one, supervises them, and restarts the ones
// that die, with backoff. It owns process policy (how many, when to restart,
// when to kill); package ipc owns the wire protocol and the go-plugin glue.
//
// A Pool follows a Start/Close lifecycle. Every request goes through
// RoundTrip; its failures come back as typed errors (*ExitError,
// *TimeoutError, ErrClosed) that the caller maps to HTTP statuses. A request
// that never reached a worker (the worker died while idle) is retried on
// another one.
package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/sirupsen/logrus"
)

// maxAttempts bounds how many workers one request is offered to when the
// earlier ones turn out dead before reading it. A retry costs little, and
// with several slots per worker a request can land, again and again, on
// the idle slot of a worker whose other slot is running a crashing handler
// (a replacement starts in a few milliseconds and its slots are the next
// idle ones); the bound only stops a request from circling forever.
const maxAttempts = 6

// Pool runs the worker processes of one function.
type Pool struct {
	cfg Config
	log *logrus.Entry

	mu       sync.Mutex
	idle     []*slot // slots with nothing outstanding
	waiters  []*waiter
	children map[*child]struct{}
	closed   bool
	starting int // spawns in flight
	// notBefore delays the next spawn after failures (Backoff).
	notBefore time.Time
	refused   int       // requests refused since the last log line about it
	refusedAt time.Time // when that line was logged
	breaker   breaker
	draining  bool // Drain began: new requests are refused with ErrClosed
	obs       Observer
	exitLog   [keptExits]ExitRecord // ring of the latest exits
	exitNext  int

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	exits     chan *child
	socketDir string
	backoff   Backoff
	stall     time.Duration // pipelineStall; tests change it
	// queueTimer refuses waiters past QueueTimeout; armed while there are
	// waiters (queueArmed). Guarded by mu.
	queueTimer *time.Timer
	queueArmed bool
	kick       chan struct{} // wakes the supervisor: demand or supply changed

	closeOnce sync.Once
	closeErr  error
}

type child struct {
	proc    *launch.Child
	slots   []*slot
	started time.Time
	dead    atomic.Bool
	reason  atomic.Pointer[exitNote] // why the pool killed it, if it did
	cell    Cell                     // its sandbox cell; nil without a Sandbox
	// Guarded by Pool.mu.
	busy      int       // exchanges reserved on its slots
	idleSince time.Time // when busy last dropped to zero
	used      bool      // it took a request (ModeOneShot: it is not a spare)
	retired   bool      // taken out of rotation on purpose: its exit is no failure
	retiredAs Cause     // why it was retired
	stopping  bool      // retired, and its graceful stop began
	recycling bool      // to be retired once its replacement runs
	served    int       // requests it completed
	// maxRequests recycles it after that many requests (0: never).
	maxRequests int
}

// killNow sends SIGKILL to the worker process, its process group and its
// cell, without waiting.
func (c *child) killNow() {
	c.proc.Kill()
	if c.cell != nil {
		c.cell.Kill()
	}
}

// outOfMemory reports whether the worker's memory limit killed it.
func (c *child) outOfMemory() bool { return c.cell != nil && c.cell.OutOfMemory() }

type slot struct {
	c    *child
	conn *ipc.Conn
	// Guarded by Pool.mu.
	n         int       // exchanges reserved on it: running, queued or being discarded
	streaming bool      // one of them streams its request body: nothing queues behind it
	progress  time.Time // when it last became busy or finished an exchange
	// cur is the oldest outstanding request, if known, since when.
	cur   *ipc.Request
	since time.Time
}

// pipelineStall is how long a busy slot may go without finishing an
// exchange and still be given more requests to queue: pipelining is for
// fast handlers, and a request must not wait behind a slow one when it
// could wait for whichever slot frees first.
const pipelineStall = 10 * time.Millisecond

// NewPool validates cfg and returns a pool that runs nothing until Start.
func NewPool(cfg Config) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	obs := cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	return &Pool{
		obs:      obs,
		cfg:      cfg,
		log:      cfg.Logger.WithField("worker", filepath.Base(cfg.Path)),
		children: make(map[*child]struct{}),
		exits:    make(chan *child, 64),
		stall:    pipelineStall,
		kick:     make(chan struct{}, 1),
		backoff:  cfg.Backoff,
	}, nil
}

// Start spawns Config.Size workers and waits for their handshakes. If any
// fails to start, Start stops the others and returns its *launch.StartError.
func (p *Pool) Start(ctx context.Context) error {
	dir, err := os.MkdirTemp(p.cfg.SocketDir, "dispatcher-")
	if err != nil {
		return fmt.Errorf("workers: socket directory: %w", err)
	}
	// go-plugin adds "/plugin-dirNNNNNNNNNN/pluginNNNNNNNNNN" (at most 38
	// bytes) and a unix socket path holds at most 107.
	if len(dir)+38 > 107 {
		os.Remove(dir)
		return fmt.Errorf("workers: socket directory %q is too long for unix socket paths; use a shorter SocketDir or TMPDIR", p.cfg.SocketDir)
	}
	p.socketDir = dir
	p.ctx, p.cancel = context.WithCancel(context.Background())

	initial := p.cfg.Size
	switch p.cfg.Mode {
	case ModeOnDemand:
		initial = 0
	case ModeOneShot:
		initial = min(p.cfg.Spares, p.cfg.MaxWorkers)
	}
	errs := make(chan error, initial)
	for range initial {
		go func() {
			c, err := p.spawn()
			if err == nil {
				p.add(c)
			}
			errs <- err
		}()
	}
	var first error
	for range initial {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first == nil {
		if err := ctx.Err(); err != nil {
			first = err
		}
	}
	if first != nil {
		_ = p.Close(ctx)
		return first
	}
	p.wg.Add(1)
	go p.supervise()
	return nil
}

// Close stops accepting requests, stops every worker gracefully (killing
// those still running when ctx is done or Config.StopTimeout passed) and
// removes the pool's socket directory. Later calls return the first result.
func (p *Pool) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		for _, w := range p.waiters {
			w.err = ErrClosed
			w.ch <- nil
		}
		p.waiters = nil
		if p.queueTimer != nil {
			p.queueTimer.Stop()
		}
		p.idle = nil
		children := make([]*child, 0, len(p.children))
		for c := range p.children {
			children = append(children, c)
		}
		p.mu.Unlock()
		if p.cancel != nil {
			p.cancel()
		}
		p.wg.Wait()

		stopCtx, cancel := context.WithTimeout(ctx, p.cfg.StopTimeout)
		defer cancel()
		var wg sync.WaitGroup
		var killed atomic.Int32
		for _, c := range children {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.dead.Store(true)
				if c.proc.Stop(stopCtx) != nil {
					killed.Add(1)
				}
				c.proc.CloseConns()
			}()
		}
		wg.Wait()
		if p.socketDir != "" {
			if err := os.RemoveAll(p.socketDir); err != nil {
				p.closeErr = fmt.Errorf("workers: remove socket directory: %w", err)
			}
		}
		if n := killed.Load(); n > 0 && p.closeErr == nil {
			p.closeErr = fmt.Errorf("workers: %d worker(s) killed after the stop timeout", n)
		}
	})
	return p.closeErr
}

// Workers returns the pids of the live workers.
func (p *Pool) Workers() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	pids := make([]int, 0, len(p.children))
	for c := range p.children {
		if !c.dead.Load() {
			pids = append(pids, c.proc.PID())
		}
	}
	return pids
}

func (p *Pool) spawn() (*child, error) {
	// A long-running dispatcher's socket directory may have been removed
	// under it (a temp-file cleaner): make it again.
	if err := os.Mkdir(p.socketDir, 0o700); err == nil {
		p.log.WithField("dir", p.socketDir).Warn("the workers' socket directory had been removed; made it again")
	} else if !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("workers: socket directory %s: %w", p.socketDir, err)
	}
	cmd, cell, err := p.cfg.command(p.socketDir)
	if err != nil {
		return nil, err
	}
	// Sandbox: the cell's processes (even those that left the worker's
	// process group) die, and the cell goes, as soon as the worker is reaped.
	var onExit func()
	var start func(*exec.Cmd) error
	if cell != nil {
		start = cell.Start
		onExit = func() {
			if err := cell.Release(); err != nil {
				p.log.WithError(err).Warn("worker's sandbox cell not fully removed")
			}
		}
	}
	t0 := time.Now()
	proc, err := launch.Start(launch.Config{
		Cmd:          cmd,
		Name:         p.cfg.Path,
		StartProcess: start,
		OnExit:       onExit,
		Slots:        p.cfg.Concurrency,
		MaxFrame:     p.cfg.MaxFrame,
		Depth:        p.cfg.Pipeline,
		StartTimeout: p.cfg.StartTimeout,
		SocketDir:    p.socketDir,
		Logger:       p.cfg.Logger,
	})
	p.obs.WorkerStarted(time.Since(t0), err)
	if err != nil {
		if onExit != nil {
			onExit() // Release is idempotent; a start that failed before exec did not call it
		}
		return nil, err
	}
	c := &child{proc: proc, started: time.Now(), cell: cell}
	for _, conn := range proc.Conns() {
		c.slots = append(c.slots, &slot{c: c, conn: conn})
	}
	p.log.WithFields(logrus.Fields{"pid": proc.PID(), "start_ms": ms(time.Since(t0))}).Debug("worker started")
	return c, nil
}

// add puts a started worker into rotation.
func (p *Pool) add(c *child) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.proc.Kill()
		c.proc.CloseConns()
		return
	}
	p.children[c] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	go p.watch(c)
	p.mu.Lock()
	c.idleSince = time.Now()
	c.maxRequests = p.maxRequestsFor()
	p.replaceRecycled()
	for _, s := range c.slots {
		s.n++ // done hands it to a waiter or to the idle stack
		c.busy++
	}
	p.mu.Unlock()
	for _, s := range c.slots {
		p.done(s)
	}
}

// watch waits for a worker's exit, cleans up after it and reports it to the
// supervisor.
func (p *Pool) watch(c *child) {
	defer p.wg.Done()
	select {
	case <-c.proc.Exited():
	case <-p.ctx.Done():
		return
	}
	c.dead.Store(true)
	c.proc.Kill() // control connection, socket directory, stragglers in its group
	p.mu.Lock()
	p.dropIdle(c)
	p.mu.Unlock()
	select {
	case p.exits <- c:
	case <-p.ctx.Done():
	}
}

// supervise starts workers as the mode needs them: replacements in
// ModePool, one per waiting request (up to MaxWorkers) in ModeOnDemand, and
// spares in ModeOneShot. Failures space the starts with Backoff. In
// ModeOnDemand it also stops workers idle for longer than IdleTimeout.
func (p *Pool) supervise() {
	defer p.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var tickers []*time.Ticker
	defer func() {
		for _, t := range tickers {
			t.Stop()
		}
	}()
	every := func(d time.Duration) <-chan time.Time {
		t := time.NewTicker(min(max(d, 10*time.Millisecond), time.Second))
		tickers = append(tickers, t)
		return t.C
	}
	var reap, ping, rss <-chan time.Time
	if p.cfg.Mode == ModeOnDemand {
		reap = every(p.cfg.IdleTimeout / 4)
	}
	if p.cfg.PingInterval > 0 {
		ping = every(p.cfg.PingInterval / 2)
	}
	if p.cfg.MaxRSS > 0 {
		rss = every(p.cfg.RSSInterval)
	}
	for {
		if wait := p.scale(); wait > 0 {
			timer.Reset(wait)
		}
		select {
		case <-p.ctx.Done():
			return
		case c := <-p.exits:
			lived := time.Since(c.started)
			p.mu.Lock()
			// Removed here, with the backoff updated in the same step, so
			// that no start sneaks in before the delay is known.
			delete(p.children, c)
			retired := c.retired
			var delay time.Duration
			now := time.Now()
			note := c.reason.Load()
			switch {
			case retired:
				p.recordExit(c, c.retiredAs, "retired", now)
			case note != nil:
				p.recordExit(c, note.cause, note.text, now)
			case c.outOfMemory():
				p.recordExit(c, CauseOutOfMemory, "over its memory limit", now)
			default:
				p.recordExit(c, CauseCrashed, describeExit(c.proc.ExitState()), now)
			}
			if !retired {
				// A worker that took a request died of that request (a
				// crash, a timeout, a protocol violation): replaced at
				// once; only those dying before any request (a binary
				// that cannot stay up) back off.
				if !c.used {
					delay = p.backoff.Exited(lived)
				}
				p.notBefore = now.Add(delay)
				if note == nil {
					p.failed(now) // a crash, not a kill of ours
				}
			}
			p.mu.Unlock()
			if retired {
				p.log.WithFields(logrus.Fields{"pid": c.proc.PID(), "uptime": lived.Round(time.Millisecond).String()}).Debug("worker retired")
			} else {
				p.logExit(c, lived, delay)
			}
		case <-p.kick:
		case <-timer.C:
		case <-reap:
			p.reapIdle()
		case <-ping:
			p.pingIdle()
		case <-rss:
			p.checkRSS()
		}
	}
}

// scale starts the workers the mode calls for, if Backoff allows, and
// returns how long to wait before it may start more (0 if nothing waits).
func (p *Pool) scale() time.Duration {
	p.mu.Lock()
	now := time.Now()
	n := p.deficit()
	switch b := &p.breaker; {
	case n <= 0 || p.closed:
		p.mu.Unlock()
		return 0
	case b.open && b.probing:
		p.mu.Unlock()
		return 0
	case b.open && now.Before(b.until):
		p.mu.Unlock()
		return b.until.Sub(now)
	case b.open:
		b.probing, n = true, 1
		p.log.Info("worker binary quarantine over: starting a probe worker")
	case now.Before(p.notBefore):
		p.mu.Unlock()
		return p.notBefore.Sub(now)
	case p.backoff.Failures() > 1:
		n = 1 // a failing binary: one start at a time
	}
	p.starting += n
	p.wg.Add(n)
	p.mu.Unlock()
	for range n {
		go p.startOne()
	}
	return 0
}

// deficit returns how many workers to start now. Called with p.mu held.
//
// A worker that died counts until the supervisor has seen its exit (and
// its restart delay); a retired one only against MaxWorkers, which caps
// the processes that exist at once.
func (p *Pool) deficit() int {
	kept, fresh := 0, 0
	for c := range p.children {
		if c.retired || c.recycling {
			continue // a recycled worker is replaced before it goes
		}
		kept++
		if !c.used && c.busy == 0 && !c.dead.Load() {
			fresh++
		}
	}
	room := p.cfg.MaxWorkers - len(p.children) - p.starting
	switch p.cfg.Mode {
	case ModeOnDemand:
		per := p.cfg.Concurrency
		return min((len(p.waiters)+per-1)/per-p.starting, room)
	case ModeOneShot:
		return min(len(p.waiters)+p.cfg.Spares-fresh-p.starting, room)
	}
	return p.cfg.Size - kept - p.starting
}

// startOne spawns one worker for the supervisor. A failure delays the next
// start; when no worker is left to serve them, the waiting requests get the
// start error.
func (p *Pool) startOne() {
	defer p.wg.Done()
	c, err := p.spawn()
	p.mu.Lock()
	p.starting--
	if err != nil {
		delay := p.backoff.Failed()
		p.notBefore = time.Now().Add(delay)
		failures := p.backoff.Failures()
		p.failed(time.Now())
		var orphans []*waiter
		if p.starting == 0 && p.liveLocked() == 0 {
			orphans, p.waiters = p.waiters, nil
		}
		for _, w := range orphans {
			w.err = err
			w.ch <- nil
		}
		p.mu.Unlock()
		p.log.WithError(err).WithFields(logrus.Fields{
			"failures": failures, "retry_in": delay.String(), "requests_failed": len(orphans),
		}).Error("worker failed to start")
	} else {
		p.startedLocked(time.Now())
		p.mu.Unlock()
		p.add(c)
	}
	p.wake()
}

// liveLocked counts the workers in rotation. Called with p.mu held.
func (p *Pool) liveLocked() int {
	n := 0
	for c := range p.children {
		if !c.dead.Load() && !c.retired {
			n++
		}
	}
	return n
}

// wake tells the supervisor that demand or supply changed.
func (p *Pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// retire takes c out of rotation on purpose and stops it: at once with
// SIGKILL (a used oneshot worker) or gracefully. Called with p.mu held.
func (p *Pool) retire(c *child, graceful bool, cause Cause) {
	c.retired, c.retiredAs = true, cause
	c.dead.Store(true)
	p.dropIdle(c)
	if !graceful {
		c.stopping = true
		c.killNow()
		return
	}
	p.stopWhenIdle(c)
}

// dropIdle takes c's idle slots out of rotation and closes their
// connections (its busy ones are closed as their exchanges end). Called with
// p.mu held.
func (p *Pool) dropIdle(c *child) {
	live := p.idle[:0]
	for _, s := range p.idle {
		if s.c != c {
			live = append(live, s)
		} else {
			s.conn.Close()
		}
	}
	clear(p.idle[len(live):])
	p.idle = live
}

// reapIdle stops the workers idle for longer than IdleTimeout.
func (p *Pool) reapIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for c := range p.children {
		if !c.dead.Load() && !c.retired && c.busy == 0 && now.Sub(c.idleSince) >= p.cfg.IdleTimeout {
			p.log.WithFields(logrus.Fields{"pid": c.proc.PID(), "idle": now.Sub(c.idleSince).Round(time.Millisecond).String()}).Debug("stopping an idle worker")
			p.retire(c, true, CauseIdle)
		}
	}
}

func (p *Pool) logExit(c *child, lived, delay time.Duration) {
	f := logrus.Fields{
		"pid":    c.proc.PID(),
		"exit":   describeExit(c.proc.ExitState()),
		"uptime": lived.Round(time.Millisecond).String(),
	}
	if delay > 0 {
		f["restart_in"] = delay.String()
	}
	if r := c.reason.Load(); r != nil {
		f["reason"] = r.text
		p.log.WithFields(f).Warn("worker killed; replacing it")
		return
	}
	if c.outOfMemory() {
		f["reason"] = "out of memory"
		p.log.WithFields(f).Warn("worker killed: out of memory (over its memory limit); replacing it")
		return
	}
	if tail := c.proc.StderrTail(100 * time.Millisecond); len(tail) > 0 {
		f["stderr"] = tail
	}
	p.log.WithFields(f).Warn("worker exited unexpectedly; replacing it")
}

// kill takes a worker out of rotation and SIGKILLs its process group. The
// first reason given is kept for the log.
func (c *child) kill(cause Cause, reason string) {
	c.reason.CompareAndSwap(nil, &exitNote{cause, reason})
	c.dead.Store(true)
	c.killNow()
}

// acquire reserves a slot for one exchange: an idle slot of a live worker
// if there is one; else, for a request that can be pipelined (its body is
// complete), the least loaded busy slot with room below the pipelining
// depth; else it waits for either.
func (p *Pool) acquire(ctx context.Context, req *ipc.Request, pipelinable bool) (*slot, error) {
	p.mu.Lock()
	for len(p.idle) > 0 {
		s := p.idle[len(p.idle)-1]
		p.idle[len(p.idle)-1] = nil
		p.idle = p.idle[:len(p.idle)-1]
		if !s.c.dead.Load() {
			p.reserve(s, req, pipelinable)
			p.mu.Unlock()
			p.obs.Admitted(0, nil)
			return s, nil
		}
		s.conn.Close()
	}
	if p.closed || p.draining {
		p.mu.Unlock()
		p.obs.Admitted(0, ErrClosed)
		return nil, ErrClosed
	}
	if pipelinable && p.cfg.Pipeline > 1 {
		var best *slot
		now := time.Now()
		for c := range p.children {
			if c.dead.Load() {
				continue
			}
			for _, s := range c.slots {
				if s.n > 0 && s.n < p.cfg.Pipeline && !s.streaming && now.Sub(s.progress) < p.stall &&
					(best == nil || s.n < best.n) {
					best = s
				}
			}
		}
		if best != nil {
			p.reserve(best, req, pipelinable)
			p.mu.Unlock()
			p.obs.Admitted(0, nil)
			return best, nil
		}
	}
	if b := &p.breaker; b.open && time.Now().Before(b.until) {
		err := p.quarantinedLocked(time.Now())
		p.mu.Unlock()
		p.obs.Admitted(0, err)
		return nil, err
	}
	if len(p.waiters) >= p.cfg.Queue {
		err := &OverloadError{Reason: fmt.Sprintf("%d requests already wait for a worker", len(p.waiters)), RetryAfter: time.Second}
		p.refusedLocked(err)
		p.mu.Unlock()
		p.obs.Admitted(0, err)
		return nil, err
	}
	t0 := time.Now()
	w := &waiter{ch: make(chan *slot, 1), req: req, pipelinable: pipelinable, deadline: t0.Add(p.cfg.QueueTimeout)}
	p.waiters = append(p.waiters, w)
	p.armQueueTimerLocked(w.deadline)
	// The supervisor starts workers for waiters (ondemand, oneshot) and
	// replaces missing ones; a full pool has nothing for it to do.
	scale := p.deficit() > 0
	p.mu.Unlock()
	if scale {
		p.wake()
	}

	var err error
	select {
	case s := <-w.ch:
		if s == nil {
			p.obs.Admitted(time.Since(t0), w.err)
			return nil, w.err
		}
		p.obs.Admitted(time.Since(t0), nil)
		return s, nil
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.obs.Admitted(time.Since(t0), err)
	p.mu.Lock()
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			p.mu.Unlock()
			return nil, err
		}
	}
	p.mu.Unlock()
	// A slot (or a failure) was handed over as we gave up: pass it on.
	if s := <-w.ch; s != nil {
		p.done(s)
	}
	return nil, err
}

// refusedLocked counts a refused request and logs about refusals at most
// once a second. Called with p.mu held.
func (p *Pool) refusedLocked(err *OverloadError) {
	p.refused++
	if now := time.Now(); now.Sub(p.refusedAt) >= time.Second {
		p.log.WithFields(logrus.Fields{"refused": p.refused, "reason": err.Reason}).Warn("overloaded: refusing requests")
		p.refused, p.refusedAt = 0, now
	}
}

// waiter is a request waiting for a slot.
type waiter struct {
	ch          chan *slot
	err         error // why it gets no slot, sent with nil
	req         *ipc.Request
	pipelinable bool
	deadline    time.Time // QueueTimeout after it came
}

// armQueueTimerLocked makes sure the queue timer fires by d, the deadline
// of a new waiter. One timer serves the whole queue, not one per waiter
// (which cost about 2 µs of the dispatcher's CPU per request waiting in
// pool mode): waiters all wait QueueTimeout and are kept in arrival order,
// so the oldest expires first. Called with p.mu held.
func (p *Pool) armQueueTimerLocked(d time.Time) {
	if p.queueArmed {
		return
	}
	p.queueArmed = true
	if p.queueTimer == nil {
		p.queueTimer = time.AfterFunc(time.Until(d), p.expireWaiters)
	} else {
		p.queueTimer.Reset(time.Until(d))
	}
}

// expireWaiters refuses the waiters whose QueueTimeout has passed, and
// arms the timer for the next one.
func (p *Pool) expireWaiters() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queueArmed = false
	now := time.Now()
	n := 0
	for _, w := range p.waiters {
		if w.deadline.After(now) {
			p.waiters[n] = w
			n++
			continue
		}
		err := &OverloadError{Reason: fmt.Sprintf("no worker became free within %s", p.cfg.QueueTimeout), RetryAfter: time.Second}
		p.refusedLocked(err)
		w.err = err
		w.ch <- nil
	}
	clear(p.waiters[n:])
	p.waiters = p.waiters[:n]
	if n > 0 {
		p.armQueueTimerLocked(p.waiters[0].deadline)
	}
}

// reserve counts one more exchange on s. Called with p.mu held.
func (p *Pool) reserve(s *slot, req *ipc.Request, pipelinable bool) {
	if s.n == 0 {
		s.progress = time.Now()
		s.cur, s.since = req, s.progress
	}
	s.n++
	s.c.busy++
	s.c.used = true
	if !pipelinable {
		s.streaming = true
	}
}

// done ends one exchange's reservation of s and hands the slot on: to the
// first waiter that can use it, or to the idle stack once nothing is
// outstanding on it. A slot whose connection broke takes its worker out with
// it.
func (p *Pool) done(s *slot) { p.release(s, false) }

// release is done; served tells that the exchange completed (it counts
// towards MaxRequests).
func (p *Pool) release(s *slot, served bool) {
	if err := s.conn.Err(); err != nil && !s.c.dead.Load() {
		s.c.kill(CauseBroken, "slot connection broken: "+err.Error())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.n--
	s.progress = time.Now()
	s.cur, s.since = nil, s.progress // the next one's request is not known here
	if s.n == 0 {
		s.streaming = false
	}
	c := s.c
	if served {
		p.backoff.Reset() // the binary works
	}
	if served && p.servedLocked(c) {
		p.recycleLocked(c, fmt.Sprintf("served %d requests", c.served))
	}
	if c.busy--; c.busy == 0 {
		c.idleSince = s.progress
		p.stopWhenIdle(c)
		if p.cfg.Mode == ModeOneShot && c.used && !c.retired && !c.dead.Load() && !p.closed {
			// Its one request is over: discard it, and start a spare.
			p.retire(c, false, CauseOneShot)
			p.wake()
		}
	}
	if s.c.dead.Load() || p.closed {
		if s.n == 0 {
			s.conn.Close()
		}
		return
	}
	for i, w := range p.waiters {
		// A slot that just finished an exchange is making progress: it may
		// take a pipelinable waiter even if it is still busy.
		if s.n > 0 && (!w.pipelinable || s.n >= p.cfg.Pipeline || s.streaming) {
			continue
		}
		p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
		p.reserve(s, w.req, w.pipelinable)
		w.ch <- s
		return
	}
	if s.n == 0 {
		p.idle = append(p.idle, s)
	}
}

// RoundTrip sends req to a worker and returns its response head. If req.EOF
// is false, the rest of the request body is read from body while the worker
// consumes it. The caller must Close the response.
//
// A request goes to an idle worker slot; when there is none, a complete
// request may be pipelined behind the exchange of a busy slot (up to
// Config.Pipeline outstanding), and runs as soon as the one before it ends.
// The request timeout counts from the moment a worker takes the request.
// Waiting for a worker is bounded by ctx only.
//
// A request that a worker died without reading is sent to another one (up
// to maxAttempts in all). A streamed body is sent again too when the worker
// acknowledges request heads (ipc.FeatureHeadAck): body is wrapped in an
// *ipc.Replay (unless it is one), which keeps what was read of it until
// the worker acknowledges the request.
func (p *Pool) RoundTrip(ctx context.Context, req *ipc.Request, body io.Reader) (*Response, error) {
	rp, own := replayOf(req, body)
	if own {
		body = rp
	}
	resp, err := p.roundTrip(ctx, req, body, rp)
	if err != nil && own {
		rp.Close()
	}
	return resp, err
}

// replayOf returns body as an *ipc.Replay if the request's body is
// streamed (nil otherwise), and whether it wrapped body in a new one.
func replayOf(req *ipc.Request, body io.Reader) (*ipc.Replay, bool) {
	if req.EOF || body == nil {
		return nil, false
	}
	if rp, ok := body.(*ipc.Replay); ok {
		return rp, false
	}
	return ipc.NewReplay(body), true
}

// errNoReplay reports a streamed body that cannot be sent again; RoundTrip
// never meets it unless a caller passes a Replay that already went to a
// worker.
var errNoReplay = errors.New("workers: the request body was already sent to a worker and cannot be sent again")

func (p *Pool) roundTrip(ctx context.Context, req *ipc.Request, body io.Reader, rp *ipc.Replay) (*Response, error) {
	var err error
	pipelinable := req.EOF
	for attempt := range maxAttempts {
		if attempt > 0 && ctx.Err() != nil {
			// The client left, or its body went over the limit: no retry.
			return nil, ctx.Err()
		}
		if rp != nil && !rp.Rewind() {
			if err == nil {
				err = errNoReplay
			}
			return nil, err
		}
		var s *slot
		if s, err = p.acquire(ctx, req, pipelinable); err != nil {
			return nil, err
		}
		var resp *Response
		if resp, err = p.exchange(ctx, s, req, body); err == nil {
			resp.replay = rp
			return resp, nil
		}
		if !errors.Is(err, ipc.ErrNotDelivered) {
			return nil, err
		}
		// It may have been queued behind a request that killed its worker:
		// the retry waits for an idle slot, where only the worker's own
		// death can stop it.
		pipelinable = false
		p.log.WithError(err).WithFields(logrus.Fields{"pid": s.c.proc.PID(), "req_id": req.RequestID, "streamed": !req.EOF}).Debug("request did not reach its worker; retrying on another")
	}
	return nil, fmt.Errorf("%w: %w", ErrNoWorker, err)
}

// Response is a worker's response. Its body is read with Next.
type Response struct {
	Status    int
	Header    http.Header
	PID       int  // the worker that answered
	Streaming bool // the worker flushed or sent a large body: flush each chunk

	t         ipc.Ticket
	s         *slot
	p         *Pool
	body      *ipc.Body
	replay    *ipc.Replay // the streamed request body, closed with the exchange
	stop      func() bool
	interrupt sync.WaitGroup
	cancelled atomic.Bool
	done      bool
	err       error
}

func (p *Pool) exchange(ctx context.Context, s *slot, req *ipc.Request, body io.Reader) (*Response, error) {
	r := &Response{s: s, p: p, PID: s.c.proc.PID()}
	conn, t := s.conn, &r.t
	req.Timeout = p.cfg.Timeout
	if conn.Idle() {
		if err := conn.CheckIdle(); err != nil {
			return nil, r.fail(err) // junk written while idle: try another worker
		}
		// The write is bounded by this exchange's deadline; a queued one is
		// bounded by the running exchange's.
		_ = conn.SetDeadline(time.Now().Add(p.cfg.Timeout))
	}
	if err := conn.Send(t, req, body); err != nil {
		return nil, r.fail(err)
	}
	if turn := t.Turn(); turn != nil {
		select {
		case <-turn:
		case <-ctx.Done():
			// The worker skips a queued request it is told to cancel; its
			// abort is read when its turn comes.
			r.done, r.err = true, ctx.Err()
			_ = t.Cancel()
			p.cancelExchange(r)
			return nil, ctx.Err()
		}
		_ = conn.SetDeadline(time.Now().Add(p.cfg.Timeout))
	}
	if ctx.Done() != nil {
		r.interrupt.Add(1)
		r.stop = context.AfterFunc(ctx, func() {
			defer r.interrupt.Done()
			r.cancelled.Store(true)
			t.Interrupt()
		})
	}
	head, rb, err := t.Head()
	if err != nil {
		return nil, r.fail(err)
	}
	r.Status, r.Header, r.Streaming, r.body = head.Status, head.Header, !head.EOF, rb
	return r, nil
}

// Next returns the next chunk of the body, valid until the next call, or
// io.EOF after the last one. Any other error has already been dealt with
// (the worker killed or the exchange cancelled) and is typed like
// RoundTrip's.
func (r *Response) Next() ([]byte, error) {
	if r.done {
		if r.err != nil {
			return nil, r.err
		}
		return nil, io.EOF
	}
	b, err := r.body.Next()
	if err == io.EOF {
		r.finish()
		return nil, io.EOF
	}
	if err != nil {
		return nil, r.fail(err)
	}
	if r.Streaming {
		// A stream (server-sent events, a long download) lives as long as it
		// makes progress: Timeout bounds each wait for the next chunk.
		r.t.Extend(time.Now().Add(r.p.cfg.Timeout))
	}
	return b, nil
}

// Trailer returns the response trailers, valid after Next returned io.EOF.
func (r *Response) Trailer() http.Header { return r.t.Trailer() }

// Close ends the exchange. If the body was not read to the end (the client
// went away), the worker is told to cancel the handler and the rest of its
// response is discarded.
func (r *Response) Close() {
	if r.done {
		return
	}
	r.done = true
	r.err = context.Canceled
	r.stopInterrupt()
	_ = r.t.Cancel()
	r.replay.Close()
	r.p.cancelExchange(r)
}

func (r *Response) stopInterrupt() {
	if r.stop != nil && r.stop() {
		r.interrupt.Done()
	}
	r.interrupt.Wait()
}

// finish completes a fully read exchange and hands its slot on.
func (r *Response) finish() {
	r.done = true
	r.stopInterrupt()
	r.replay.Close()
	r.p.release(r.s, true)
}

// fail classifies a failed exchange and disposes of its worker or slot.
func (r *Response) fail(err error) error {
	r.done = true
	r.stopInterrupt()
	r.replay.Close()
	p, s, c := r.p, r.s, r.s.c
	var abort *ipc.AbortError
	switch {
	case errors.Is(err, ipc.ErrNotDelivered):
		var pe *ipc.ProtocolError
		if errors.As(err, &pe) {
			c.kill(CauseProtocol, "protocol violation: "+pe.Reason)
		} else {
			c.kill(CauseBroken, "died before reading a request")
		}
		p.discard(s, &r.t, err)
	case errors.Is(err, os.ErrDeadlineExceeded) && r.cancelled.Load() && s.conn.Err() == nil:
		err = context.Canceled
		_ = r.t.Cancel()
		p.cancelExchange(r)
		return err
	case errors.Is(err, os.ErrDeadlineExceeded) && r.cancelled.Load():
		// The exchange was interrupted (its client left, or its body went
		// over the limit) on a connection that had already failed: the
		// worker cannot be told. It goes. (A deadline alone, even inside a
		// frame, leaves the connection usable: the case above.)
		c.kill(CauseBroken, "exchange interrupted on a broken connection")
		p.discard(s, &r.t, err)
		err = context.Canceled
	case errors.Is(err, os.ErrDeadlineExceeded):
		p.quarantine(c, CauseTimeout, "request timed out")
		err = &TimeoutError{Path: p.cfg.Path, PID: c.proc.PID(), Timeout: p.cfg.Timeout}
		p.discard(s, &r.t, err)
	case errors.As(err, &abort) && s.conn.Err() == nil:
	default:
		err = p.crashed(c, err)
		p.discard(s, &r.t, err)
	}
	r.err = err
	p.done(s)
	return err
}

// discard gives up on the connection of s once its worker is dead, telling
// the requests queued on it whether they can be retried. Only the exchange
// holding the connection's turn does it (t.Holds): another one whose send
// failed leaves it to the holder, which may still be reading.
func (p *Pool) discard(s *slot, t *ipc.Ticket, cause error) {
	if !t.Holds() {
		return
	}
	select {
	case <-s.c.proc.Exited():
		s.conn.Discard(cause)
	default:
		go func() {
			<-s.c.proc.Exited()
			s.conn.Discard(cause)
		}()
	}
}

// crashed builds the error of a worker that died or broke the protocol
// during a request, making sure it is dead and reaped first.
func (p *Pool) crashed(c *child, err error) error {
	var pe *ipc.ProtocolError
	if errors.As(err, &pe) {
		c.kill(CauseProtocol, "protocol violation: "+pe.Reason)
	}
	c.dead.Store(true)
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-c.proc.Exited():
	case <-t.C:
		c.kill(CauseProtocol, "closed its connection but did not exit")
		<-c.proc.Exited()
	}
	if c.outOfMemory() {
		err = fmt.Errorf("%w (%w)", ErrOutOfMemory, err)
	}
	return &ExitError{
		Path:   p.cfg.Path,
		PID:    c.proc.PID(),
		State:  c.proc.ExitState(),
		Stderr: c.proc.StderrTail(100 * time.Millisecond),
		Err:    err,
	}
}

// cancelExchange discards the rest of r's exchange in the background, after
// the worker was told to cancel it (and, if it is queued, once its turn
// comes). The slot is handed on if the handler finishes within CancelGrace;
// otherwise the worker is killed.
func (p *Pool) cancelExchange(r *Response) {
	p.mu.Lock()
	if p.closed {
		// Close stops every worker; nothing to hand the slot back to.
		p.mu.Unlock()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		s, t := r.s, &r.t
		if turn := t.Turn(); turn != nil {
			select {
			case <-turn:
			case <-p.ctx.Done():
				return // Close stops every worker
			}
		}
		_ = s.conn.SetDeadline(time.Now().Add(p.cfg.CancelGrace))
		if err := t.Drain(); err != nil && !errors.Is(err, ipc.ErrNotDelivered) {
			if !s.c.dead.Load() {
				reason := fmt.Sprintf("handler did not return within %s of its client going away", p.cfg.CancelGrace)
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					reason = "draining a cancelled exchange failed: " + err.Error()
				}
				p.quarantine(s.c, CauseQuarantined, reason)
			}
			p.discard(s, t, err)
		}
		p.done(s)
	}()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
