package workers

import (
	"testing"
	"time"
)

// TestBreaker drives the breaker through sequences of events, one letter
// each, a millisecond apart unless a pause says otherwise:
//
//	s  a worker failed to start (or died before its first request)
//	k  a request killed its worker
//	o  a request was served
//	+D time passes (D a duration); the next event comes right then
//	p  the probe may start, and starts (MayStart must say probe)
//	h  the probe completed its handshake
func TestBreaker(t *testing.T) {
	cfg := BreakerConfig{StartFailures: 3, MinRequests: 10, Window: 10 * time.Second, Backoff: time.Second, MaxBackoff: 4 * time.Second}
	tests := []struct {
		name   string
		cfg    BreakerConfig
		events []string
		open   bool          // at the end
		until  time.Duration // if open: time from the start of the sequence
	}{
		{name: "start failures open it", events: []string{"s", "s", "s"}, open: true, until: 2*time.Millisecond + time.Second},
		{name: "too few start failures", events: []string{"s", "s"}},
		{name: "start failures spread beyond the window", events: []string{"s", "s", "+10s", "s"}},
		{name: "requests that crash now and then never open it",
			events: repeat(40, "o", "o", "o", "o", "k")},
		{name: "half the requests crashing is not more than half",
			events: repeat(20, "o", "k")},
		{name: "every request crashing opens it at MinRequests", events: repeat(10, "k"), open: true, until: 9*time.Millisecond + time.Second},
		{name: "crashes below MinRequests", events: repeat(9, "k")},
		{name: "crashes of an earlier window are forgotten",
			events: append(append(repeat(9, "k"), "+11s"), repeat(9, "k")...)},
		{name: "served requests before the crashes dilute them",
			events: append(repeat(12, "o"), repeat(11, "k")...)},
		{name: "served requests older than the window do not",
			events: append(append(repeat(12, "o"), "+11s"), repeat(10, "k")...), open: true},
		{name: "the probe closes it", events: []string{"s", "s", "s", "+1s", "p", "h"}},
		{name: "a failed probe opens it again, for twice as long",
			events: []string{"s", "s", "s", "+1s", "p", "s"}, open: true, until: 3003 * time.Millisecond},
		{name: "reopening within the window of closing doubles the period",
			events: []string{"s", "s", "s", "+1s", "p", "h", "s", "s", "s"}, open: true, until: 3006 * time.Millisecond},
		{name: "reopening after a quiet window starts over",
			events: []string{"s", "s", "s", "+1s", "p", "h", "+10s", "s", "s", "s"}, open: true, until: 12005 * time.Millisecond},
		{name: "the period is capped", cfg: cfg,
			events: []string{"s", "s", "s", "+1s", "p", "s", "+2s", "p", "s", "+4s", "p", "s"}, open: true, until: 11005 * time.Millisecond},
		{name: "start failures disabled", cfg: BreakerConfig{StartFailures: -1, MinRequests: 10, Window: 10 * time.Second},
			events: repeat(20, "s")},
		{name: "crash ratio disabled", cfg: BreakerConfig{CrashRatio: -1, MinRequests: 10, Window: 10 * time.Second},
			events: repeat(30, "k")},
		{name: "a lower ratio", cfg: BreakerConfig{CrashRatio: 0.1, MinRequests: 10, Window: 10 * time.Second, Backoff: time.Second},
			events: repeat(5, "o", "o", "o", "o", "k"), open: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cfg
			if tt.cfg != (BreakerConfig{}) {
				c = tt.cfg
			}
			b := NewBreaker(c)
			start := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
			now := start
			for i, ev := range tt.events {
				if ev[0] == '+' {
					d, err := time.ParseDuration(ev[1:])
					if err != nil {
						t.Fatal(err)
					}
					now = now.Add(d)
					continue
				}
				if i > 0 && tt.events[i-1][0] != '+' {
					now = now.Add(time.Millisecond)
				}
				switch ev {
				case "s":
					b.StartFailed(now)
				case "k":
					b.Killed(now)
				case "o":
					b.Served(now, 1)
				case "p":
					ok, probe, _ := b.MayStart(now)
					if !ok || !probe {
						t.Fatalf("event %d: MayStart = %v, probe %v; want a probe", i, ok, probe)
					}
					b.Probe()
					if ok, _, _ := b.MayStart(now); ok {
						t.Fatalf("event %d: a second start allowed while the probe starts", i)
					}
				case "h":
					if !b.Started(now) {
						t.Fatalf("event %d: the probe's handshake did not close it", i)
					}
				default:
					t.Fatalf("unknown event %q", ev)
				}
			}
			st := b.State()
			until, refusing := b.Refusing(now)
			if st.Open != tt.open || refusing != tt.open {
				t.Fatalf("open %v, refusing %v, want %v (%+v)", st.Open, refusing, tt.open, st)
			}
			if tt.open {
				if st.Why == "" {
					t.Error("open without a reason")
				}
				if ok, _, wait := b.MayStart(now); ok || wait != until.Sub(now) {
					t.Errorf("MayStart while open: %v, wait %s, want false and %s", ok, wait, until.Sub(now))
				}
				if tt.until != 0 && !until.Equal(start.Add(tt.until)) {
					t.Errorf("open until %s after the start, want %s", until.Sub(start), tt.until)
				}
			} else if ok, _, _ := b.MayStart(now); !ok {
				t.Error("closed, yet MayStart refuses")
			}
		})
	}
}

func repeat(n int, events ...string) []string {
	var out []string
	for range n {
		out = append(out, events...)
	}
	return out
}
