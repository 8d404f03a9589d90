package sdktest

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// capture keeps every entry of the dispatcher's log and lets callers wait
// for one.
type capture struct {
	mu      sync.Mutex
	list    []Entry
	changed chan struct{} // closed and replaced on every new entry
}

func newCapture() *capture { return &capture{changed: make(chan struct{})} }

func (c *capture) add(e Entry) {
	c.mu.Lock()
	c.list = append(c.list, e)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *capture) entries() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.list)
}

// wait returns the first entry that satisfies match, waiting up to timeout
// for it to be logged, and no longer once done is closed (no entry will
// come).
func (c *capture) wait(timeout time.Duration, done <-chan struct{}, match func(Entry) bool) (Entry, bool) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	next, finished := 0, false
	for {
		c.mu.Lock()
		fresh, changed := c.list[next:], c.changed
		next = len(c.list)
		c.mu.Unlock()
		for _, e := range fresh {
			if match(e) {
				return e, true
			}
		}
		if finished {
			return Entry{}, false
		}
		select {
		case <-changed:
		case <-done:
			finished = true // look at what came before it, then give up
		case <-timer.C:
			return Entry{}, false
		}
	}
}

// String formats every entry, one per line.
func (c *capture) String() string {
	var b strings.Builder
	for _, e := range c.entries() {
		b.WriteString(e.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func sortedKeys(f logrus.Fields) []string {
	return slices.Sorted(maps.Keys(f))
}
