package workers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc/launch"
)

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModePool, ModeOnDemand, ModeOneShot} {
		if got, err := ParseMode(m.String()); err != nil || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseMode("lambda"); err == nil {
		t.Error("ParseMode accepted an unknown mode")
	}
}

// ondemand: nothing runs before the first request; the worker started for
// it is stopped once idle for IdleTimeout.
func TestOnDemandScalesFromZeroAndBack(t *testing.T) {
	p := startPool(t, "hello", Config{Mode: ModeOnDemand, MaxWorkers: 2, IdleTimeout: 300 * time.Millisecond})
	if w := p.Workers(); len(w) != 0 {
		t.Fatalf("workers %v before any request, want none", w)
	}
	status, body, pid, err := get(context.Background(), p.Pool, "/")
	if err != nil || status != 200 || body != "hello world\n" {
		t.Fatalf("cold request: %d %q %v", status, body, err)
	}
	if w := p.Workers(); len(w) != 1 || w[0] != pid {
		t.Fatalf("workers %v after one request, want [%d]", w, pid)
	}
	waitFor(t, "the idle worker to be stopped", func() bool { return len(p.Workers()) == 0 })
	waitGone(t, pid)
	if e := logLine(p.hook, "worker exited unexpectedly"); e != nil {
		t.Fatalf("an idle stop was logged as a failure: %v", e.Message)
	}
	if status, _, pid2, err := get(context.Background(), p.Pool, "/"); err != nil || status != 200 || pid2 == pid {
		t.Fatalf("request after scaling to zero: %d from %d (old %d) %v", status, pid2, pid, err)
	}
}

// A burst on an idle ondemand pool starts at most MaxWorkers workers.
func TestOnDemandBurstStartsAtMostMaxWorkers(t *testing.T) {
	p := startPool(t, "hello", Config{Mode: ModeOnDemand, MaxWorkers: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _, _, err := get(context.Background(), p.Pool, "/")
			if err == nil && status != 200 {
				err = fmt.Errorf("status %d", status)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := countLines(p, "worker started"); n < 1 || n > 2 {
		t.Fatalf("%d workers started for the burst, want 1 or 2", n)
	}
}

// oneshot: every request runs in a process nobody used before, and the
// used process is gone afterwards.
func TestOneShotFreshProcessPerRequest(t *testing.T) {
	p := startPool(t, "counter", Config{Mode: ModeOneShot, Spares: 1, MaxWorkers: 2})
	seen := map[int]bool{}
	for i := range 6 {
		status, body, pid, err := get(context.Background(), p.Pool, "/")
		if err != nil || status != 200 {
			t.Fatalf("request %d: %d %v", i, status, err)
		}
		if want := fmt.Sprintf("1 %d", pid); body != want {
			t.Fatalf("request %d: %q, want %q: state survived from an earlier request", i, body, want)
		}
		if seen[pid] {
			t.Fatalf("request %d: pid %d served twice", i, pid)
		}
		seen[pid] = true
		waitGone(t, pid)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(p.Workers()) != 1 {
		if time.Now().After(deadline) {
			for _, e := range p.hook.AllEntries() {
				t.Logf("%s %s %v", e.Level, e.Message, e.Data)
			}
			t.Fatalf("workers %v, want one spare", p.Workers())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if e := logLine(p.hook, "worker exited unexpectedly"); e != nil {
		t.Fatalf("a discarded worker was logged as a failure: %v", e.Message)
	}
}

// A oneshot request with no spare waits for a spawn; concurrent requests
// beyond MaxWorkers wait for a process, never share one.
func TestOneShotConcurrentRequestsNeverShare(t *testing.T) {
	p := startPool(t, "counter", Config{Mode: ModeOneShot, Spares: -1, MaxWorkers: 2})
	var wg sync.WaitGroup
	var mu sync.Mutex
	pids := map[int]bool{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body, pid, err := get(context.Background(), p.Pool, "/")
			mu.Lock()
			defer mu.Unlock()
			if err != nil || status != 200 || body != fmt.Sprintf("1 %d", pid) || pids[pid] {
				t.Errorf("%d %q from %d (seen %v): %v", status, body, pid, pids[pid], err)
			}
			pids[pid] = true
		}()
	}
	wg.Wait()
}

// The wait queue is bounded: past it a request is refused at once.
func TestQueueFullIsRefusedAtOnce(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Pipeline: 1, Queue: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan error, 2)
	go func() { _, _, _, err := get(ctx, p.Pool, "/ctx"); results <- err }()
	waitFor(t, "the first request to run", func() bool { return countLines(p, "hang: waiting") == 1 })
	go func() { _, _, _, err := get(ctx, p.Pool, "/"); results <- err }()
	waitFor(t, "the second request to wait", func() bool {
		return p.waiting() == 1
	})
	_, _, _, err := get(context.Background(), p.Pool, "/")
	var oe *OverloadError
	if !errors.As(err, &oe) || !errors.Is(err, ErrOverloaded) || oe.RetryAfter <= 0 {
		t.Fatalf("third request: %v, want an *OverloadError with RetryAfter", err)
	}
	if logLine(p.hook, "overloaded") == nil {
		t.Error("no log line about the refusal")
	}
	cancel()
	for range 2 {
		if err := <-results; !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled request: %v", err)
		}
	}
}

// A request that waits longer than QueueTimeout is refused.
func TestQueueTimeout(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Pipeline: 1, QueueTimeout: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() { _, _, _, err := get(ctx, p.Pool, "/ctx"); first <- err }()
	waitFor(t, "the first request to run", func() bool { return countLines(p, "hang: waiting") == 1 })
	t0 := time.Now()
	_, _, _, err := get(context.Background(), p.Pool, "/")
	if !errors.Is(err, ErrOverloaded) {
		t.Fatalf("waiting request: %v, want ErrOverloaded", err)
	}
	if d := time.Since(t0); d < 200*time.Millisecond {
		t.Fatalf("refused after %s, before the queue timeout", d)
	}
	cancel()
	<-first
}

// Waiters that came at different times are each refused QueueTimeout after
// they came, not when the one before them is.
func TestQueueTimeoutEach(t *testing.T) {
	const timeout = 300 * time.Millisecond
	p := startPool(t, "hang", Config{Size: 1, Pipeline: 1, QueueTimeout: timeout})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() { _, _, _, err := get(ctx, p.Pool, "/ctx"); first <- err }()
	waitFor(t, "the first request to run", func() bool { return countLines(p, "hang: waiting") == 1 })
	type refusal struct {
		waited time.Duration
		err    error
	}
	results := make(chan refusal, 3)
	for i := range 3 {
		if i > 0 {
			// The next one comes while the one before still waits.
			waitFor(t, "the waiter before to queue", func() bool {
				return p.waiting() == i
			})
		}
		go func() {
			t0 := time.Now()
			_, _, _, err := get(context.Background(), p.Pool, "/")
			results <- refusal{time.Since(t0), err}
		}()
	}
	for range 3 {
		r := <-results
		if !errors.Is(r.err, ErrOverloaded) {
			t.Errorf("waiting request: %v, want ErrOverloaded", r.err)
		}
		if r.waited < timeout {
			t.Errorf("refused after %s, before the queue timeout", r.waited)
		}
	}
	cancel()
	<-first
}

// ondemand with a binary that cannot start: the waiting request gets the
// start error instead of waiting out the queue timeout.
func TestOnDemandStartFailureReachesTheRequest(t *testing.T) {
	p := startPool(t, "stdoutjunk", Config{Mode: ModeOnDemand, StartTimeout: 2 * time.Second})
	_, _, _, err := get(context.Background(), p.Pool, "/")
	var se *launch.StartError
	if !errors.As(err, &se) {
		t.Fatalf("request: %v, want an *launch.StartError", err)
	}
}

// Workers stopped after an idle period leave no descriptor behind: neither
// their slot connections nor their stdout and stderr pipes.
func TestStoppedWorkersLeaveNoDescriptors(t *testing.T) {
	p := startPool(t, "hello", Config{Mode: ModeOnDemand, MaxWorkers: 1, IdleTimeout: 50 * time.Millisecond})
	fds := func() int {
		e, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(e)
	}
	cycle := func() {
		if status, _, _, err := get(context.Background(), p.Pool, "/"); err != nil || status != 200 {
			t.Fatalf("request: %d %v", status, err)
		}
		waitFor(t, "the idle worker to stop", func() bool { return len(p.Workers()) == 0 })
	}
	cycle()
	base := fds()
	for range 5 {
		cycle()
	}
	waitFor(t, fmt.Sprintf("descriptors back to %d", base), func() bool { return fds() <= base })
}

// MaxWorkers defaults to the CPUs, and to twice that in oneshot mode; a
// value given is kept.
func TestMaxWorkersDefault(t *testing.T) {
	for _, tc := range []struct {
		mode  Mode
		given int
		want  int
	}{
		{ModeOnDemand, 0, runtime.NumCPU()},
		{ModeOneShot, 0, 2 * runtime.NumCPU()},
		{ModeOneShot, 3, 3},
	} {
		c, err := Config{Path: "/bin/true", Mode: tc.mode, MaxWorkers: tc.given}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		if c.MaxWorkers != tc.want {
			t.Errorf("%v, MaxWorkers %d: %d, want %d", tc.mode, tc.given, c.MaxWorkers, tc.want)
		}
	}
}
