package launch

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// limitedCollect returns a sink limited to lines and n bytes per second,
// the lines it emits, and the reports of what it dropped.
func limitedCollect(lines, n int) (*lineSink, *[]string, chan [2]int) {
	reports := make(chan [2]int, 16)
	lim := newOutputLimit(lines, n, func(l, b int) { reports <- [2]int{l, b} })
	s, got := collect()
	s.limit = lim
	return s, got, reports
}

func awaitReport(t *testing.T, reports chan [2]int) [2]int {
	t.Helper()
	select {
	case r := <-reports:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no report of the dropped lines")
		return [2]int{}
	}
}

func TestOutputLimitDropsAndReports(t *testing.T) {
	tests := []struct {
		name         string
		lines, bytes int
		writes       []string
		want         []string
		dropped      [2]int
	}{
		{"lines", 3, -1, []string{strings.Repeat("ab\n", 10)}, []string{"ab", "ab", "ab"}, [2]int{7, 21}},
		{"bytes", -1, 7, []string{"abc\n", "def\n", "ghi\n", "jkl\n"}, []string{"abc", "def"}, [2]int{2, 8}},
		{"a dropped line across writes", 1, -1, []string{"a\nb", "cd", "e\nf\n"}, []string{"a"}, [2]int{2, 7}},
		{"a line admitted across writes", 1, -1, []string{"ab", "c\nd\n"}, []string{"abc"}, [2]int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each waits a second for its report
			s, got, reports := limitedCollect(tt.lines, tt.bytes)
			for _, w := range tt.writes {
				if n, err := s.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			s.Flush()
			if strings.Join(*got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("emitted %q, want %q", *got, tt.want)
			}
			if r := awaitReport(t, reports); r != tt.dropped {
				t.Errorf("reported %v dropped, want %v", r, tt.dropped)
			}
		})
	}
}

func TestOutputLimitUnlimited(t *testing.T) {
	s, got, reports := limitedCollect(-1, -1)
	s.Write(bytes.Repeat([]byte("x\n"), 10000))
	if len(*got) != 10000 {
		t.Fatalf("%d lines emitted", len(*got))
	}
	s.limit.flush()
	select {
	case r := <-reports:
		t.Fatalf("reported %v without a limit", r)
	default:
	}
}

func TestOutputLimitWindow(t *testing.T) {
	l := newOutputLimit(2, -1, func(int, int) {})
	t0 := time.Now()
	for i, want := range []bool{true, true, false, false} {
		if got := l.admit(t0.Add(time.Duration(i)*time.Millisecond), false); got != want {
			t.Fatalf("line %d: admitted %v", i, got)
		}
	}
	if !l.over(t0) {
		t.Error("not over after the budget was spent")
	}
	if !l.admit(t0.Add(time.Second+time.Millisecond), false) {
		t.Error("the next second's first line dropped")
	}
	if !l.admit(t0.Add(time.Second+2*time.Millisecond), true) || !l.admit(t0.Add(time.Second+3*time.Millisecond), false) {
		t.Error("an exempt line counted against the lines")
	}
}

// TestWorkerLogTraceWithinLimit: a trace's lines do not count against the
// line limit, so a long goroutine dump stays whole.
func TestWorkerLogTraceWithinLimit(t *testing.T) {
	w, hook := newTestLog(t)
	lim := newOutputLimit(3, -1, func(int, int) {})
	s := w.limitedSink(lim)
	var b strings.Builder
	b.WriteString("SIGQUIT: quit\n")
	for i := range 100 {
		fmt.Fprintf(&b, "goroutine %d [select]:\n", i)
	}
	s.Write([]byte(b.String()))
	w.finish()
	s.Write([]byte("after\nand more\nand more\n"))
	entries := hook.AllEntries()
	if len(entries) != 3 {
		t.Fatalf("%d entries, want the trace and two lines", len(entries))
	}
	if st, _ := entries[0].Data["stack"].(string); strings.Count(st, "\n") != 100 {
		t.Errorf("trace of %d lines", strings.Count(st, "\n")+1)
	}
}

// BenchmarkWorkerLogFlood is the cost of a flood over the limit: what the
// dispatcher spends per dropped line.
func BenchmarkWorkerLogFlood(b *testing.B) {
	w := benchLog()
	s := w.limitedSink(newOutputLimit(1, -1, func(int, int) {}))
	s.Write([]byte("x\n"))
	buf := bytes.Repeat([]byte("x\n"), pumpBuffer/2)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		s.Write(buf)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(buf)/2), "ns/line")
}
