package workers

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/sirupsen/logrus"
)

// stall is how long a busy slot may go without finishing an exchange and
// still be given more requests to queue: pipelining is for fast handlers.
// A request queued on a slot that then stalls that long is withdrawn
// (FeatureWithdraw) as soon as another slot is free or a worker could
// start, so that it never waits behind a slow request much longer than
// this while the function has room.
const stall = 5 * time.Millisecond

// admission hands requests to worker slots. A request admitted and not yet
// running in a worker is an entry: waiting for a slot, or parked in line
// on a busy slot behind the exchanges before it (pipelining). Config.Queue
// bounds the entries and Config.QueueTimeout the time each may stay one.
// It owns the slots' reservations; the supervisor owns the workers.
type admission struct {
	queue        int
	queueTimeout time.Duration
	pipeline     int
	oneshot      bool
	stall        time.Duration // the package's stall; tests change it
	log          *logrus.Entry
	obs          Observer

	// Set by the pool; none is called with mu held by the callee's own
	// lock, so they may not take admission's.
	wake     func()                // demand or supply changed
	refusing func(time.Time) error // the breaker refuses requests that find no slot, or nil
	canGrow  func() bool           // a worker could be started now
	stopIdle func(*worker)         // a retired worker has nothing outstanding: stop it
	recycled func(*worker, string) // a worker reached MaxRequests

	nWaiting atomic.Int32 // len(waiting), for the supervisor
	served   atomic.Int64 // exchanges completed since the supervisor last looked

	mu       sync.Mutex
	slots    []*slot   // every slot of the workers added and not forgotten
	idle     []*slot   // slots of workers in rotation with nothing outstanding
	waiting  entryList // entries without a slot, by deadline
	parked   entryList // entries parked on a slot, by deadline
	timer    *time.Timer
	timerAt  time.Time // when the timer fires; zero if it is not armed
	closed   bool
	draining bool
	refused  int       // requests refused since the last log line about it
	loggedAt time.Time // when that line was logged
}

// entry is a request admitted and not running yet.
type entry struct {
	prev, next  *entry
	list        *entryList
	deadline    time.Time
	req         *ipc.Request
	pipelinable bool
	ch          chan *slot // the slot handed to a waiting entry, or nil with err (also once parked)
	err         error

	// Parked: the slot and the ticket of its place in line.
	s           *slot
	t           *ipc.Ticket
	sent        bool // the request went out with t: it may be withdrawn
	withdrawing bool // Withdraw was sent: the answer comes on t.Turn
	expired     bool // QueueTimeout passed: refused once withdrawn or cancelled
}

// entryList is a doubly linked list of entries in deadline order.
type entryList struct {
	head, tail *entry
	n          int
}

// insert adds e in deadline order (new entries go last).
func (l *entryList) insert(e *entry) {
	at := l.tail
	for at != nil && at.deadline.After(e.deadline) {
		at = at.prev
	}
	e.list = l
	e.prev = at
	if at == nil {
		e.next = l.head
		l.head = e
	} else {
		e.next = at.next
		at.next = e
	}
	if e.next == nil {
		l.tail = e
	} else {
		e.next.prev = e
	}
	l.n++
}

func (l *entryList) remove(e *entry) {
	if e.list != l {
		return
	}
	if e.prev == nil {
		l.head = e.next
	} else {
		e.prev.next = e.next
	}
	if e.next == nil {
		l.tail = e.prev
	} else {
		e.next.prev = e.prev
	}
	e.prev, e.next, e.list = nil, nil, nil
	l.n--
}

// admitted counts the entries: the requests Config.Queue bounds.
func (a *admission) admittedLocked() int { return a.waiting.n + a.parked.n }

// admit reserves a slot for req: an idle slot of a worker in rotation;
// else, for a request that can be pipelined (its body is complete), a
// place in line on the least loaded busy slot that is making progress;
// else it waits for either. It returns the slot and, if the request is
// parked there, its entry: the caller sends the request with t and waits
// for its turn (await). deadline is the end of the request's time in the
// queue; zero means QueueTimeout from now.
func (a *admission) admit(ctx context.Context, req *ipc.Request, pipelinable bool, t *ipc.Ticket, deadline time.Time) (*slot, *entry, error) {
	now := time.Now()
	a.mu.Lock()
	for len(a.idle) > 0 {
		s := a.idle[len(a.idle)-1]
		a.idle[len(a.idle)-1] = nil
		a.idle = a.idle[:len(a.idle)-1]
		if s.w.inRotation() && s.conn.Err() == nil {
			a.reserveLocked(s, req, pipelinable, now)
			a.mu.Unlock()
			a.obs.Admitted(0, nil)
			return s, nil, nil
		}
		s.conn.Close()
	}
	if a.closed || a.draining {
		a.mu.Unlock()
		a.obs.Admitted(0, ErrClosed)
		return nil, nil, ErrClosed
	}
	if deadline.IsZero() {
		deadline = now.Add(a.queueTimeout)
	}
	if n := a.admittedLocked(); n >= a.queue {
		err := &OverloadError{Reason: fmt.Sprintf("%d requests already wait for a worker", n), RetryAfter: time.Second}
		a.refusedLocked(err)
		a.mu.Unlock()
		a.obs.Admitted(0, err)
		return nil, nil, err
	}
	// Room for a slot and for a refusal once parked.
	e := &entry{req: req, pipelinable: pipelinable, deadline: deadline, t: t, ch: make(chan *slot, 2)}
	if pipelinable && a.pipeline > 1 {
		if s := a.pipelineSlotLocked(now); s != nil {
			a.parkLocked(e, s, now)
			a.mu.Unlock()
			a.obs.Admitted(0, nil)
			return s, e, nil
		}
	}
	if err := a.refusing(now); err != nil {
		a.mu.Unlock()
		a.obs.Admitted(0, err)
		return nil, nil, err
	}
	a.waiting.insert(e)
	a.nWaiting.Store(int32(a.waiting.n))
	a.armLocked(a.waiting.head.deadline)
	a.mu.Unlock()
	a.wake()

	select {
	case s := <-e.ch:
		a.obs.Admitted(time.Since(now), e.err)
		if s == nil {
			return nil, nil, e.err
		}
		if e.s != nil {
			return s, e, nil // parked
		}
		return s, nil, nil
	case <-ctx.Done():
	}
	err := ctx.Err()
	a.obs.Admitted(time.Since(now), err)
	a.mu.Lock()
	if e.list == &a.waiting {
		a.waiting.remove(e)
		a.nWaiting.Store(int32(a.waiting.n))
		a.mu.Unlock()
		return nil, nil, err
	}
	a.mu.Unlock()
	// A slot (or a refusal) was handed over as we gave up: pass it on.
	if s := <-e.ch; s != nil {
		if e.s != nil {
			a.unpark(e, false)
		}
		a.release(s, false)
	}
	return nil, nil, err
}

// pipelineSlotLocked returns the least loaded busy slot that may take one
// more request in line, or nil.
func (a *admission) pipelineSlotLocked(now time.Time) *slot {
	var best *slot
	for _, s := range a.slots {
		if s.n > 0 && s.n < a.pipeline && !s.streaming && now.Sub(s.progress) < a.stall && s.w.inRotation() && s.conn.Err() == nil &&
			(best == nil || s.n < best.n) {
			best = s
		}
	}
	return best
}

// requestsOf returns the request w is blamed for, or the IDs of the
// requests running on its slots.
func (a *admission) requestsOf(w *worker) []string {
	if id := w.blame.Load(); id != nil {
		return []string{*id}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var ids []string
	for _, s := range w.slots {
		if s.cur != nil && s.cur.RequestID != "" {
			ids = append(ids, s.cur.RequestID)
		}
	}
	return ids
}

// reserveLocked counts one more exchange on s.
func (a *admission) reserveLocked(s *slot, req *ipc.Request, pipelinable bool, now time.Time) {
	if s.n == 0 {
		s.progress = now
		s.cur, s.since = req, now
	}
	s.n++
	s.w.busy++
	s.w.used.Store(true)
	if !pipelinable {
		s.streaming = true
	}
}

// parkLocked reserves a place in line on busy slot s for e.
func (a *admission) parkLocked(e *entry, s *slot, now time.Time) {
	a.reserveLocked(s, e.req, true, now)
	e.s = s
	s.parked = append(s.parked, e)
	a.parked.insert(e)
	a.armLocked(a.parked.head.deadline)
	if a.canGrow() {
		a.armLocked(s.progress.Add(a.stall))
	}
}

// await waits until e, parked and sent, takes its turn on its slot, or is
// withdrawn, refused or given up. It returns nil when the ticket tells
// (its turn, or its release: see Ticket.Head); an *OverloadError if
// QueueTimeout passed and the worker could not give the request back (the
// caller cancels it); ctx's error if the client left (the caller cancels
// the exchange).
func (a *admission) await(ctx context.Context, e *entry) error {
	turn := e.t.Turn()
	if turn == nil {
		// The exchanges before it ended before it was sent: it ran at once.
		a.unpark(e, true)
		return nil
	}
	a.mu.Lock()
	e.sent = true
	a.mu.Unlock()
	var err error
	select {
	case <-turn:
	case <-e.ch:
		err = e.err
	case <-ctx.Done():
		err = ctx.Err()
	}
	a.unpark(e, err == nil)
	return err
}

// unpark takes e off the parked lists: it runs (took its turn), or is out
// of line.
func (a *admission) unpark(e *entry, runs bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.parked.remove(e)
	s := e.s
	for i, p := range s.parked {
		if p == e {
			s.parked = append(s.parked[:i], s.parked[i+1:]...)
			break
		}
	}
	if runs {
		s.cur, s.since = e.req, time.Now()
	}
}

// release ends one exchange's reservation of s and hands the slot on: to
// the first waiting entry that can use it, or to the idle slots once
// nothing is outstanding on it. served tells that the exchange completed
// (it counts towards MaxRequests). A slot whose connection broke takes its
// worker out with it.
func (a *admission) release(s *slot, served bool) { a.put(s, served, false) }

// releasePing puts back a slot taken for a health ping: a ping is no work,
// so the slot's progress and the worker's idle time stay as they were.
func (a *admission) releasePing(s *slot) { a.put(s, false, true) }

func (a *admission) put(s *slot, served, ping bool) {
	w := s.w
	if err := s.conn.Err(); err != nil && !w.out() {
		w.kill(CauseBroken, "slot connection broken: "+err.Error())
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	s.n--
	if ping {
		s.pinged = now
	} else {
		s.progress = now
		s.cur, s.since = nil, now
	}
	if s.n == 0 {
		s.streaming = false
	}
	if served {
		a.served.Add(1)
		if n := w.served.Add(1); w.maxRequests > 0 && n >= int64(w.maxRequests) && w.recycle() {
			a.recycled(w, fmt.Sprintf("served %d requests", n))
		}
	}
	if w.busy--; w.busy == 0 {
		if !ping {
			w.idleSince = now
		}
		switch {
		case w.state.Load() == stateRetired:
			a.stopIdle(w)
		case a.oneshot && w.used.Load() && w.inRotation() && !a.closed:
			// Its one request is over: discard it, and start a spare.
			w.retireNow(CauseOneShot, "its request is over")
			a.wake()
		}
	}
	if w.out() || a.closed {
		if s.n == 0 {
			s.conn.Close()
		}
		return
	}
	for e := a.waiting.head; e != nil; e = e.next {
		// A slot that just finished an exchange is making progress: it may
		// take a pipelinable request in line even if it is still busy.
		if s.n > 0 && (!e.pipelinable || s.n >= a.pipeline || s.streaming) {
			continue
		}
		a.waiting.remove(e)
		a.nWaiting.Store(int32(a.waiting.n))
		if s.n > 0 {
			a.parkLocked(e, s, now)
		} else {
			a.reserveLocked(s, e.req, e.pipelinable, now)
		}
		e.ch <- s
		return
	}
	if s.n == 0 {
		a.idle = append(a.idle, s)
		a.unblockLocked(now)
	}
}

// unblockLocked withdraws the requests parked on slots that stalled, now
// that the function has room for them elsewhere (a slot is idle, or a
// worker could start), and arms the timer for slots that may stall.
func (a *admission) unblockLocked(now time.Time) {
	if a.parked.n == 0 || (len(a.idle) == 0 && !a.canGrow()) {
		return
	}
	next := time.Time{}
	soonest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for _, s := range a.slots {
		if len(s.parked) == 0 {
			continue
		}
		if due := s.progress.Add(a.stall); now.Before(due) {
			soonest(due)
			continue
		}
		for _, e := range s.parked {
			switch {
			case !e.sent:
				soonest(now.Add(a.stall)) // being sent: look again soon
			case !e.withdrawing && !e.expired && e.t.Withdraw():
				e.withdrawing = true
			}
		}
	}
	if !next.IsZero() {
		a.armLocked(next)
	}
}

// armLocked makes sure the timer fires by at.
func (a *admission) armLocked(at time.Time) {
	if !a.timerAt.IsZero() && !at.Before(a.timerAt) {
		return
	}
	a.timerAt = at
	if a.timer == nil {
		a.timer = time.AfterFunc(time.Until(at), a.tick)
	} else {
		a.timer.Reset(time.Until(at))
	}
}

// tick refuses the entries whose QueueTimeout passed, withdraws requests
// from stalled slots, and arms the timer for what comes next.
func (a *admission) tick() {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.timerAt = time.Time{}
	if a.closed {
		return
	}
	for e := a.waiting.head; e != nil && !e.deadline.After(now); e = a.waiting.head {
		a.waiting.remove(e)
		e.err = a.timedOutLocked()
		e.ch <- nil
	}
	a.nWaiting.Store(int32(a.waiting.n))
	for e := a.parked.head; e != nil && !e.deadline.After(now); e = e.next {
		if e.expired {
			continue
		}
		e.expired = true
		if e.sent && !e.withdrawing && e.t.Withdraw() {
			e.withdrawing = true // refused once the worker gives it back
			continue
		}
		if !e.withdrawing {
			e.err = a.timedOutLocked()
			select {
			case e.ch <- nil:
			default: // its goroutine has been told already
			}
		}
	}
	a.unblockLocked(now)
	if e := a.waiting.head; e != nil {
		a.armLocked(e.deadline)
	}
	for e := a.parked.head; e != nil; e = e.next {
		if !e.expired {
			a.armLocked(e.deadline)
			break
		}
	}
}

// timedOutLocked counts and returns the refusal of an entry past
// QueueTimeout.
func (a *admission) timedOutLocked() error {
	err := &OverloadError{Reason: fmt.Sprintf("no worker became free within %s", a.queueTimeout), RetryAfter: time.Second}
	a.refusedLocked(err)
	return err
}

// refusedLocked counts a refused request and logs about refusals at most
// once a second.
func (a *admission) refusedLocked(err *OverloadError) {
	a.refused++
	if now := time.Now(); now.Sub(a.loggedAt) >= time.Second {
		a.log.WithFields(logrus.Fields{"refused": a.refused, "reason": err.Reason}).Warn("overloaded: refusing requests")
		a.refused, a.loggedAt = 0, now
	}
}

// refuseWaiting refuses every waiting entry with err (the breaker opened,
// or the last worker failed to start and none is left).
func (a *admission) refuseWaiting(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for e := a.waiting.head; e != nil; e = a.waiting.head {
		a.waiting.remove(e)
		e.err = err
		e.ch <- nil
	}
	a.nWaiting.Store(0)
}

// add puts a started worker's slots into rotation.
func (a *admission) add(w *worker) {
	a.mu.Lock()
	a.slots = append(a.slots, w.slots...)
	for _, s := range w.slots {
		s.n++ // release hands it to a waiting entry or to the idle slots
		w.busy++
	}
	a.mu.Unlock()
	for _, s := range w.slots {
		a.release(s, false)
	}
}

// drop takes w's idle slots out of rotation and closes their connections
// (its busy ones are closed as their exchanges end).
func (a *admission) drop(w *worker) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dropLocked(w)
}

func (a *admission) dropLocked(w *worker) {
	live := a.idle[:0]
	for _, s := range a.idle {
		if s.w != w {
			live = append(live, s)
		} else {
			s.conn.Close()
		}
	}
	clear(a.idle[len(live):])
	a.idle = live
}

// retire takes w out of rotation on purpose, to stop it gracefully: at
// once if nothing is outstanding on it, else once its exchanges end. It
// reports whether this call retired it.
func (a *admission) retire(w *worker, cause Cause, why string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !w.retire(cause, why) {
		return false
	}
	a.dropLocked(w)
	if w.busy == 0 {
		a.stopIdle(w)
	}
	return true
}

// forget removes the slots of a worker whose exit was handled.
func (a *admission) forget(w *worker) {
	a.mu.Lock()
	defer a.mu.Unlock()
	keep := a.slots[:0]
	for _, s := range a.slots {
		if s.w != w {
			keep = append(keep, s)
		}
	}
	clear(a.slots[len(keep):])
	a.slots = keep
	a.dropLocked(w)
}

// takeIdle takes out of rotation the idle slots of workers with nothing
// outstanding that pick selects, and returns those workers.
func (a *admission) takeIdle(pick func(w *worker, idleSince time.Time) bool) []*worker {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*worker
	seen := map[*worker]bool{}
	for _, s := range a.idle {
		w := s.w
		if seen[w] {
			continue
		}
		seen[w] = true
		if w.busy == 0 && w.inRotation() && pick(w, w.idleSince) {
			out = append(out, w)
		}
	}
	if len(out) == 0 {
		return nil
	}
	keep := a.idle[:0]
	for _, s := range a.idle {
		if !contains(out, s.w) {
			keep = append(keep, s)
		}
	}
	clear(a.idle[len(keep):])
	a.idle = keep
	return out
}

func contains(ws []*worker, w *worker) bool {
	for _, x := range ws {
		if x == w {
			return true
		}
	}
	return false
}

// takeForPing takes out of rotation the idle slots unused for interval,
// reserved (but not as used: a pinged spare stays fresh) for a health
// ping. Each goes back with releasePing.
func (a *admission) takeForPing(now time.Time, interval time.Duration) []*slot {
	a.mu.Lock()
	defer a.mu.Unlock()
	var due []*slot
	keep := a.idle[:0]
	for _, s := range a.idle {
		if s.w.inRotation() && now.Sub(s.progress) >= interval && now.Sub(s.pinged) >= interval {
			due = append(due, s)
			s.n++
			s.w.busy++
			continue
		}
		keep = append(keep, s)
	}
	clear(a.idle[len(keep):])
	a.idle = keep
	return due
}

// busyOf returns the exchanges outstanding on w.
func (a *admission) busyOf(w *worker) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return w.busy
}

// inFlight counts the requests admitted and not answered: waiting, parked
// and running.
func (a *admission) inFlight() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.waiting.n
	for _, s := range a.slots {
		n += s.n
	}
	return n
}

// close refuses every waiting request with ErrClosed and takes every slot
// out of rotation.
func (a *admission) close() {
	a.mu.Lock()
	a.closed = true
	if a.timer != nil {
		a.timer.Stop()
	}
	a.idle = nil
	a.mu.Unlock()
	a.refuseWaiting(ErrClosed)
}

// drain refuses new requests that find no idle slot with ErrClosed.
func (a *admission) drain() {
	a.mu.Lock()
	a.draining = true
	a.mu.Unlock()
}
