package workers

import "time"

// Backoff spaces the restarts of a worker binary whose processes keep dying
// soon after they start. It holds no process: the pool feeds it events.
//
// The n-th consecutive failure (a failed start, or a worker that died less
// than Healthy after it started) delays the next start by Min*2^(n-1),
// capped at Max. The first failure restarts at once. A worker that lived
// Healthy or longer resets the count, and so does any request a worker
// completes (Reset): the binary works, and the faults of single requests
// (a crash, a timeout) are not a crash loop.
type Backoff struct {
	// Min is the delay after the second consecutive failure. If zero, 50ms.
	Min time.Duration
	// Max caps the delay. If zero, 10s.
	Max time.Duration
	// Healthy is how long a worker must live to reset the count. If zero,
	// 10s.
	Healthy time.Duration

	failures int
}

func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = 50 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 10 * time.Second
	}
	if b.Healthy <= 0 {
		b.Healthy = 10 * time.Second
	}
	return b
}

// Failed records a failed start and returns the delay before the next one.
func (b *Backoff) Failed() time.Duration {
	b.failures++
	return b.Delay()
}

// Exited records a worker that ran for lived and returns the delay before
// its replacement starts.
func (b *Backoff) Exited(lived time.Duration) time.Duration {
	if lived >= b.Healthy {
		b.failures = 0
		return 0
	}
	return b.Failed()
}

// Reset forgets the failures: a worker of the binary completed a request.
func (b *Backoff) Reset() { b.failures = 0 }

// Failures returns the number of consecutive failures.
func (b *Backoff) Failures() int { return b.failures }

// Delay returns the delay the current count implies.
func (b *Backoff) Delay() time.Duration {
	if b.failures <= 1 {
		return 0
	}
	d := b.Min
	for i := 2; i < b.failures && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}
