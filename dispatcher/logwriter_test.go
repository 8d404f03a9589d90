package dispatcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// sink is a log destination for the tests: it records what it is given
// and can be made to block or fail.
type sink struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	fail   error
	gate   chan struct{} // if set, each Write waits for it to be closed
	in     chan struct{} // if set, told when a Write starts
}

func (s *sink) Write(p []byte) (int, error) {
	if s.in != nil {
		select {
		case s.in <- struct{}{}:
		default:
		}
	}
	if s.gate != nil {
		<-s.gate
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return 0, s.fail
	}
	s.writes++
	return s.buf.Write(p)
}

func (s *sink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *sink) setFail(err error) {
	s.mu.Lock()
	s.fail = err
	s.mu.Unlock()
}

func closeWriter(tb testing.TB, w *LogWriter) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		tb.Fatalf("Close: %v", err)
	}
}

func TestLogWriterKeepsEntriesWholeAndInOrder(t *testing.T) {
	out := &sink{}
	w := NewLogWriter(out, LogWriterConfig{FlushSize: 1 << 10, Limit: 1 << 30})
	const writers, entries = 8, 400
	var wg sync.WaitGroup
	entry := func(g, i int) string {
		return fmt.Sprintf("g=%d i=%d %s end", g, i, strings.Repeat("x", (g*entries+i)%3000))
	}
	for g := range writers {
		wg.Go(func() {
			for i := range entries {
				line := []byte(entry(g, i) + "\n")
				if i%3 == 0 {
					w.Write(line)
				} else {
					w.buffered(line)
				}
			}
		})
	}
	wg.Wait()
	closeWriter(t, w)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != writers*entries {
		t.Fatalf("%d lines, want %d", len(lines), writers*entries)
	}
	next := make([]int, writers)
	for _, l := range lines {
		var g, i int
		if n, err := fmt.Sscanf(l, "g=%d i=%d ", &g, &i); n != 2 || err != nil || g >= writers || l != entry(g, i) {
			t.Fatalf("torn line %.80q...", l)
		}
		if i != next[g] {
			t.Fatalf("writer %d: entry %d after %d", g, i, next[g]-1)
		}
		next[g]++
	}
	if out.writes >= writers*entries/2 {
		t.Errorf("%d writes for %d entries: not buffered", out.writes, writers*entries)
	}
}

func TestLogWriterWritesEntriesAtOnceAndAccessLinesLater(t *testing.T) {
	out := &sink{}
	w := NewLogWriter(out, LogWriterConfig{FlushInterval: time.Hour})
	defer closeWriter(t, w)
	w.buffered([]byte("access 1\n"))
	w.buffered([]byte("access 2\n"))
	w.Write([]byte("error\n"))
	// Written without waiting for the interval, with the lines before it.
	waitFor(t, "the entry", func() bool { return strings.Contains(out.String(), "error") })
	if got := out.String(); got != "access 1\naccess 2\nerror\n" {
		t.Fatalf("%q", got)
	}
}

func TestLogWriterFlushesOnItsInterval(t *testing.T) {
	out := &sink{}
	w := NewLogWriter(out, LogWriterConfig{FlushInterval: 10 * time.Millisecond})
	defer closeWriter(t, w)
	for i := range 3 {
		line := fmt.Sprintf("access %d\n", i)
		w.buffered([]byte(line))
		waitFor(t, line, func() bool { return strings.HasSuffix(out.String(), line) })
	}
}

func TestLogWriterCloseWritesEverything(t *testing.T) {
	out := &sink{}
	w := NewLogWriter(out, LogWriterConfig{FlushInterval: time.Hour})
	var want strings.Builder
	for i := range 100 {
		line := fmt.Sprintf("access %d\n", i)
		want.WriteString(line)
		w.buffered([]byte(line))
	}
	closeWriter(t, w)
	if out.String() != want.String() {
		t.Fatalf("after Close: %q", out.String())
	}
	// Later entries are written directly.
	w.buffered([]byte("late access\n"))
	w.Write([]byte("late entry\n"))
	if got := strings.TrimPrefix(out.String(), want.String()); got != "late access\nlate entry\n" {
		t.Fatalf("after Close: %q", got)
	}
	closeWriter(t, w) // a second Close is harmless
}

func TestLogWriterDropsWhileTheDestinationBlocks(t *testing.T) {
	out := &sink{gate: make(chan struct{}), in: make(chan struct{}, 1)}
	var reported []int
	var w *LogWriter
	w = NewLogWriter(out, LogWriterConfig{Limit: 4096, Dropped: func(n int) {
		reported = append(reported, n)
		fmt.Fprintf(w, "dropped %d\n", n)
	}})
	w.Write([]byte("first\n"))
	<-out.in // the goroutine is blocked writing it

	line := []byte(strings.Repeat("a", 99) + "\n")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			w.buffered(line)
		}
		w.Write(line) // not an access line: dropped all the same
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("logging blocked behind the destination")
	}
	if got := w.Dropped(); got != 961 {
		t.Errorf("Dropped() = %d, want 961 (from the 41st line of 100 bytes on, past 4096)", got)
	}
	close(out.gate)
	closeWriter(t, w)
	want := "first\n" + strings.Repeat(string(line), 40) + "dropped 961\n"
	if got := out.String(); got != want {
		t.Errorf("got %d bytes, want %d: ...%q", len(got), len(want), got[max(0, len(got)-40):])
	}
	if len(reported) != 1 {
		t.Errorf("reported %v", reported)
	}
}

func TestLogWriterCountsFailedWrites(t *testing.T) {
	out := &sink{fail: errors.New("broken pipe")}
	var w *LogWriter
	w = NewLogWriter(out, LogWriterConfig{Dropped: func(n int) { fmt.Fprintf(w, "dropped %d\n", n) }})
	w.Write([]byte("a\nb\n"))
	waitFor(t, "the failed write", func() bool { return w.Dropped() == 2 })
	out.setFail(nil)
	w.Write([]byte("c\n"))
	waitFor(t, "the report", func() bool { return out.String() == "c\ndropped 2\n" })
	closeWriter(t, w)
}

func TestLogWriterCloseIsBounded(t *testing.T) {
	out := &sink{gate: make(chan struct{}), in: make(chan struct{}, 1)}
	defer close(out.gate)
	w := NewLogWriter(out, LogWriterConfig{})
	w.Write([]byte("stuck\n"))
	<-out.in
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close on a blocked destination: %v", err)
	}
}

func TestLogWriterWithoutBuffering(t *testing.T) {
	out := &sink{}
	w := NewLogWriter(out, LogWriterConfig{FlushInterval: -1})
	defer closeWriter(t, w)
	w.buffered([]byte("access\n"))
	waitFor(t, "the access line", func() bool { return out.String() == "access\n" })
}
