// Package allocs bounds what a piece of code allocates, for the fuzz
// targets that must not allocate out of proportion to their input.
package allocs

import (
	"runtime"
	"testing"
)

// AtMost runs fn once and fails tb if it allocated more than limit bytes.
// It counts exactly: runtime.ReadMemStats stops the world and flushes every
// P's cache, where runtime/metrics counts the objects of a cached span only
// when the span is released, possibly long after they were allocated (or
// during fn, for objects allocated before it). It costs two short stops of
// the world: for targets that do much more than that per input.
func AtMost(tb testing.TB, limit uint64, fn func()) {
	tb.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > limit {
		tb.Fatalf("allocated %d bytes (limit %d)", n, limit)
	}
}
