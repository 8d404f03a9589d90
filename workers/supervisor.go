package workers

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/internal/procstatus"
	"github.com/sirupsen/logrus"
)

// supervisor starts the workers a pool's mode calls for, watches them, and
// replaces or retires them: restarts back off while the binary keeps dying
// before serving, the breaker stops them when the binary is broken, idle
// workers are reaped (ModeOnDemand), health-pinged and recycled.
type supervisor struct {
	cfg   Config
	log   *logrus.Entry
	obs   Observer
	adm   *admission
	start func(StartSpec) (Process, error)
	pool  *Pool // its wait group and context

	kick  chan struct{} // demand or supply changed
	exits chan *worker

	// room is how many more workers may start now (MaxWorkers less those
	// that count), as of the last scale: admission reads it.
	room atomic.Int32
	// refuseUntil is when the open breaker stops refusing requests; nil
	// while it is closed.
	refuseUntil atomic.Pointer[time.Time]

	mu        sync.Mutex
	workers   map[*worker]struct{} // started, until their exit is handled
	starting  int                  // starts in flight
	notBefore time.Time            // Backoff's delay of the next start
	backoff   Backoff
	breaker   *Breaker
	exitLog   [keptExits]ExitRecord // ring of the latest exits
	exitNext  int
}

// counts reports whether w counts against MaxWorkers: in rotation, or
// retired and finishing its requests.
func (w *worker) counts() bool {
	if w.inRotation() {
		return true
	}
	return w.state.Load() == stateRetired && !w.hardKilled.Load() && !w.exitedNow()
}

// wake tells the supervisor that demand or supply changed.
func (s *supervisor) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// refusing is admission's view of the breaker: the error of a request
// refused while it is open, or nil.
func (s *supervisor) refusing(now time.Time) error {
	until := s.refuseUntil.Load()
	if until == nil || !now.Before(*until) {
		return nil
	}
	return quarantinedError(*until, now)
}

func quarantinedError(until, now time.Time) error {
	return &OverloadError{
		Reason:     fmt.Sprintf("the worker binary is quarantined, until %s", until.UTC().Format(time.RFC3339)),
		RetryAfter: max(until.Sub(now).Round(time.Second), time.Second),
	}
}

// canGrow reports whether a worker could start now for a waiting request.
func (s *supervisor) canGrow() bool {
	return s.cfg.Mode != ModePool && s.room.Load() > 0 && s.refuseUntil.Load() == nil
}

// run starts workers as the mode needs them: replacements in ModePool, one
// per waiting request (up to MaxWorkers) in ModeOnDemand, and spares in
// ModeOneShot. In ModeOnDemand it also stops workers idle for longer than
// IdleTimeout.
func (s *supervisor) run(ctx context.Context) {
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
	if s.cfg.Mode == ModeOnDemand {
		reap = every(s.cfg.IdleTimeout / 4)
	}
	if s.cfg.PingInterval > 0 {
		ping = every(s.cfg.PingInterval / 2)
	}
	if s.cfg.MaxRSS > 0 {
		rss = every(s.cfg.RSSInterval)
	}
	fold := every(s.cfg.Breaker.Window / breakerBuckets)
	for {
		if wait := s.scale(); wait > 0 {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return
		case w := <-s.exits:
			s.exited(w)
		case <-s.kick:
		case <-timer.C:
		case <-fold:
			s.mu.Lock()
			s.foldServedLocked(time.Now())
			s.mu.Unlock()
		case <-reap:
			s.reapIdle()
		case <-ping:
			s.pingIdle()
		case <-rss:
			s.checkRSS()
		}
	}
}

// foldServedLocked gives the breaker and the backoff the requests served
// since the last fold: the binary works.
func (s *supervisor) foldServedLocked(now time.Time) {
	if n := s.adm.served.Swap(0); n > 0 {
		s.breaker.Served(now, int(n))
		s.backoff.Reset()
	}
}

// exited handles a worker's exit: its record, and what it says about the
// binary (Backoff, Breaker).
func (s *supervisor) exited(w *worker) {
	now := time.Now()
	lived := now.Sub(w.started)
	s.adm.forget(w)
	s.mu.Lock()
	// Removed here, with the backoff updated in the same step, so that no
	// start sneaks in before the delay is known.
	delete(s.workers, w)
	note, retired := w.note.Load(), w.retired.Load()
	var delay time.Duration
	switch {
	case note != nil:
		s.recordExitLocked(w, note.cause, note.text, now)
	case retired != nil:
		s.recordExitLocked(w, retired.cause, "retired: "+retired.text, now)
	case w.proc.OutOfMemory():
		s.recordExitLocked(w, CauseOutOfMemory, "over its memory limit", now)
	default:
		s.recordExitLocked(w, CauseCrashed, describeExit(w.proc.ExitState()), now)
	}
	opened := false
	if note != nil || retired == nil {
		s.foldServedLocked(now)
		if w.used.Load() {
			// Killed by a request (a crash, a timeout, a protocol
			// violation): replaced at once, and counted against the
			// binary only as a share of its requests.
			opened = s.breaker.Killed(now)
		} else {
			// Dead before serving anything: a binary that cannot stay up
			// backs off.
			delay = s.backoff.Exited(lived)
			s.notBefore = now.Add(delay)
			opened = s.breaker.StartFailed(now)
		}
	}
	s.mu.Unlock()
	if opened {
		s.opened(now)
	}
	switch {
	case note == nil && retired != nil:
		s.log.WithFields(logrus.Fields{"pid": w.proc.PID(), "uptime": lived.Round(time.Millisecond).String(), "why": retired.text}).Debug("worker retired")
	default:
		s.logExit(w, note, lived, delay)
	}
}

func (s *supervisor) logExit(w *worker, note *exitNote, lived, delay time.Duration) {
	// The requests that saw it die report it, with what it wrote: named
	// here before they finish.
	reqs := s.adm.requestsOf(w)
	var tail []string
	if note == nil || note.cause == CauseTimeout || note.cause == CauseQuarantined {
		// Its last words (a goroutine dump after SIGQUIT) come first.
		tail = w.proc.StderrTail(time.Time{}, 100*time.Millisecond)
	}
	f := logrus.Fields{
		"pid":    w.proc.PID(),
		"exit":   describeExit(w.proc.ExitState()),
		"uptime": lived.Round(time.Millisecond).String(),
	}
	if delay > 0 {
		f["restart_in"] = delay.String()
	}
	if len(reqs) > 0 && note != nil {
		f["req_id"] = strings.Join(reqs, ",")
	}
	switch {
	case note != nil && note.text != "":
		f["reason"] = note.text
		s.log.WithFields(f).Warn("worker killed; replacing it")
	case w.proc.OutOfMemory():
		f["reason"] = "out of memory"
		s.log.WithFields(f).Warn("worker killed: out of memory (over its memory limit); replacing it")
	default:
		if len(reqs) > 0 {
			f["req_id"] = strings.Join(reqs, ",") // their entries have what it wrote
		} else if len(tail) > 0 {
			f["stderr"] = strings.Join(tail, "\n")
		}
		s.log.WithFields(f).Warn("worker exited unexpectedly; replacing it")
	}
}

// recordExitLocked keeps w's exit in the pool's recent exits and reports it.
func (s *supervisor) recordExitLocked(w *worker, cause Cause, reason string, now time.Time) {
	s.exitLog[s.exitNext] = ExitRecord{PID: w.proc.PID(), Cause: cause, Reason: reason, At: now, Uptime: now.Sub(w.started)}
	s.exitNext = (s.exitNext + 1) % keptExits
	s.obs.WorkerExited(cause)
}

// opened acts on the breaker having opened: requests waiting for a worker
// are refused, and so are the next ones that find none, until the breaker's
// period ends.
func (s *supervisor) opened(now time.Time) {
	s.mu.Lock()
	st := s.breaker.State()
	s.mu.Unlock()
	until := st.Until
	s.refuseUntil.Store(&until)
	s.log.WithFields(logrus.Fields{"why": st.Why, "until": until.Format(time.RFC3339), "backoff": until.Sub(now).Round(time.Millisecond).String()}).
		Error("worker binary quarantined: breaker open, no worker starts and requests that find none are refused until then")
	s.obs.BreakerChanged(true)
	s.adm.refuseWaiting(quarantinedError(until, now))
}

// scale starts the workers the mode calls for, if the backoff and the
// breaker allow, retires the recycled workers that need no replacement,
// and returns how long to wait before it may start more (0 if nothing
// waits).
func (s *supervisor) scale() time.Duration {
	if s.cfg.Mode != ModePool {
		for _, w := range s.recycling() {
			s.adm.retire(w, CauseRecycled, "recycled")
		}
	}
	now := time.Now()
	s.mu.Lock()
	n, room := s.deficitLocked()
	s.room.Store(int32(room))
	if n <= 0 || s.pool.isClosed() {
		s.mu.Unlock()
		return 0
	}
	ok, probe, wait := s.breaker.MayStart(now)
	switch {
	case !ok:
		s.mu.Unlock()
		return wait
	case probe:
		s.breaker.Probe()
		n = 1
		s.log.Info("worker binary quarantine over: starting a probe worker")
	case now.Before(s.notBefore):
		s.mu.Unlock()
		return s.notBefore.Sub(now)
	case s.backoff.Failures() > 1:
		n = 1 // a failing binary: one start at a time
	}
	s.starting += n
	s.room.Add(-int32(n))
	s.mu.Unlock()
	for range n {
		if !s.pool.track() {
			s.mu.Lock()
			s.starting--
			s.mu.Unlock()
			continue
		}
		go s.startOne(probe)
	}
	return 0
}

// recycling returns the workers marked for recycling.
func (s *supervisor) recycling() []*worker {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*worker
	for w := range s.workers {
		if w.state.Load() == stateRecycling {
			out = append(out, w)
		}
	}
	return out
}

// deficitLocked returns how many workers to start now, and how many more
// may start at all (MaxWorkers less the workers that count). A dead worker
// is replaced at once, whatever its process still does; a recycled one is
// replaced before it goes.
func (s *supervisor) deficitLocked() (n, room int) {
	kept, fresh, counted := 0, 0, 0
	for w := range s.workers {
		if w.counts() {
			counted++
		}
		if w.state.Load() != stateLive {
			continue
		}
		kept++
		if !w.used.Load() {
			fresh++
		}
	}
	room = s.cfg.MaxWorkers - counted - s.starting
	waiting := int(s.adm.nWaiting.Load())
	switch s.cfg.Mode {
	case ModeOnDemand:
		per := s.cfg.Concurrency
		return min((waiting+per-1)/per-s.starting, room), room
	case ModeOneShot:
		return min(waiting+s.cfg.Spares-fresh-s.starting, room), room
	}
	return s.cfg.Size - kept - s.starting, room
}

// startOne starts one worker, the breaker's probe if probe is set. A
// failure delays the next start; when no worker is left to serve them, the
// waiting requests get the start error.
func (s *supervisor) startOne(probe bool) {
	defer s.pool.wg.Done()
	t0 := time.Now()
	spec, bound := s.startSpec()
	proc, err := s.start(spec)
	s.obs.WorkerStarted(time.Since(t0), err)
	now := time.Now()
	s.mu.Lock()
	s.starting--
	if err != nil {
		delay := s.backoff.Failed()
		s.notBefore = now.Add(delay)
		failures := s.backoff.Failures()
		// A start that began before the breaker opened says nothing the
		// breaker does not know; the probe's failure opens it again.
		opened := false
		if st := s.breaker.State(); !st.Open || probe {
			opened = s.breaker.StartFailed(now)
		}
		orphaned := s.starting == 0 && s.liveLocked() == 0
		s.mu.Unlock()
		if opened {
			s.opened(now)
		}
		waiting := int(s.adm.nWaiting.Load())
		if orphaned {
			s.adm.refuseWaiting(err)
		}
		s.log.WithError(err).WithFields(logrus.Fields{
			"failures": failures, "retry_in": delay.String(), "requests_failed": waiting * boolInt(orphaned),
		}).Error("worker failed to start")
		s.wake()
		return
	}
	w := newWorker(proc, jittered(s.cfg.MaxRequests), now)
	bound.Store(w)
	if st := s.breaker.State(); st.Open && !probe {
		// It began starting before the breaker opened: no worker joins
		// until the probe does (which may still be starting).
		s.mu.Unlock()
		proc.Kill()
		s.log.WithField("pid", proc.PID()).Debug("worker started as the breaker opened: discarded")
		return
	}
	if s.pool.isClosed() || !s.pool.track() {
		s.mu.Unlock()
		proc.Kill()
		return
	}
	s.workers[w] = struct{}{}
	if s.breaker.Started(now) {
		s.refuseUntil.Store(nil)
		s.obs.BreakerChanged(false)
		s.log.Warn("worker binary out of quarantine: the probe worker started; breaker closed")
	}
	var replaced *worker
	if s.cfg.Mode == ModePool {
		for r := range s.workers {
			if r.state.Load() == stateRecycling {
				replaced = r
				break
			}
		}
	}
	s.mu.Unlock()
	go s.watch(w)
	s.log.WithFields(logrus.Fields{"pid": proc.PID(), "start_ms": ms(now.Sub(t0))}).Debug("worker started")
	if replaced != nil {
		s.adm.retire(replaced, CauseRecycled, "replaced")
	}
	s.adm.add(w)
	s.wake()
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// liveLocked counts the workers in rotation.
func (s *supervisor) liveLocked() int {
	n := 0
	for w := range s.workers {
		if w.inRotation() {
			n++
		}
	}
	return n
}

// watch waits for a worker's exit and reports it to run.
func (s *supervisor) watch(w *worker) {
	defer s.pool.wg.Done()
	select {
	case <-w.proc.Exited():
	case <-s.pool.ctx.Done():
		return
	}
	w.gone()
	s.adm.drop(w)
	select {
	case s.exits <- w:
	case <-s.pool.ctx.Done():
	}
}

// startSpec returns what a worker start asks for. Its Requests hook names
// the worker's requests once bound holds the worker.
func (s *supervisor) startSpec() (StartSpec, *atomic.Pointer[worker]) {
	bound := new(atomic.Pointer[worker])
	return StartSpec{
		Slots: s.cfg.Concurrency, Depth: s.cfg.Pipeline, MaxFrame: s.cfg.MaxFrame, Timeout: s.cfg.StartTimeout,
		LogLines: s.cfg.LogLines, LogBytes: s.cfg.LogBytes, LogDropped: s.obs.LogDropped,
		Requests: func() []string {
			if w := bound.Load(); w != nil {
				return s.adm.requestsOf(w)
			}
			return nil
		},
	}, bound
}

// quarantine takes a worker out of rotation at once because it hung or
// misbehaved, and replaces it. A Go worker is sent SIGQUIT first, so that
// its goroutine stacks land in the log; the whole worker is killed after
// QuarantineGrace.
func (s *supervisor) quarantine(w *worker, cause Cause, reason string) {
	if !w.markDead(cause, reason) {
		return // already on its way out
	}
	s.adm.drop(w)
	s.wake()
	f := logrus.Fields{"pid": w.proc.PID(), "reason": reason}
	if id := w.blame.Load(); id != nil {
		f["req_id"] = *id
	}
	s.log.WithFields(f).Warn("worker quarantined: sending SIGQUIT for its goroutine dump, then killing it")
	_ = w.proc.Signal(syscall.SIGQUIT)
	if !s.pool.track() {
		w.proc.Kill()
		return
	}
	go func() {
		defer s.pool.wg.Done()
		t := time.NewTimer(s.cfg.QuarantineGrace)
		defer t.Stop()
		select {
		case <-w.proc.Exited():
		case <-t.C:
		case <-s.pool.ctx.Done():
		}
		w.hardKilled.Store(true)
		w.proc.Kill()
	}()
}

// stopIdle stops a retired worker that has nothing outstanding, once:
// gracefully, killed after StopTimeout.
func (s *supervisor) stopIdle(w *worker) {
	w.stop.Do(func() {
		if !s.pool.track() {
			return // Close stops it
		}
		go func() {
			defer s.pool.wg.Done()
			ctx, cancel := context.WithTimeout(s.pool.ctx, s.cfg.StopTimeout)
			defer cancel()
			if w.proc.Stop(ctx) != nil {
				w.hardKilled.Store(true)
			}
		}()
	})
}

// recycled is told by admission that w reached MaxRequests; scale starts
// its replacement, or retires it where none is needed.
func (s *supervisor) recycled(w *worker, why string) {
	s.log.WithFields(logrus.Fields{"pid": w.proc.PID(), "why": why}).Info("recycling worker: starting its replacement")
	s.wake()
}

// reapIdle stops the workers idle for longer than IdleTimeout.
func (s *supervisor) reapIdle() {
	now := time.Now()
	for _, w := range s.adm.takeIdle(func(w *worker, since time.Time) bool { return now.Sub(since) >= s.cfg.IdleTimeout }) {
		if w.retire(CauseIdle, "idle for "+s.cfg.IdleTimeout.String()) {
			s.log.WithFields(logrus.Fields{"pid": w.proc.PID(), "idle": s.cfg.IdleTimeout.String()}).Debug("stopping an idle worker")
			s.stopIdle(w)
		}
	}
}

// pingIdle checks the health of idle slots unused for a PingInterval: each
// is taken out of rotation, pinged within PingTimeout and put back. A
// worker that does not answer is quarantined.
func (s *supervisor) pingIdle() {
	for _, sl := range s.adm.takeForPing(time.Now(), s.cfg.PingInterval) {
		if !s.pool.track() {
			s.adm.releasePing(sl)
			continue
		}
		go func() {
			defer s.pool.wg.Done()
			_ = sl.conn.SetDeadline(time.Now().Add(s.cfg.PingTimeout))
			if err := sl.conn.Ping(); err != nil && !sl.w.out() {
				s.quarantine(sl.w, CauseQuarantined, fmt.Sprintf("no answer to a health ping within %s: %v", s.cfg.PingTimeout, err))
			}
			s.adm.releasePing(sl)
		}()
	}
}

// checkRSS recycles the workers whose resident memory exceeds MaxRSS.
func (s *supervisor) checkRSS() {
	s.mu.Lock()
	ws := make([]*worker, 0, len(s.workers))
	for w := range s.workers {
		if w.state.Load() == stateLive {
			ws = append(ws, w)
		}
	}
	s.mu.Unlock()
	for _, w := range ws {
		rss, err := residentBytes(w.proc.PID())
		if err != nil {
			continue // it is exiting
		}
		if rss > s.cfg.MaxRSS && w.recycle() {
			s.recycled(w, fmt.Sprintf("resident memory %d MiB over the limit of %d MiB", rss>>20, s.cfg.MaxRSS>>20))
		}
	}
}

// all returns the workers started and not yet exited.
func (s *supervisor) all() []*worker {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*worker, 0, len(s.workers))
	for w := range s.workers {
		out = append(out, w)
	}
	return out
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
