package workers

import (
	"fmt"
	"time"
)

// BreakerConfig says when a worker binary counts as broken. A binary is
// broken when its workers cannot start, die before serving anything (a
// crash loop), or die of most of the requests they take. A client that
// sends requests crashing their worker now and then among healthy traffic
// cannot open the breaker: each such crash costs its own request, and the
// worker is replaced.
type BreakerConfig struct {
	// StartFailures opens the breaker after that many failed starts and
	// deaths of workers that had not taken a request yet, within Window.
	// If zero, 5; negative: they never open it.
	StartFailures int
	// CrashRatio opens the breaker when more than this share of the
	// requests that reached a worker within Window killed it (a crash, a
	// timeout, a protocol violation), once MinRequests did. If zero, 0.5;
	// negative: requests never open it.
	CrashRatio float64
	// MinRequests is how many requests must have reached a worker within
	// Window before CrashRatio applies. If zero, 20.
	MinRequests int
	// Window is the period in which failures and requests count. If zero,
	// 30s.
	Window time.Duration
	// Backoff is how long the breaker first stays open. If zero, 5s. It
	// doubles, up to MaxBackoff, each time it opens again within a Window
	// of closing.
	Backoff time.Duration
	// MaxBackoff caps the open period. If zero, 5m.
	MaxBackoff time.Duration
}

func (c BreakerConfig) withDefaults() BreakerConfig {
	if c.StartFailures == 0 {
		c.StartFailures = 5
	}
	if c.CrashRatio == 0 {
		c.CrashRatio = 0.5
	}
	if c.MinRequests <= 0 {
		c.MinRequests = 20
	}
	if c.Window <= 0 {
		c.Window = 30 * time.Second
	}
	if c.Backoff <= 0 {
		c.Backoff = 5 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Minute
	}
	return c
}

// breakerBuckets is the resolution of the request window.
const breakerBuckets = 10

// Breaker is the circuit breaker of one worker binary. It holds no process
// and reads no clock: the pool reports events with their time, and asks
// whether workers may start. While it is open no worker starts and
// requests that find no worker are refused; when the open period is over,
// one probe worker may start, whose handshake closes it. Not safe for
// concurrent use.
type Breaker struct {
	cfg BreakerConfig

	starts []time.Time // failed starts and early deaths within the window

	// Requests in the window, by bucket of Window/breakerBuckets.
	served, killed [breakerBuckets]int
	bucket         int       // the bucket of the latest event
	bucketStart    time.Time // when it began

	open     bool
	probing  bool // the probe worker is starting
	until    time.Time
	backoff  time.Duration // of the last opening
	closedAt time.Time
	why      string // why it last opened
}

// NewBreaker returns a closed breaker; zero fields of cfg take the defaults
// documented on BreakerConfig.
func NewBreaker(cfg BreakerConfig) *Breaker {
	return &Breaker{cfg: cfg.withDefaults()}
}

// StartFailed records a worker that failed to start (or to complete its
// handshake), or that died before taking any request. It reports whether
// the breaker opened.
func (b *Breaker) StartFailed(now time.Time) bool {
	if b.probing {
		b.probing = false
		b.trip(now, "the probe worker failed")
		return true
	}
	if b.open || b.cfg.StartFailures < 0 {
		return false
	}
	keep := b.starts[:0]
	for _, t := range b.starts {
		if now.Sub(t) < b.cfg.Window {
			keep = append(keep, t)
		}
	}
	b.starts = append(keep, now)
	if len(b.starts) < b.cfg.StartFailures {
		return false
	}
	b.trip(now, fmt.Sprintf("%d failed starts or deaths before a first request within %s", len(b.starts), b.cfg.Window))
	return true
}

// Served records n requests that workers completed.
func (b *Breaker) Served(now time.Time, n int) {
	if n <= 0 {
		return
	}
	b.advance(now)
	b.served[b.bucket] += n
}

// Killed records a request that killed its worker: a crash, a timeout, a
// protocol violation. It reports whether the breaker opened.
func (b *Breaker) Killed(now time.Time) bool {
	b.advance(now)
	b.killed[b.bucket]++
	if b.open || b.cfg.CrashRatio < 0 {
		return false
	}
	served, killed := 0, 0
	for i := range breakerBuckets {
		served += b.served[i]
		killed += b.killed[i]
	}
	total := served + killed
	if total < b.cfg.MinRequests || float64(killed) <= b.cfg.CrashRatio*float64(total) {
		return false
	}
	b.trip(now, fmt.Sprintf("%d of the last %d requests killed their worker within %s", killed, total, b.cfg.Window))
	return true
}

// advance moves the request window to now, forgetting buckets older than
// Window.
func (b *Breaker) advance(now time.Time) {
	width := b.cfg.Window / breakerBuckets
	if b.bucketStart.IsZero() {
		b.bucketStart = now
		return
	}
	steps := int(now.Sub(b.bucketStart) / width)
	if steps <= 0 {
		return
	}
	for i := 1; i <= min(steps, breakerBuckets); i++ {
		j := (b.bucket + i) % breakerBuckets
		b.served[j], b.killed[j] = 0, 0
	}
	b.bucket = (b.bucket + steps) % breakerBuckets
	b.bucketStart = b.bucketStart.Add(time.Duration(steps) * width)
}

// trip opens the breaker; the open period doubles if it closed less than a
// Window ago.
func (b *Breaker) trip(now time.Time, why string) {
	switch {
	case b.backoff == 0 || !b.closedAt.IsZero() && now.Sub(b.closedAt) >= b.cfg.Window:
		b.backoff = b.cfg.Backoff
	default:
		b.backoff = min(2*b.backoff, b.cfg.MaxBackoff)
	}
	b.open, b.until, b.why = true, now.Add(b.backoff), why
	b.starts = b.starts[:0]
	b.served, b.killed = [breakerBuckets]int{}, [breakerBuckets]int{}
}

// Started records a worker that completed its handshake. It reports whether
// that closed the breaker (the worker was its probe).
func (b *Breaker) Started(now time.Time) bool {
	if !b.probing {
		return false
	}
	b.probing, b.open, b.closedAt = false, false, now
	return true
}

// MayStart reports whether a worker may start now, and whether it must be
// the only one (the probe, which Probe then records). While the breaker is
// open, wait is how long until its period ends (0 while a probe starts).
func (b *Breaker) MayStart(now time.Time) (ok, probe bool, wait time.Duration) {
	switch {
	case !b.open:
		return true, false, 0
	case b.probing:
		return false, false, 0
	case now.Before(b.until):
		return false, false, b.until.Sub(now)
	}
	return true, true, 0
}

// Probe records that the probe worker is starting.
func (b *Breaker) Probe() { b.probing = true }

// Refusing reports whether requests that find no worker are refused at
// now, and until when.
func (b *Breaker) Refusing(now time.Time) (time.Time, bool) {
	return b.until, b.open && now.Before(b.until)
}

// State describes the breaker for status pages.
func (b *Breaker) State() BreakerStatus {
	return BreakerStatus{Open: b.open, Probing: b.probing, Until: b.until, Why: b.why}
}
