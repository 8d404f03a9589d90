package sdktest

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// capture is a logrus hook that keeps every entry and lets callers wait for
// one.
type capture struct {
	mu      sync.Mutex
	list    []Entry
	changed chan struct{} // closed and replaced on every new entry
}

var _ logrus.Hook = (*capture)(nil)

func newCapture() *capture { return &capture{changed: make(chan struct{})} }

func (c *capture) Levels() []logrus.Level { return logrus.AllLevels }

func (c *capture) Fire(e *logrus.Entry) error {
	entry := Entry{Time: e.Time, Level: e.Level, Message: e.Message, Fields: maps.Clone(e.Data)}
	if entry.Fields == nil {
		entry.Fields = logrus.Fields{}
	}
	if err, ok := entry.Fields[logrus.ErrorKey].(error); ok {
		entry.Fields[logrus.ErrorKey] = err.Error() // a string, safe to read later
	}
	c.mu.Lock()
	c.list = append(c.list, entry)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	return nil
}

func (c *capture) entries() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.list)
}

// wait returns the first entry that satisfies match, waiting up to timeout
// for it to be logged.
func (c *capture) wait(timeout time.Duration, match func(Entry) bool) (Entry, bool) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	next := 0
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
		select {
		case <-changed:
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
