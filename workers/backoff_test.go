package workers

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second, Healthy: 10 * time.Second}
	steps := []struct {
		name  string
		event func() time.Duration
		want  time.Duration
	}{
		{"first quick death restarts at once", func() time.Duration { return b.Exited(time.Second) }, 0},
		{"second waits Min", func() time.Duration { return b.Exited(time.Second) }, 100 * time.Millisecond},
		{"third doubles", func() time.Duration { return b.Failed() }, 200 * time.Millisecond},
		{"fourth doubles", func() time.Duration { return b.Exited(0) }, 400 * time.Millisecond},
		{"fifth doubles", func() time.Duration { return b.Failed() }, 800 * time.Millisecond},
		{"capped at Max", func() time.Duration { return b.Failed() }, time.Second},
		{"still capped", func() time.Duration { return b.Failed() }, time.Second},
		{"a healthy run resets", func() time.Duration { return b.Exited(11 * time.Second) }, 0},
		{"then it starts over", func() time.Duration { return b.Exited(time.Second) }, 0},
	}
	for _, s := range steps {
		if got := s.event(); got != s.want {
			t.Fatalf("%s: delay %s, want %s", s.name, got, s.want)
		}
	}
	if d := (Backoff{}).withDefaults(); d.Min != 50*time.Millisecond || d.Max != 10*time.Second || d.Healthy != 10*time.Second {
		t.Fatalf("defaults: %+v", d)
	}
}

// Crashes of single requests, between which requests succeed, are no crash
// loop: the restart delay does not grow (it used to, until the pool
// emptied for 10 s at a time under a steady trickle of faults).
func TestRequestCrashesDoNotAccumulateBackoff(t *testing.T) {
	p := startPool(t, "crash", Config{Size: 1, QueueTimeout: 3 * time.Second, Breaker: BreakerConfig{StartFailures: -1, CrashRatio: -1}})
	for i := range 12 {
		if _, _, _, err := get(context.Background(), p.Pool, "/exit"); err == nil {
			t.Fatalf("crash %d: no error", i)
		}
		status, _, _, err := get(context.Background(), p.Pool, "/ok")
		if err != nil || status != 200 {
			t.Fatalf("request after crash %d: %d, %v", i+1, status, err)
		}
	}
	p.sup.mu.Lock()
	defer p.sup.mu.Unlock()
	if n := p.sup.backoff.Failures(); n > 1 {
		t.Errorf("backoff counts %d failures after requests succeeded", n)
	}
}

// A binary whose workers die without ever taking a request (it cannot stay
// up) is restarted with growing delays, not in a tight loop.
func TestIdleDeathsBackOff(t *testing.T) {
	p := startPool(t, "crash", Config{Size: 1, Env: []string{"CRASH_IDLE_AFTER=100ms"}, Breaker: BreakerConfig{StartFailures: -1, CrashRatio: -1},
		Backoff: Backoff{Min: 20 * time.Millisecond, Max: time.Second}})
	waitFor(t, "5 consecutive failures", func() bool {
		p.sup.mu.Lock()
		defer p.sup.mu.Unlock()
		return p.sup.backoff.Failures() >= 5
	})
	var delays []time.Duration
	for _, e := range p.hook.AllEntries() {
		if s, ok := e.Data["restart_in"].(string); ok {
			d, err := time.ParseDuration(s)
			if err != nil {
				t.Fatal(err)
			}
			delays = append(delays, d)
		}
	}
	if len(delays) < 3 || delays[0] != 20*time.Millisecond || delays[1] != 40*time.Millisecond || delays[2] != 80*time.Millisecond {
		t.Errorf("restart delays %v, want 20ms, 40ms, 80ms...", delays)
	}
}
