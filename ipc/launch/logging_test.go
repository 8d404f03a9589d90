package launch

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// collect returns a lineSink that records the lines it emits.
func collect() (*lineSink, *[]string) {
	var lines []string
	return &lineSink{emit: func(b []byte) { lines = append(lines, string(b)) }}, &lines
}

func TestLineSinkSplitsLines(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   []string
	}{
		{"one line", []string{"hello\n"}, []string{"hello"}},
		{"no newline until flush", []string{"hel", "lo"}, []string{"hello"}},
		{"many lines in one write", []string{"a\nb\nc\n"}, []string{"a", "b", "c"}},
		{"line across writes", []string{"a", "b", "c\nd", "e\n"}, []string{"abc", "de"}},
		{"empty lines are lines", []string{"\n\n", "a\n\n"}, []string{"", "", "a", ""}},
		{"CRLF", []string{"a\r\n", "b\r", "\n", "\r\n"}, []string{"a", "b", ""}},
		{"inner CR kept", []string{"a\rb\n"}, []string{"a\rb"}},
		{"partial line flushed", []string{"a\nb"}, []string{"a", "b"}},
		{"empty writes", []string{"", "a", "", "\n", ""}, []string{"a"}},
		{"no output", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, lines := collect()
			for _, w := range tt.writes {
				n, err := s.Write([]byte(w))
				if n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			s.Flush()
			s.Flush() // a second flush emits nothing
			if !reflect.DeepEqual(*lines, tt.want) {
				t.Errorf("got %q, want %q", *lines, tt.want)
			}
		})
	}
}

// TestLineSinkWriteBoundaries feeds the same text split at every position,
// and at random positions, and expects the same lines.
func TestLineSinkWriteBoundaries(t *testing.T) {
	text := "first line\nsecond\r\n\nthird line is longer than the others\nlast"
	want := []string{"first line", "second", "", "third line is longer than the others", "last"}
	for i := 0; i <= len(text); i++ {
		for j := i; j <= len(text); j++ {
			s, lines := collect()
			s.Write([]byte(text[:i]))
			s.Write([]byte(text[i:j]))
			s.Write([]byte(text[j:]))
			s.Flush()
			if !reflect.DeepEqual(*lines, want) {
				t.Fatalf("split at %d and %d: got %q", i, j, *lines)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var big strings.Builder
	var bigWant []string
	for i := range 500 {
		l := fmt.Sprintf("line %d %s", i, strings.Repeat("x", rng.IntN(200)))
		bigWant = append(bigWant, l)
		big.WriteString(l + "\n")
	}
	for range 20 {
		s, lines := collect()
		rest := []byte(big.String())
		for len(rest) > 0 {
			n := min(len(rest), rng.IntN(300))
			s.Write(rest[:n])
			rest = rest[n:]
		}
		s.Flush()
		if !reflect.DeepEqual(*lines, bigWant) {
			t.Fatalf("random splits: %d lines, want %d", len(*lines), len(bigWant))
		}
	}
}

func TestLineSinkTruncates(t *testing.T) {
	long := strings.Repeat("a", maxLogLine)
	tests := []struct {
		name   string
		writes []string
		want   []string
	}{
		{"exactly the limit", []string{long + "\n"}, []string{long}},
		{"one over", []string{long + "b\nnext\n"}, []string{long + " [truncated]", "next"}},
		{"far over, in pieces", []string{long[:100], long, long, "\nnext\n"}, []string{long + " [truncated]", "next"}},
		{"over at flush", []string{long + "bbb"}, []string{long + " [truncated]"}},
		{"limit then newline in the next write", []string{long, "\n", "x\n"}, []string{long, "x"}},
		{"limit then more in the next write", []string{long, "z", "\n", "x\n"}, []string{long + " [truncated]", "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, lines := collect()
			for _, w := range tt.writes {
				s.Write([]byte(w))
			}
			s.Flush()
			if !reflect.DeepEqual(*lines, tt.want) {
				t.Errorf("got %d lines %.40q..., want %d", len(*lines), *lines, len(tt.want))
				for i := range min(len(*lines), len(tt.want)) {
					if (*lines)[i] != tt.want[i] {
						t.Errorf("line %d: %d bytes, want %d", i, len((*lines)[i]), len(tt.want[i]))
					}
				}
			}
		})
	}
}

func TestLineSinkConcurrentWrites(t *testing.T) {
	s, lines := collect()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				fmt.Fprintf(s, "g%d-%d\n", g, i)
			}
		}()
	}
	wg.Wait()
	if len(*lines) != 800 {
		t.Fatalf("%d lines, want 800", len(*lines))
	}
	for _, l := range *lines {
		var g, i int
		if _, err := fmt.Sscanf(l, "g%d-%d", &g, &i); err != nil {
			t.Fatalf("mangled line %q", l)
		}
	}
}

// newTestLog returns a workerLog whose entries land in the hook. The logger
// fails the test if anything asks it to exit.
func newTestLog(tb testing.TB) (*workerLog, *test.Hook) {
	tb.Helper()
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.TraceLevel)
	logger.ExitFunc = func(code int) { tb.Errorf("the worker's log made the dispatcher exit(%d)", code) }
	return &workerLog{e: logrus.NewEntry(logger), stream: "stderr"}, hook
}

// logLines writes lines to w's sink and returns the entries they produced.
func logLines(tb testing.TB, w *workerLog, hook *test.Hook, lines ...string) []*logrus.Entry {
	tb.Helper()
	hook.Reset()
	s := w.sink()
	for _, l := range lines {
		s.Write([]byte(l + "\n"))
	}
	s.Flush()
	w.finish()
	return hook.AllEntries()
}

func TestWorkerLogJSON(t *testing.T) {
	tests := []struct {
		name   string
		line   string
		level  logrus.Level
		msg    string
		fields map[string]any // expected in Data besides "stream"; nil values mean absent
	}{
		{"hclog keys", `{"@level":"warn","@message":"disk low","@timestamp":"2024-01-01T00:00:00Z","free":12}`,
			logrus.WarnLevel, "disk low", map[string]any{"child.free": float64(12), "child.@timestamp": nil, "child.@level": nil}},
		{"logrus keys", `{"level":"debug","msg":"hi","time":"now","user":"bob"}`,
			logrus.DebugLevel, "hi", map[string]any{"child.user": "bob", "child.time": nil}},
		{"message key", `{"level":"info","message":"m"}`, logrus.InfoLevel, "m", nil},
		{"trace", `{"level":"trace","msg":"t"}`, logrus.TraceLevel, "t", nil},
		{"warning", `{"level":"warning","msg":"w"}`, logrus.WarnLevel, "w", nil},
		{"upper case", `{"@level":"ERROR","@message":"e"}`, logrus.ErrorLevel, "e", nil},
		{"panic downgraded", `{"level":"panic","msg":"p"}`, logrus.ErrorLevel, "p", nil},
		{"fatal downgraded", `{"@level":"fatal","@message":"f"}`, logrus.ErrorLevel, "f", nil},
		{"unknown level kept as a field", `{"level":"loud","msg":"x"}`, logrus.InfoLevel, "x",
			map[string]any{"child.level": "loud"}},
		{"level of the wrong type", `{"level":5,"msg":"x"}`, logrus.InfoLevel, "x", map[string]any{"child.level": float64(5)}},
		{"message of the wrong type", `{"msg":{"a":1}}`, logrus.InfoLevel, "", map[string]any{"child.msg": map[string]any{"a": float64(1)}}},
		{"time of the wrong type", `{"msg":"x","time":17}`, logrus.InfoLevel, "x", map[string]any{"child.time": float64(17)}},
		{"null values", `{"level":null,"msg":null,"k":null}`, logrus.InfoLevel, "",
			map[string]any{"child.level": nil, "child.k": nil}},
		{"nested values", `{"msg":"x","arr":[1,"a"],"obj":{"b":true}}`, logrus.InfoLevel, "x",
			map[string]any{"child.arr": []any{float64(1), "a"}, "child.obj": map[string]any{"b": true}}},
		{"fields cannot overwrite", `{"msg":"x","stream":"fake","level":"info"}`, logrus.InfoLevel, "x",
			map[string]any{"child.stream": "fake"}},
		{"control bytes in the message", `{"msg":"a\u0001b\nc"}`, logrus.InfoLevel, `a\x01b\x0ac`, nil},
		{"control bytes in keys and values", `{"msg":"x","k\u0007":"v\u001b[31m"}`, logrus.InfoLevel, "x",
			map[string]any{`child.k\x07`: `v\x1b[31m`}},
		{"request_id", `{"msg":"x","request_id":"r1"}`, logrus.InfoLevel, "x", map[string]any{"req_id": "r1"}},
		{"empty object", `{}`, logrus.InfoLevel, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, hook := newTestLog(t)
			entries := logLines(t, w, hook, tt.line)
			if len(entries) != 1 {
				t.Fatalf("%d entries", len(entries))
			}
			e := entries[0]
			if e.Level != tt.level || e.Message != tt.msg {
				t.Errorf("level %s message %q, want %s %q", e.Level, e.Message, tt.level, tt.msg)
			}
			if e.Data["stream"] != "stderr" {
				t.Errorf("stream field %v", e.Data["stream"])
			}
			for k, v := range tt.fields {
				got, ok := e.Data[k]
				if v == nil && strings.HasPrefix(k, "child.@") || v == nil && (k == "child.time") {
					if ok {
						t.Errorf("field %s present: %v", k, got)
					}
					continue
				}
				if !ok || !reflect.DeepEqual(got, v) {
					t.Errorf("field %s = %#v (present %v), want %#v", k, got, ok, v)
				}
			}
			for k := range e.Data {
				if k != "stream" && k != "req_id" && !strings.HasPrefix(k, "child.") {
					t.Errorf("unprefixed field %q", k)
				}
			}
		})
	}
}

func TestWorkerLogManyFields(t *testing.T) {
	w, hook := newTestLog(t)
	var sb strings.Builder
	sb.WriteString(`{"msg":"many"`)
	for i := range 40 {
		fmt.Fprintf(&sb, `,"f%d":%d`, i, i)
	}
	sb.WriteString("}")
	entries := logLines(t, w, hook, sb.String())
	if len(entries) != 1 {
		t.Fatalf("%d entries", len(entries))
	}
	data := entries[0].Data
	if data["child.more_fields"] != 8 {
		t.Errorf("more_fields = %v", data["child.more_fields"])
	}
	// 32 fields, more_fields and stream.
	if len(data) != 34 {
		t.Errorf("%d fields", len(data))
	}
}

func TestWorkerLogPlainLines(t *testing.T) {
	tests := []struct {
		name  string
		line  string
		level logrus.Level
		msg   string
	}{
		{"plain", "hello world", logrus.InfoLevel, "hello world"},
		{"debug tag", "[DEBUG] details", logrus.DebugLevel, "[DEBUG] details"},
		{"trace tag", "[TRACE] more", logrus.DebugLevel, "[TRACE] more"},
		{"warn tag", "[WARN] careful", logrus.WarnLevel, "[WARN] careful"},
		{"error tag", "[ERROR] broken", logrus.ErrorLevel, "[ERROR] broken"},
		{"tag after a timestamp", "2024/01/01 00:00:00 [ERROR] broken", logrus.ErrorLevel, "2024/01/01 00:00:00 [ERROR] broken"},
		{"tag too far", strings.Repeat(".", 48) + "[ERROR] late", logrus.InfoLevel, strings.Repeat(".", 48) + "[ERROR] late"},
		{"unknown tag", "[INFO] fine", logrus.InfoLevel, "[INFO] fine"},
		{"lower case tag", "[error] no", logrus.InfoLevel, "[error] no"},
		{"bracket only", "[", logrus.InfoLevel, "["},
		{"invalid JSON", `{"msg": nope`, logrus.InfoLevel, `{"msg": nope`},
		{"JSON array", `[1,2]`, logrus.InfoLevel, `[1,2]`},
		{"control bytes", "a\x00b\x1b[31mc\x7f", logrus.InfoLevel, `a\x00b\x1b[31mc\x7f`},
		{"invalid UTF-8", "caf\xe9 \xff", logrus.InfoLevel, "caf\uFFFD \uFFFD"},
		{"valid UTF-8 and tab", "naïve\tçà ✓", logrus.InfoLevel, "naïve\tçà ✓"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, hook := newTestLog(t)
			entries := logLines(t, w, hook, tt.line)
			if len(entries) != 1 {
				t.Fatalf("%d entries", len(entries))
			}
			if e := entries[0]; e.Level != tt.level || e.Message != tt.msg {
				t.Errorf("got %s %q, want %s %q", e.Level, e.Message, tt.level, tt.msg)
			}
		})
	}
}

func TestWorkerLogTrace(t *testing.T) {
	trace := []string{"", "goroutine 1 [running]:", "main.main()", "\t/src/main.go:12 +0x1d", "exit status 2"}
	for _, first := range []string{
		"panic: runtime error: index out of range",
		"fatal error: concurrent map writes",
		"runtime: goroutine stack exceeds 1000000-byte limit",
		"SIGQUIT: quit",
		"goroutine 7 [running]:",
		"/app/handler.js:12",
	} {
		t.Run(first, func(t *testing.T) {
			w, hook := newTestLog(t)
			w.requests = func() []string { return []string{"req-1"} }
			lines := append([]string{"[WARN] before", first}, trace...)
			lines = append(lines, `{"level":"debug","msg":"json is its own entry"}`)
			entries := logLines(t, w, hook, lines...)
			w.finish()
			entries = hook.AllEntries()
			if len(entries) != 3 {
				t.Fatalf("%d entries, want 3: %v", len(entries), entries)
			}
			if e := entries[0]; e.Level != logrus.WarnLevel || e.Message != "[WARN] before" {
				t.Errorf("entry 0: %s %q", e.Level, e.Message)
			}
			if e := entries[1]; e.Level != logrus.DebugLevel || e.Message != "json is its own entry" {
				t.Errorf("entry 1: %s %q", e.Level, e.Message)
			}
			e := entries[2]
			want := strings.Join(append([]string{first}, trace...), "\n")
			if e.Level != logrus.ErrorLevel || e.Message != first || e.Data["stack"] != want || e.Data["req_id"] != "req-1" {
				t.Errorf("trace entry: %s %q %v, want the stack\n%s", e.Level, e.Message, e.Data, want)
			}
			if tail := w.Tail(time.Time{}); !reflect.DeepEqual(tail, []string{"[WARN] before", first, "json is its own entry"}) {
				t.Errorf("tail %q: want the trace as its first line", tail)
			}
		})
	}
	t.Run("not a trace", func(t *testing.T) {
		w, hook := newTestLog(t)
		lines := []string{"panicking", "goroutine 1 is fine", "goroutine x [", "SIGnal: x", "Sig: x", "/app/x.js:12 thrown", "app.js:x"}
		if entries := logLines(t, w, hook, lines...); len(entries) != len(lines) {
			t.Fatalf("%d entries from %d ordinary lines", len(entries), len(lines))
		}
	})
	t.Run("quiet gap ends it", func(t *testing.T) {
		w, hook := newTestLog(t)
		s := w.sink()
		s.Write([]byte("panic: boom\n\ngoroutine 1 [running]:\n"))
		deadline := time.Now().Add(10 * time.Second)
		for len(hook.AllEntries()) == 0 && time.Now().Before(deadline) {
			time.Sleep(traceGap / 5) // the gap timer is what is tested
		}
		entries := hook.AllEntries()
		if len(entries) != 1 || entries[0].Data["stack"] != "panic: boom\n\ngoroutine 1 [running]:" {
			t.Fatalf("entries %v", entries)
		}
		s.Write([]byte("after\n"))
		if entries := hook.AllEntries(); len(entries) != 2 || entries[1].Message != "after" {
			t.Fatalf("the line after the trace: %v", entries)
		}
	})
	t.Run("capped", func(t *testing.T) {
		w, hook := newTestLog(t)
		lines := []string{"panic: boom"}
		for i := range 2 * maxTrace / 40 {
			lines = append(lines, fmt.Sprintf("main.f%d(...) %s", i, strings.Repeat("x", 20)))
		}
		logLines(t, w, hook, lines...)
		w.finish()
		entries := hook.AllEntries()
		stack, _ := entries[0].Data["stack"].(string)
		if len(stack) > maxTrace+len("\n[truncated]") || !strings.HasSuffix(stack, "\n[truncated]") {
			t.Fatalf("trace of %d bytes, ending %q", len(stack), stack[max(0, len(stack)-20):])
		}
		if len(entries) < 2 || len(entries) > len(lines)/2 {
			t.Fatalf("%d entries: the lines after the cap are logged as lines", len(entries))
		}
	})
	t.Run("sdk stack keeps its lines", func(t *testing.T) {
		w, hook := newTestLog(t)
		entries := logLines(t, w, hook, `{"@level":"error","@message":"handler panic: boom","request_id":"r9","stack":"goroutine 5 [running]:\nmain.h()\n\t/x.go:3\u001b"}`)
		if len(entries) != 1 || entries[0].Data["child.stack"] != "goroutine 5 [running]:\nmain.h()\n\t/x.go:3\\x1b" || entries[0].Data["req_id"] != "r9" {
			t.Fatalf("entries %v", entries)
		}
	})
}

// TestWorkerLogNeverPanicsOrExits feeds lines that would make logrus panic
// or exit if their level were trusted.
func TestWorkerLogNeverPanicsOrExits(t *testing.T) {
	w, hook := newTestLog(t)
	lines := []string{
		`{"level":"panic","msg":"p"}`,
		`{"@level":"PANIC","@message":"p"}`,
		`{"level":"fatal","msg":"f"}`,
		`{"level":"Fatal"}`,
		`panic: real`,
		`{"level":["panic"]}`,
		`{"level":"panic","@level":"fatal"}`,
	}
	entries := logLines(t, w, hook, lines...)
	if len(entries) != len(lines) {
		t.Fatalf("%d entries, want %d", len(entries), len(lines))
	}
	for i, e := range entries {
		if e.Level < logrus.ErrorLevel {
			t.Errorf("entry %d logged at %s", i, e.Level)
		}
	}
}

func TestWorkerLogTail(t *testing.T) {
	t.Run("last lines", func(t *testing.T) {
		w, hook := newTestLog(t)
		var lines []string
		for i := range 50 {
			lines = append(lines, fmt.Sprintf("line %d", i))
		}
		logLines(t, w, hook, lines[:5]...)
		if got := w.Tail(time.Time{}); !reflect.DeepEqual(got, lines[:5]) {
			t.Fatalf("tail %q", got)
		}
		logLines(t, w, hook, lines[5:]...)
		got := w.Tail(time.Time{})
		if !reflect.DeepEqual(got, lines[50-tailLines:]) {
			t.Fatalf("tail %q, want the last %d lines", got, tailLines)
		}
		got[0] = "changed"
		if w.Tail(time.Time{})[0] == "changed" {
			t.Error("Tail returned its own slice")
		}
	})
	t.Run("long lines capped", func(t *testing.T) {
		w, hook := newTestLog(t)
		logLines(t, w, hook, strings.Repeat("x", 2*maxTailLine), "x"+strings.Repeat("é", maxTailLine), "xx"+strings.Repeat("✓", maxTailLine))
		for i, l := range w.Tail(time.Time{}) {
			if len(l) > maxTailLine+len("...") || !strings.HasSuffix(l, "...") {
				t.Errorf("line %d: %d bytes, suffix %q", i, len(l), l[max(0, len(l)-3):])
			}
			if !utf8.ValidString(l) {
				t.Errorf("line %d is not valid UTF-8 after capping: %q", i, l[max(0, len(l)-8):])
			}
		}
	})
	t.Run("sanitized", func(t *testing.T) {
		w, hook := newTestLog(t)
		logLines(t, w, hook, "a\x01\xff")
		if got := w.Tail(time.Time{}); len(got) != 1 || got[0] != "a\\x01\uFFFD" {
			t.Errorf("tail %q", got)
		}
	})
	t.Run("since", func(t *testing.T) {
		w, hook := newTestLog(t)
		logLines(t, w, hook, "earlier", "request")
		since := time.Now()
		for w.tail[len(w.tail)-1].at.Equal(since) {
			since = time.Now() // a coarse clock
		}
		logLines(t, w, hook, "crash")
		if got := w.Tail(since); !reflect.DeepEqual(got, []string{"crash"}) {
			t.Errorf("tail since %q", got)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		w, _ := newTestLog(t)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := w.sink()
				for i := range 100 {
					fmt.Fprintf(s, "%d %d\n", g, i)
					_ = w.Tail(time.Time{})
				}
			}()
		}
		wg.Wait()
		if n := len(w.Tail(time.Time{})); n != tailLines {
			t.Errorf("%d lines", n)
		}
	})
}

func TestSanitize(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", ""},
		{"plain ascii ~", "plain ascii ~"},
		{"tab\tkept", "tab\tkept"},
		{"nul\x00", `nul\x00`},
		{"nl\ncr\r", `nl\x0acr\x0d`},
		{"esc\x1b[0m", `esc\x1b[0m`},
		{"del\x7f", `del\x7f`},
		{"ünïcode ✓ 🎉", "ünïcode ✓ 🎉"},
		{"bad \xff\xfe", "bad \uFFFD\uFFFD"},
		{"truncated rune \xe2\x9c", "truncated rune \uFFFD\uFFFD"},
		{"surrogate \xed\xa0\x80", "surrogate \uFFFD\uFFFD\uFFFD"},
		{"overlong \xc0\xaf", "overlong \uFFFD\uFFFD"},
		{"c1 \u0085 kept", "c1 \u0085 kept"},
		{"literal \uFFFD", "literal \uFFFD"},
	}
	for _, tt := range tests {
		got := sanitize([]byte(tt.in))
		if got != tt.want {
			t.Errorf("sanitize(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if !utf8.ValidString(got) {
			t.Errorf("sanitize(%q) is not valid UTF-8", tt.in)
		}
	}
}

func FuzzSanitize(f *testing.F) {
	f.Add([]byte("hello\x00\xff"))
	f.Add([]byte("ünï\tcode"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := sanitize(b)
		if !utf8.ValidString(s) {
			t.Fatalf("invalid UTF-8: %q", s)
		}
		for _, r := range s {
			if r < 0x20 && r != '\t' || r == 0x7f {
				t.Fatalf("control byte %#x left in %q", r, s)
			}
		}
		if bytes.Equal([]byte(s), b) != (utf8.Valid(b) && !bytes.ContainsFunc(b, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f })) {
			t.Fatalf("clean input changed or dirty input kept: %q -> %q", b, s)
		}
	})
}

func TestHclogAdapter(t *testing.T) {
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	h := newHclog(logrus.NewEntry(logger))

	var _ hclog.Logger = h
	if h.GetLevel() != hclog.Off {
		t.Errorf("GetLevel = %v: go-plugin would parse worker stderr itself", h.GetLevel())
	}
	if !h.IsDebug() || h.IsTrace() {
		t.Errorf("IsDebug %v IsTrace %v", h.IsDebug(), h.IsTrace())
	}

	named := h.Named("plugin").Named("sub").With("k1", "v1")
	named.Error("boom", "k2", 2, "dangling")
	entries := hook.AllEntries()
	if len(entries) != 1 {
		t.Fatalf("%d entries", len(entries))
	}
	e := entries[0]
	if e.Level != logrus.DebugLevel || e.Message != "boom" {
		t.Errorf("entry %s %q: every go-plugin message is debug", e.Level, e.Message)
	}
	want := logrus.Fields{"component": "go-plugin", "logger": "plugin.sub", "k1": "v1", "k2": 2}
	if !reflect.DeepEqual(e.Data, want) {
		t.Errorf("fields %v, want %v", e.Data, want)
	}
	if got := named.ResetNamed("other").Name(); got != "other" {
		t.Errorf("ResetNamed: %q", got)
	}
	if got := named.ImpliedArgs(); !reflect.DeepEqual(got, []any{"k1", "v1"}) {
		t.Errorf("ImpliedArgs %v", got)
	}

	hook.Reset()
	sl := h.StandardLogger(nil)
	sl.Print("from std log")
	w := h.StandardWriter(nil)
	w.Write([]byte("one\ntwo\n"))
	var msgs []string
	for _, e := range hook.AllEntries() {
		msgs = append(msgs, e.Message)
	}
	if !reflect.DeepEqual(msgs, []string{"from std log", "one", "two"}) {
		t.Errorf("standard writer messages %q", msgs)
	}

	hook.Reset()
	logger.SetLevel(logrus.InfoLevel)
	h.Info("hidden")
	if len(hook.AllEntries()) != 0 || h.IsDebug() {
		t.Error("go-plugin messages logged above debug level")
	}
}
