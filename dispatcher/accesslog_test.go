package dispatcher

import (
	"context"
	"io"
	"maps"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// formatters are the formatters the access log builds lines for itself.
var formatters = []struct {
	name string
	f    func() logrus.Formatter
}{
	{"text", func() logrus.Formatter {
		return &logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000Z07:00"}
	}},
	{"text-default", func() logrus.Formatter { return &logrus.TextFormatter{} }},
	{"text-multiline", func() logrus.Formatter {
		return &TextFormatter{TextFormatter: logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000Z07:00"}}
	}},
	{"text-no-time", func() logrus.Formatter { return &logrus.TextFormatter{DisableTimestamp: true} }},
	{"json", func() logrus.Formatter { return &logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano} }},
	{"json-no-html-escape", func() logrus.Formatter { return &logrus.JSONFormatter{DisableHTMLEscape: true} }},
	{"json-no-time", func() logrus.Formatter { return &logrus.JSONFormatter{DisableTimestamp: true} }},
}

// builtAccessLog returns an access log that builds its lines itself, for a
// logger with formatter f and the entry's own fields.
func builtAccessLog(tb testing.TB, f logrus.Formatter, own logrus.Fields) *accessLog {
	tb.Helper()
	lw := NewLogWriter(io.Discard, LogWriterConfig{})
	tb.Cleanup(func() { lw.Close(context.Background()) })
	logger := logrus.New()
	logger.Out, logger.Formatter = lw, f
	a := newAccessLog(logrus.NewEntry(logger).WithFields(own), true)
	if a.out == nil {
		tb.Fatalf("%T with fields %v: the access log does not build its lines", f, own)
	}
	return a
}

// logrusLine is the line logrus's own formatter makes of the same entry.
func logrusLine(tb testing.TB, a *accessLog, fs []field, now time.Time) string {
	tb.Helper()
	data := maps.Clone(a.log.Data)
	maps.Copy(data, logrusFields(fs))
	e := &logrus.Entry{Logger: a.log.Logger, Data: data, Time: now, Level: logrus.InfoLevel, Message: accessMessage}
	b, err := a.log.Logger.Formatter.Format(e)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

type accessCase struct {
	method, target, host, userAgent, client, id string
	status, pid                                 int
	bytes                                       int64
	d                                           time.Duration
}

func (c accessCase) fields(tb testing.TB, a *accessLog, buf *[len(accessKeys)]field) []field {
	tb.Helper()
	r := httptest.NewRequest("GET", "/", nil)
	r.Method, r.Host = c.method, c.host
	u, err := r.URL.Parse(c.target)
	if err != nil {
		tb.Skip("not a request target")
	}
	r.URL = u
	r.Header.Set("User-Agent", c.userAgent)
	return a.fields(buf, r, &info{id: c.id, pid: c.pid, status: c.status, bytes: c.bytes}, c.client, c.d)
}

// check fails tb unless the access log's own line for c is logrus's.
func (c accessCase) check(tb testing.TB, a *accessLog, now time.Time) {
	tb.Helper()
	var buf [len(accessKeys)]field
	fs := c.fields(tb, a, &buf)
	got := string(a.appendLine(nil, now, fs))
	if want := logrusLine(tb, a, fs, now); got != want {
		tb.Errorf("%+v:\n got %q\nwant %q", c, got, want)
	}
}

var accessCases = []accessCase{
	{method: "GET", target: "/", host: "localhost:8080", userAgent: "curl/8.5.0", client: "127.0.0.1", id: "1a2b3c4d-1", status: 200, pid: 4242, bytes: 12, d: 123 * time.Microsecond},
	{method: "POST", target: "/a%20b/c?x=1&y=%22q%22", host: "example.com", userAgent: `Mozilla/5.0 (X11; Linux x86_64) "quoted" \ back`, client: "2001:db8::1", id: "req id with spaces", status: 502, bytes: 1 << 40, d: 90 * time.Minute},
	{method: "GET", target: "/<script>&amp;/é/\u2028\u2029", host: "bücher.example", userAgent: "\x01\x1f\x7f\t\n\r\b\f", client: "", id: "x", status: 499, d: 0},
	{method: "PUT", target: "/big", host: "", userAgent: "", client: "unix", id: "a=b", status: 413, pid: 0, bytes: 0, d: time.Microsecond},
	{method: "GET", target: "/q?", host: "h", userAgent: "ua", client: "c", id: "i", status: 200, d: 1500 * time.Millisecond},
	{method: "GET", target: "/q?" + strings.Repeat("long&", 100), host: "h", userAgent: string([]byte{0xff, 0xfe, 'a', 0xc3}), client: "c", id: "i", status: 200, d: 1e15},
}

func TestAccessLineIsLogrusLine(t *testing.T) {
	now := time.Date(2026, 12, 7, 18, 49, 1, 123456789, time.FixedZone("X", 3600))
	owns := []logrus.Fields{nil, {"function": "hello"}, {"aaa": "first", "zzz": "last one", "m": "<&>"}}
	for _, ft := range formatters {
		for _, own := range owns {
			a := builtAccessLog(t, ft.f(), own)
			for _, c := range accessCases {
				c.check(t, a, now)
				c.check(t, a, now.UTC())
			}
		}
	}
}

func FuzzAccessLine(f *testing.F) {
	for _, c := range accessCases {
		f.Add(c.method, c.target, c.host, c.userAgent, c.client, c.id, c.status, c.pid, c.bytes, int64(c.d))
	}
	now := time.Date(2026, 12, 7, 18, 49, 1, 123456789, time.UTC)
	logs := make([]*accessLog, len(formatters))
	for i, ft := range formatters {
		logs[i] = builtAccessLog(f, ft.f(), logrus.Fields{"function": "fn"})
	}
	f.Fuzz(func(t *testing.T, method, target, host, userAgent, client, id string, status, pid int, bytes, d int64) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		c := accessCase{method: method, target: target, host: host, userAgent: userAgent, client: client, id: id,
			status: status, pid: pid, bytes: bytes, d: time.Duration(d)}
		for _, a := range logs {
			c.check(t, a, now)
		}
	})
}

// TestAccessLogBuildsLinesOnlyWhenItCan checks what makes the access log
// go through logrus instead: anything whose output it cannot reproduce.
func TestAccessLogBuildsLinesOnlyWhenItCan(t *testing.T) {
	lw := NewLogWriter(io.Discard, LogWriterConfig{})
	defer lw.Close(context.Background())
	text := func() logrus.Formatter { return &logrus.TextFormatter{} }
	for _, tc := range []struct {
		name  string
		out   io.Writer
		f     logrus.Formatter
		own   logrus.Fields
		setup func(*logrus.Logger)
		built bool
	}{
		{name: "text", out: lw, f: text(), built: true},
		{name: "json", out: lw, f: &logrus.JSONFormatter{}, built: true},
		{name: "string field", out: lw, f: text(), own: logrus.Fields{"function": "x"}, built: true},
		{name: "not a LogWriter", out: io.Discard, f: text()},
		{name: "hook", out: lw, f: text(), setup: func(l *logrus.Logger) { l.AddHook(&countHook{}) }},
		{name: "caller", out: lw, f: text(), setup: func(l *logrus.Logger) { l.SetReportCaller(true) }},
		{name: "int field", out: lw, f: text(), own: logrus.Fields{"n": 1}},
		{name: "clashing field", out: lw, f: text(), own: logrus.Fields{"msg": "x"}},
		{name: "access field", out: lw, f: text(), own: logrus.Fields{"path": "x"}},
		{name: "colors", out: lw, f: &logrus.TextFormatter{ForceColors: true}},
		{name: "quoting", out: lw, f: &logrus.TextFormatter{ForceQuote: true}},
		{name: "field map", out: lw, f: &logrus.JSONFormatter{FieldMap: logrus.FieldMap{logrus.FieldKeyMsg: "message"}}},
		{name: "pretty", out: lw, f: &logrus.JSONFormatter{PrettyPrint: true}},
		{name: "other formatter", out: lw, f: &countFormatter{}},
	} {
		logger := logrus.New()
		logger.Out, logger.Formatter = tc.out, tc.f
		if tc.setup != nil {
			tc.setup(logger)
		}
		if a := newAccessLog(logrus.NewEntry(logger).WithFields(tc.own), true); (a.out != nil) != tc.built {
			t.Errorf("%s: builds its lines: %v, want %v", tc.name, a.out != nil, tc.built)
		}
	}
}

type countHook struct{ n int }

func (h *countHook) Levels() []logrus.Level     { return logrus.AllLevels }
func (h *countHook) Fire(e *logrus.Entry) error { h.n++; return nil }

type countFormatter struct{ n int }

func (f *countFormatter) Format(e *logrus.Entry) ([]byte, error) { f.n++; return []byte("x\n"), nil }

func TestAccessLineAllocatesNothing(t *testing.T) {
	a := builtAccessLog(t, formatters[0].f(), logrus.Fields{"function": "hello"})
	r := httptest.NewRequest("GET", "/path?q=1", nil)
	r.Header.Set("User-Agent", "test")
	in := &info{id: "id", pid: 1, status: 200, bytes: 12}
	a.write(r, in, "127.0.0.1", time.Millisecond) // fills the pool
	if n := testing.AllocsPerRun(100, func() { a.write(r, in, "127.0.0.1", time.Millisecond) }); n != 0 {
		t.Errorf("%v allocations per line", n)
	}
}

func TestClientAddr(t *testing.T) {
	s, err := New(Config{Invoker: nopInvoker{}, TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		remote string
		xff    []string
		want   string
	}{
		{"192.0.2.1:1234", nil, "192.0.2.1"},
		{"192.0.2.1:1234", []string{"198.51.100.1"}, "192.0.2.1"}, // untrusted peer: its XFF is ignored
		{"[2001:db8::1]:80", nil, "2001:db8::1"},
		{"[::ffff:192.0.2.1]:80", nil, "192.0.2.1"},
		{"10.0.0.1:80", nil, "10.0.0.1"},
		{"10.0.0.1:80", []string{"198.51.100.1"}, "198.51.100.1"},
		{"10.0.0.1:80", []string{"203.0.113.9, 198.51.100.1, 10.0.0.2"}, "198.51.100.1"},
		{"10.0.0.1:80", []string{"203.0.113.9", "198.51.100.1 , 10.0.0.2,"}, "198.51.100.1"},
		{"10.0.0.1:80", []string{"10.1.1.1, 10.0.0.2"}, "10.1.1.1"}, // all trusted: the first
		{"10.0.0.1:80", []string{"not-an-ip, 10.0.0.2"}, "not-an-ip"},
		{"[::1]:80", []string{"2001:db8::7"}, "2001:db8::7"},
		{"10.0.0.1:80", []string{""}, "10.0.0.1"},
		{"@", nil, "@"}, // not ip:port (a unix socket): as is
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != nil {
			r.Header[headerXFF] = tc.xff
		}
		if got := s.clientAddr(r); got != tc.want {
			t.Errorf("%s %q: %q, want %q", tc.remote, tc.xff, got, tc.want)
		}
	}
}

type nopInvoker struct{ Invoker }

func BenchmarkAccessLine(b *testing.B) {
	for _, ft := range formatters[:4:4] {
		b.Run(ft.name, func(b *testing.B) {
			a := builtAccessLog(b, ft.f(), logrus.Fields{"function": "hello"})
			r := httptest.NewRequest("GET", "/path?q=1", nil)
			r.Header.Set("User-Agent", "wrk")
			in := &info{id: "1a2b3c4d-1kz", pid: 4242, status: 200, bytes: 12}
			b.ReportAllocs()
			for b.Loop() {
				a.write(r, in, "127.0.0.1", 123*time.Microsecond)
			}
		})
	}
}
