package workers

import (
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
