// Package workers runs the processes of one function: it spawns them,
// hands each request to a worker slot, supervises them, and restarts the
// ones that die. It owns process policy (how many, when to restart, when
// to kill); package ipc owns the wire protocol and the go-plugin glue.
//
// A Pool is three parts around the workers it runs:
//   - admission (admission.go) hands requests to slots: idle slots,
//     requests waiting for one, requests parked in line on a busy slot
//     (pipelining), the queue's bound and timeout, and the withdrawal of
//     requests from stalled slots;
//   - the supervisor (supervisor.go) starts, watches, replaces, retires and
//     quarantines workers, with the restart Backoff and the binary's
//     Breaker, both pure types;
//   - the exchange (exchange.go) runs one request on a slot and classifies
//     how it ended.
//
// A Pool follows a Start/Close lifecycle. Every request goes through
// RoundTrip; its failures come back as typed errors (*ExitError,
// *TimeoutError, *OverloadError, ErrClosed) that the caller maps to HTTP
// statuses. A request that never reached a handler (its worker died while
// idle, wrote junk, or gave it back) is retried on another worker.
package workers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/sirupsen/logrus"
)

// Pool runs the worker processes of one function.
type Pool struct {
	cfg Config
	log *logrus.Entry
	adm *admission
	sup *supervisor

	ctx       context.Context
	cancel    context.CancelFunc
	socketDir string

	mu     sync.Mutex // guards closed and wg.Add: a leaf lock
	closed bool
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

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
	p := &Pool{cfg: cfg, log: cfg.Logger.WithField("worker", filepath.Base(cfg.Path))}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.adm = &admission{
		queue: cfg.Queue, queueTimeout: cfg.QueueTimeout, pipeline: cfg.Pipeline,
		oneshot: cfg.Mode == ModeOneShot, stall: stall, log: p.log, obs: obs,
	}
	p.sup = &supervisor{
		cfg: cfg, log: p.log, obs: obs, adm: p.adm, pool: p,
		kick: make(chan struct{}, 1), exits: make(chan *worker, 64),
		workers: make(map[*worker]struct{}), backoff: cfg.Backoff, breaker: NewBreaker(cfg.Breaker),
	}
	p.sup.start = cfg.Start
	if p.sup.start == nil {
		p.sup.start = p.startChild
	}
	p.adm.wake, p.adm.refusing, p.adm.canGrow = p.sup.wake, p.sup.refusing, p.sup.canGrow
	p.adm.stopIdle, p.adm.recycled = p.sup.stopIdle, p.sup.recycled
	return p, nil
}

// track counts a goroutine of the pool's in its wait group, unless the
// pool is closed (then it reports false and the goroutine must not run).
func (p *Pool) track() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	return true
}

func (p *Pool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// Start makes the pool's socket directory, starts the workers the mode
// begins with (Config.Size in ModePool, the spares in ModeOneShot) and
// waits for their handshakes. If any fails to start, Start stops the others
// and returns its error (a *launch.StartError for a worker that would not
// start).
func (p *Pool) Start(ctx context.Context) error {
	if p.cfg.Start == nil {
		dir, err := os.MkdirTemp(p.cfg.SocketDir, "dispatcher-")
		if err != nil {
			return fmt.Errorf("workers: socket directory: %w", err)
		}
		// go-plugin adds "/plugin-dirNNNNNNNNNN/pluginNNNNNNNNNN" (at most
		// 38 bytes) and a unix socket path holds at most 107.
		if len(dir)+38 > 107 {
			os.Remove(dir)
			return fmt.Errorf("workers: socket directory %q is too long for unix socket paths; use a shorter SocketDir or TMPDIR", p.cfg.SocketDir)
		}
		p.socketDir = dir
	}
	initial := p.cfg.Size
	switch p.cfg.Mode {
	case ModeOnDemand:
		initial = 0
	case ModeOneShot:
		initial = min(p.cfg.Spares, p.cfg.MaxWorkers)
	}
	type started struct {
		proc  Process
		bound *atomic.Pointer[worker]
		err   error
		took  time.Duration
	}
	results := make(chan started, initial)
	for range initial {
		go func() {
			t0 := time.Now()
			spec, bound := p.sup.startSpec()
			proc, err := p.sup.start(spec)
			results <- started{proc, bound, err, time.Since(t0)}
		}()
	}
	var first error
	var procs []started
	for range initial {
		r := <-results
		p.sup.obs.WorkerStarted(r.took, r.err)
		if r.err != nil && first == nil {
			first = r.err
		}
		if r.err == nil {
			procs = append(procs, r)
		}
	}
	if first == nil {
		first = ctx.Err()
	}
	if first != nil {
		for _, r := range procs {
			r.proc.Kill()
		}
		_ = p.Close(ctx)
		return first
	}
	now := time.Now()
	for _, r := range procs {
		w := newWorker(r.proc, jittered(p.cfg.MaxRequests), now)
		r.bound.Store(w)
		p.sup.mu.Lock()
		p.sup.workers[w] = struct{}{}
		p.sup.mu.Unlock()
		p.wg.Add(1)
		go p.sup.watch(w)
		p.sup.log.WithFields(logrus.Fields{"pid": r.proc.PID(), "start_ms": ms(r.took)}).Debug("worker started")
		p.adm.add(w)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.sup.run(p.ctx)
	}()
	return nil
}

// startChild starts one worker of the binary at Config.Path, making the
// pool's socket directory again if a temporary-file cleaner removed it
// under a long-running dispatcher.
func (p *Pool) startChild(spec StartSpec) (Process, error) {
	if err := os.Mkdir(p.socketDir, 0o700); err == nil {
		p.log.WithField("dir", p.socketDir).Warn("the workers' socket directory had been removed; made it again")
	} else if !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("workers: socket directory %s: %w", p.socketDir, err)
	}
	return p.cfg.startChild(spec, p.socketDir)
}

// Close stops accepting requests and stops every worker: gracefully, and
// killed when ctx is done or Config.StopTimeout passed; it then waits at
// most StopGrace more for the killed ones. It removes the pool's socket
// directory. Later calls return the first result.
func (p *Pool) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.adm.close()
		p.cancel()
		ws := p.sup.all()
		stopCtx, cancel := context.WithTimeout(ctx, p.cfg.StopTimeout)
		defer cancel()
		var wg sync.WaitGroup
		var killed, unreaped atomic.Int32
		for _, w := range ws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.gone()
				err := w.proc.Stop(stopCtx)
				switch {
				case errors.Is(err, launch.ErrUnreaped):
					unreaped.Add(1)
				case err != nil:
					killed.Add(1)
				}
				for _, s := range w.slots {
					s.conn.Close()
				}
			}()
		}
		wg.Wait()
		p.wg.Wait()
		if p.socketDir != "" {
			if err := os.RemoveAll(p.socketDir); err != nil {
				p.closeErr = fmt.Errorf("workers: remove socket directory: %w", err)
			}
		}
		switch {
		case unreaped.Load() > 0:
			p.closeErr = errors.Join(p.closeErr, fmt.Errorf("workers: %d worker(s) still not reaped %s after SIGKILL", unreaped.Load(), launch.KillWait))
		case killed.Load() > 0 && p.closeErr == nil:
			p.closeErr = fmt.Errorf("workers: %d worker(s) killed after the stop timeout", killed.Load())
		}
	})
	return p.closeErr
}

// StopGrace is how much longer than its stop timeout Close may take: the
// wait for killed workers to be reaped.
const StopGrace = launch.KillWait

// Drain stops giving the pool new requests (they get ErrClosed), lets the
// requests it has, running or waiting, finish, and then closes it. When
// ctx is done first, Close stops the workers with what they still run.
func (p *Pool) Drain(ctx context.Context) error {
	p.adm.drain()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for p.adm.inFlight() > 0 {
		select {
		case <-ctx.Done():
			p.log.WithField("in_flight", p.adm.inFlight()).Warn("drain timed out: stopping workers that still serve requests")
			return p.Close(context.Background())
		case <-tick.C:
		}
	}
	return p.Close(ctx)
}

// Workers returns the pids of the workers in rotation.
func (p *Pool) Workers() []int {
	var pids []int
	for _, w := range p.sup.all() {
		if w.inRotation() {
			pids = append(pids, w.proc.PID())
		}
	}
	return pids
}
