package workers

// Tests of the pool's logic (admission, backoff, breaker, reaping,
// quarantine) with in-memory workers (fakeBinary) in a synctest bubble: time
// is virtual, so every duration below is exact and costs nothing.

import (
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sirupsen/logrus/hooks/test"
)

type simResult struct {
	body string
	err  error
	at   time.Duration // since the test began
}

// simGets sends the requests one after the other (each has reached the pool
// before the next is sent) from their own goroutines, and returns their
// results in the order they were sent.
func simGets(p *Pool, start time.Time, uris ...string) []chan simResult {
	var out []chan simResult
	for _, uri := range uris {
		ch := make(chan simResult, 1)
		out = append(out, ch)
		go func() {
			body, err := fakeGet(context.Background(), p, uri)
			ch <- simResult{body, err, time.Since(start)}
		}()
		synctest.Wait()
	}
	return out
}

// --queue bounds every request admitted and not running, parked ones
// included: with one worker and a queue of one, of six slow requests one
// runs, one waits in line on the worker, and four are refused at once.
func TestSimQueueBoundsParkedRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := fakePool(t, newFakeBinary(t), Config{Size: 1, Queue: 1})
		start := time.Now()
		chs := simGets(p, start, slices.Repeat([]string{"/slow?d=1s"}, 6)...)
		var ok, refused []time.Duration
		for i, ch := range chs {
			r := <-ch
			var oe *OverloadError
			switch {
			case r.err == nil:
				ok = append(ok, r.at)
			case errors.As(r.err, &oe) && oe.RetryAfter > 0:
				refused = append(refused, r.at)
			default:
				t.Errorf("request %d: %v", i, r.err)
			}
		}
		if !slices.Equal(ok, []time.Duration{time.Second, 2 * time.Second}) || !slices.Equal(refused, make([]time.Duration, 4)) {
			t.Errorf("served at %v, refused at %v; want served at 1s and 2s, four refused at once", ok, refused)
		}
	})
}

// --queue-timeout bounds the wait of a parked request too: it is taken
// back from the worker (withdraw) and refused, while the request before it
// runs on.
func TestSimQueueTimeoutOfParkedRequests(t *testing.T) {
	for _, withdraw := range []bool{true, false} {
		t.Run(map[bool]string{true: "withdrawn", false: "cancelled"}[withdraw], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := newFakeBinary(t)
				if !withdraw {
					b.features = nil
				}
				p, _ := fakePool(t, b, Config{Size: 1, QueueTimeout: 2 * time.Second})
				start := time.Now()
				chs := simGets(p, start, "/slow?d=10s", "/ok")
				r := <-chs[1]
				var oe *OverloadError
				if !errors.As(r.err, &oe) || r.at != 2*time.Second {
					t.Errorf("parked request: %v at %s, want an *OverloadError at 2s", r.err, r.at)
				}
				if r := <-chs[0]; r.err != nil || r.at != 10*time.Second {
					t.Errorf("running request: %v at %s, want it served at 10s", r.err, r.at)
				}
				b.mu.Lock()
				defer b.mu.Unlock()
				if slices.Contains(b.handled, "/ok") {
					t.Error("the refused request ran in the worker")
				}
			})
		})
	}
}

// A request parked behind one that turns out slow is moved as soon as
// another slot is free: it waits for that slot, not for the slow request.
func TestSimHeadOfLineBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := fakePool(t, newFakeBinary(t), Config{Size: 2})
		start := time.Now()
		chs := simGets(p, start, "/slow?d=1s", "/slow?d=20ms", "/ok", "/ok")
		for i, ch := range chs[1:] {
			if r := <-ch; r.err != nil || r.at > 20*time.Millisecond {
				t.Errorf("request %d: %v at %s, want it served within 20ms", i+1, r.err, r.at)
			}
		}
		if r := <-chs[0]; r.err != nil || r.at != time.Second {
			t.Errorf("slow request: %v at %s", r.err, r.at)
		}
	})
}

// Without the withdraw feature, nothing is withdrawn: requests are parked
// only behind exchanges that make progress.
func TestSimNoWithdrawNoParkingBehindStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBinary(t)
		b.features = nil
		p, _ := fakePool(t, b, Config{Size: 2})
		start := time.Now()
		chs := simGets(p, start, "/slow?d=1s", "/slow?d=20ms")
		time.Sleep(10 * time.Millisecond) // both exchanges stalled
		chs = append(chs, simGets(p, start, "/ok")...)
		if r := <-chs[2]; r.err != nil || r.at != 20*time.Millisecond {
			t.Errorf("request after the stall: %v at %s, want it served at 20ms", r.err, r.at)
		}
		<-chs[0]
		<-chs[1]
	})
}

// Workers that never start are restarted with growing delays, and the
// breaker opens after StartFailures of them; requests are refused at once
// while it is open, and the probe closes it once the binary starts.
func TestSimStartFailuresBackOffAndOpenTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBinary(t)
		p, hook := fakePool(t, b, Config{Size: 1, Backoff: Backoff{Min: 100 * time.Millisecond, Max: time.Second},
			Breaker: BreakerConfig{StartFailures: 4, Window: time.Minute, Backoff: 5 * time.Second}})
		start := time.Now()
		b.mu.Lock()
		b.failStarts = 100
		b.mu.Unlock()
		b.live()[0].exit() // dies while idle, before any request
		time.Sleep(time.Second)
		synctest.Wait()
		b.mu.Lock()
		var at []time.Duration
		for _, s := range b.starts[1:] {
			at = append(at, s.Sub(start))
		}
		b.mu.Unlock()
		// The death counts as the first failure (restart at once), then
		// each failed start doubles the delay; the fourth opens the breaker.
		want := []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond}
		if !slices.Equal(at, want) {
			t.Errorf("starts at %v, want %v", at, want)
		}
		_, err := fakeGet(context.Background(), p, "/ok")
		var oe *OverloadError
		if !errors.As(err, &oe) || !strings.Contains(oe.Reason, "quarantined") {
			t.Fatalf("request with the breaker open: %v", err)
		}
		if p.Ready() {
			t.Error("ready with the breaker open and no worker")
		}
		b.mu.Lock()
		b.failStarts = 0
		b.mu.Unlock()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if body, err := fakeGet(context.Background(), p, "/ok"); err != nil || body != "ok" {
			t.Fatalf("after the probe: %q %v", body, err)
		}
		if logLine(hook, "breaker closed") == nil {
			t.Error("no log line about the breaker closing")
		}
	})
}

// simCrashOpen starts a pool of three workers whose starts take
// startDelay, with a breaker that opens for backoff after 3 of 4 requests
// killed their worker; sends a healthy request, then three that crash
// their workers at once, which opens the breaker while the replacements of
// the first two are starting. It returns when the crashes were answered,
// that time, and the pool's log.
func simCrashOpen(t *testing.T, startDelay, backoff time.Duration) (*Pool, *test.Hook, time.Time) {
	t.Helper()
	b := newFakeBinary(t)
	b.startDelay = startDelay
	p, hook := fakePool(t, b, Config{Size: 3,
		Breaker: BreakerConfig{MinRequests: 4, Window: time.Minute, Backoff: backoff}})
	if _, err := fakeGet(context.Background(), p, "/ok"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 3 {
		if _, err := fakeGet(context.Background(), p, "/crash"); err == nil {
			t.Fatalf("crash %d answered", i)
		}
	}
	return p, hook, start
}

// A start already under way when the breaker opens does not end the
// quarantine early: its worker is discarded, and requests that find no
// worker are refused until the probe, Backoff later. Three workers crash
// at once: the replacements of the first two are starting when the third
// crash opens the breaker.
func TestSimStartInFlightWhenTheBreakerOpens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, hook, start := simCrashOpen(t, 50*time.Millisecond, 5*time.Second)
		synctest.Wait()
		if time.Since(start) != 0 {
			t.Fatalf("the crashes took %s of virtual time, want none (the starts must still be under way)", time.Since(start))
		}
		time.Sleep(time.Second)
		synctest.Wait()
		var oe *OverloadError
		if _, err := fakeGet(context.Background(), p, "/ok"); !errors.As(err, &oe) {
			t.Fatalf("1s into the quarantine: %v, want it refused", err)
		}
		time.Sleep(5*time.Second - time.Since(start) + 100*time.Millisecond)
		synctest.Wait()
		if body, err := fakeGet(context.Background(), p, "/ok"); err != nil || body != "ok" {
			t.Fatalf("after the probe: %q %v", body, err)
		}
		if logLine(hook, "breaker closed") == nil {
			t.Error("no log line about the breaker closing")
		}
	})
}

// A start under way when the breaker opens that completes while the probe
// is starting is no probe: it is discarded, and the breaker stays open
// until the probe itself has started; a request sent meanwhile waits for
// the probe.
func TestSimStaleStartIsNoProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, hook, start := simCrashOpen(t, 3*time.Second, 2*time.Second)
		// 2s: the probe starts; 3s: the two starts of before the opening
		// complete; 5s: the probe completes.
		time.Sleep(4*time.Second - time.Since(start))
		synctest.Wait()
		if logLine(hook, "breaker closed") != nil {
			t.Fatal("the breaker closed before its probe started")
		}
		// Past the open period a request waits for the probe.
		if body, err := fakeGet(context.Background(), p, "/ok"); err != nil || body != "ok" {
			t.Fatalf("a request 4s in: %q %v", body, err)
		}
		if at := time.Since(start); at < 5*time.Second {
			t.Errorf("a request 4s in was served at %s, before the probe started (5s)", at)
		}
		if logLine(hook, "breaker closed") == nil {
			t.Error("no log line about the breaker closing")
		}
	})
}

// A binary whose every request kills its worker is quarantined after
// MinRequests; one whose requests do so one time in five never is.
func TestSimCrashRatio(t *testing.T) {
	for _, tc := range []struct {
		name  string
		every int // one request in every crashes
		open  bool
	}{{"every request", 1, true}, {"one in five", 5, false}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p, _ := fakePool(t, newFakeBinary(t), Config{Size: 2, Breaker: BreakerConfig{MinRequests: 20, Window: time.Minute}})
				refused := 0
				for i := range 200 {
					uri := "/ok"
					if i%tc.every == 0 {
						uri = "/crash"
					}
					_, err := fakeGet(context.Background(), p, uri)
					var oe *OverloadError
					if errors.As(err, &oe) {
						refused++
					} else if uri == "/ok" && err != nil {
						t.Fatalf("healthy request %d: %v", i, err)
					}
					synctest.Wait() // the supervisor has seen the exit
				}
				if (refused > 0) != tc.open {
					t.Errorf("%d requests refused by the breaker, want it open: %v", refused, tc.open)
				}
			})
		})
	}
}

// A request that times out costs that request a *TimeoutError; its worker
// is sent SIGQUIT, replaced at once (not after the grace), and killed after
// QuarantineGrace.
func TestSimTimeoutQuarantines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBinary(t)
		p, _ := fakePool(t, b, Config{Size: 1, Timeout: time.Second, QuarantineGrace: 3 * time.Second})
		hung := b.live()[0]
		start := time.Now()
		_, err := fakeGet(context.Background(), p, "/hang")
		var te *TimeoutError
		if !errors.As(err, &te) || time.Since(start) != time.Second {
			t.Fatalf("hanging request: %v after %s", err, time.Since(start))
		}
		synctest.Wait()
		if got := b.startCount(); got != 2 {
			t.Errorf("%d starts right after the timeout, want the replacement started at once", got)
		}
		hung.mu.Lock()
		sigs := slices.Clone(hung.signals)
		hung.mu.Unlock()
		if !slices.Equal(sigs, []syscall.Signal{syscall.SIGQUIT}) {
			t.Errorf("signals %v, want SIGQUIT", sigs)
		}
		if body, err := fakeGet(context.Background(), p, "/ok"); err != nil || body != "ok" || time.Since(start) != time.Second {
			t.Errorf("next request: %q %v after %s", body, err, time.Since(start))
		}
		select {
		case <-hung.exited:
			t.Fatal("killed before its grace")
		default:
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		select {
		case <-hung.exited:
		default:
			t.Fatal("still alive after its grace")
		}
	})
}

// A worker that cannot be killed is replaced all the same, and does not
// keep a oneshot function from serving; Close returns within its bound.
func TestSimUnkillableWorkerIsReplaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBinary(t)
		b.unkillable = true
		p, _ := fakePool(t, b, Config{Mode: ModeOneShot, MaxWorkers: 2, Spares: 1, Timeout: time.Second, QuarantineGrace: time.Second})
		for i := range 5 {
			if _, err := fakeGet(context.Background(), p, "/hang"); err == nil {
				t.Fatalf("hanging request %d answered", i)
			}
			synctest.Wait()
			if !p.Ready() {
				t.Fatalf("not ready after %d unkillable workers, though none of them counts", i+1)
			}
		}
		b.mu.Lock()
		b.unkillable = false
		b.mu.Unlock()
		time.Sleep(time.Second)
		synctest.Wait()
		if body, err := fakeGet(context.Background(), p, "/ok"); err != nil || body != "ok" {
			t.Fatalf("after the unkillable workers: %q %v", body, err)
		}
		start := time.Now()
		_ = p.Close(context.Background())
		if d := time.Since(start); d > p.cfg.StopTimeout+StopGrace {
			t.Errorf("Close took %s", d)
		}
	})
}

// ModeOnDemand starts a worker for a waiting request and stops it after
// IdleTimeout without work.
func TestSimIdleReaping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newFakeBinary(t)
		p, _ := fakePool(t, b, Config{Mode: ModeOnDemand, MaxWorkers: 2, IdleTimeout: time.Minute})
		if n := len(b.live()); n != 0 {
			t.Fatalf("%d workers before any request", n)
		}
		if _, err := fakeGet(context.Background(), p, "/ok"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if n := len(b.live()); n != 1 {
			t.Fatalf("%d workers before IdleTimeout, want 1", n)
		}
		time.Sleep(16 * time.Second) // the reaper looks every IdleTimeout/4
		synctest.Wait()
		if n := len(b.live()); n != 0 {
			t.Fatalf("%d workers after IdleTimeout, want 0", n)
		}
	})
}
