package dispatcher

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/testbin"
	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

var bins map[string]string

func TestMain(m *testing.M) {
	os.Exit(testbin.Run(m, &bins, testbin.Workers()...))
}

type front struct {
	url    string
	addr   string // host:port
	pool   *workers.Pool
	hook   *test.Hook
	client *http.Client // speaks the front's protocol; no overall timeout
}

// frontOpts configures startFrontWith.
type frontOpts struct {
	workers workers.Config // Path, Logger and SocketDir are filled in
	server  Config         // Invoker and Logger are filled in; AccessLog is forced on
	http2   bool           // serve HTTP/2 over TLS (a test certificate) instead of HTTP/1.1
}

// startFront runs a real pool of the named test worker behind a Server on a
// loopback listener.
func startFront(tb testing.TB, worker string, cfg workers.Config) *front {
	tb.Helper()
	return startFrontWith(tb, worker, frontOpts{workers: cfg})
}

func startFrontWith(tb testing.TB, worker string, o frontOpts) *front {
	tb.Helper()
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	log := logrus.NewEntry(logger)
	sockets, err := os.MkdirTemp("", "dt")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(sockets) })
	cfg := o.workers
	cfg.Path, cfg.Logger, cfg.SocketDir = bins[worker], log, sockets
	if cfg.Size == 0 {
		cfg.Size = 1
	}
	pool, err := workers.NewPool(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := pool.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	scfg := o.server
	scfg.Invoker, scfg.Logger, scfg.AccessLog = pool, log, true
	srv, err := New(scfg)
	if err != nil {
		tb.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv)
	if o.http2 {
		ts.EnableHTTP2 = true
		ts.StartTLS()
	} else {
		ts.Start()
	}
	tb.Cleanup(func() {
		ts.Close()
		if err := pool.Close(context.Background()); err != nil {
			tb.Errorf("pool.Close: %v", err)
		}
	})
	return &front{url: ts.URL, addr: ts.Listener.Addr().String(), pool: pool, hook: hook, client: ts.Client()}
}

func mustDo(tb testing.TB, req *http.Request) (*http.Response, string) {
	tb.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp, string(b)
}

func mustGet(tb testing.TB, url string) (*http.Response, string) {
	tb.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return mustDo(tb, req)
}

func entry(h *test.Hook, msg string) *logrus.Entry {
	for _, e := range h.AllEntries() {
		if strings.Contains(e.Message, msg) {
			return e
		}
	}
	return nil
}

func waitEntry(tb testing.TB, h *test.Hook, msg string) *logrus.Entry {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d := time.Millisecond; ; d = min(2*d, 50*time.Millisecond) {
		if e := entry(h, msg); e != nil {
			return e
		}
		if time.Now().After(deadline) {
			for _, e := range h.AllEntries() {
				tb.Logf("log: %s %q %v", e.Level, e.Message, e.Data)
			}
			tb.Fatalf("no log entry %q", msg)
		}
		time.Sleep(d)
	}
}

func TestHello(t *testing.T) {
	f := startFront(t, "hello", workers.Config{Size: 2})
	resp, body := mustGet(t, f.url+"/")
	if resp.StatusCode != 200 || body != "hello world\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q, want the sniffed text/plain", ct)
	}
	if resp.ContentLength != int64(len(body)) {
		t.Errorf("Content-Length %d, want %d", resp.ContentLength, len(body))
	}
	if resp.Header.Get(HeaderRequestID) == "" || resp.Header.Get(HeaderError) != "" {
		t.Errorf("headers %v", resp.Header)
	}
}

func TestRequestFidelity(t *testing.T) {
	f := startFront(t, "echo", workers.Config{})
	body := "x=1&y=2"
	req, _ := http.NewRequest("POST", f.url+"/json?a=1&a=2&b=%20c", strings.NewReader(body))
	req.Host = "example.test:8443"
	req.Header.Add("X-Multi", "one")
	req.Header.Add("X-Multi", "two")
	req.Header.Set("X-Request-Id", "client-chosen-id")
	req.Header.Set("Connection", "keep-alive, X-Hop")
	req.Header.Set("X-Hop", "must not pass")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, out := mustDo(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	var got struct {
		Method, URI, Path, Query, Proto, Host, RemoteAddr, RequestID, Body string
		Header                                                             http.Header
		ContentLength                                                      int64
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	want := []struct{ name, got, want string }{
		{"method", got.Method, "POST"},
		{"uri", got.URI, "/json?a=1&a=2&b=%20c"},
		{"path", got.Path, "/json"},
		{"query", got.Query, "a=1&a=2&b=%20c"},
		{"proto", got.Proto, "HTTP/1.1"},
		{"host", got.Host, "example.test:8443"},
		{"body", got.Body, body},
		{"request id", got.RequestID, "client-chosen-id"},
		{"X-Request-Id header", got.Header.Get("X-Request-Id"), "client-chosen-id"},
		{"multi header", strings.Join(got.Header["X-Multi"], ","), "one,two"},
		{"content type", got.Header.Get("Content-Type"), "application/x-www-form-urlencoded"},
		{"hop header named by Connection", got.Header.Get("X-Hop"), ""},
		{"Connection", got.Header.Get("Connection"), ""},
		{"response request id", resp.Header.Get("X-Request-Id"), "client-chosen-id"},
		{"two Set-Cookie", strings.Join(resp.Header.Values("Set-Cookie"), ";"), "a=1;b=2"},
	}
	for _, w := range want {
		if w.got != w.want {
			t.Errorf("%s: %q, want %q", w.name, w.got, w.want)
		}
	}
	if got.ContentLength != int64(len(body)) {
		t.Errorf("ContentLength %d, want %d", got.ContentLength, len(body))
	}
	// RemoteAddr is the real client: the address our connection came from.
	host, _, err := net.SplitHostPort(got.RemoteAddr)
	if err != nil || host != "127.0.0.1" {
		t.Errorf("RemoteAddr %q", got.RemoteAddr)
	}
}

func TestGeneratedRequestIDsAreUniqueAndReachTheHandler(t *testing.T) {
	f := startFront(t, "echo", workers.Config{})
	seen := map[string]bool{}
	for range 5 {
		resp, out := mustGet(t, f.url+"/json")
		id := resp.Header.Get(HeaderRequestID)
		if id == "" || seen[id] || !strings.Contains(out, `"RequestID":"`+id+`"`) {
			t.Fatalf("id %q (seen %v) not in the handler's view: %s", id, seen[id], out)
		}
		seen[id] = true
	}
}

func TestStreamedBodies(t *testing.T) {
	f := startFront(t, "echo", workers.Config{})
	for _, size := range []int{0, 1, ipc.ChunkSize - 1, ipc.ChunkSize, ipc.ChunkSize + 1, 5 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			payload := make([]byte, size)
			rand.Read(payload)
			req, _ := http.NewRequest("POST", f.url+"/?trailer=1", bytes.NewReader(payload))
			resp, out := mustDo(t, req)
			if resp.StatusCode != 200 || out != string(payload) {
				t.Fatalf("status %d, echoed %d bytes, want %d identical", resp.StatusCode, len(out), size)
			}
			if got := resp.Trailer.Get("X-Checksum"); got != fmt.Sprint(size) {
				t.Errorf("trailer X-Checksum %q, want %d", got, size)
			}
		})
	}
	// A chunked upload (unknown length).
	pr, pw := io.Pipe()
	go func() {
		for range 100 {
			pw.Write(bytes.Repeat([]byte("0123456789"), 1000))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", f.url+"/", pr)
	resp, out := mustDo(t, req)
	if resp.StatusCode != 200 || len(out) != 1000000 {
		t.Fatalf("chunked upload: %d, %d bytes", resp.StatusCode, len(out))
	}
}

func TestPanicGives500AndWorkerSurvives(t *testing.T) {
	f := startFront(t, "panic", workers.Config{})
	_, before := mustGet(t, f.url+"/")
	resp, body := mustGet(t, f.url+"/panic")
	if resp.StatusCode != 500 || !strings.Contains(body, "Internal Server Error") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	_, after := mustGet(t, f.url+"/")
	if before != after {
		t.Fatalf("worker changed after a panic: %q then %q", before, after)
	}
	e := waitEntry(t, f.hook, "handler panic: boom in handler")
	if e.Level != logrus.ErrorLevel || !strings.Contains(fmt.Sprint(e.Data["child.stack"]), "main.main") {
		t.Fatalf("panic log entry %v %v", e.Level, e.Data)
	}
	if e.Data["req_id"] != resp.Header.Get(HeaderRequestID) {
		t.Errorf("panic log req_id %v, want %s", e.Data["req_id"], resp.Header.Get(HeaderRequestID))
	}
}

func TestPanicAfterHeadCutsTheConnection(t *testing.T) {
	f := startFront(t, "panic", workers.Config{})
	resp, err := http.Get(f.url + "/late")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("read %q without error: the client cannot tell the response is incomplete", b)
	}
	if resp.StatusCode != 200 || string(b) != "partial" {
		t.Errorf("%d %q", resp.StatusCode, b)
	}
	if r, _ := mustGet(t, f.url+"/"); r.StatusCode != 200 {
		t.Fatalf("next request: %d", r.StatusCode)
	}
}

func TestCrashGives502(t *testing.T) {
	f := startFront(t, "crash", workers.Config{Size: 2})
	resp, body := mustGet(t, f.url+"/exit")
	if resp.StatusCode != 502 || resp.Header.Get(HeaderError) != "true" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") || !strings.Contains(body, "502 Bad Gateway") {
		t.Fatalf("%d %v %q", resp.StatusCode, resp.Header, body)
	}
	if resp.Header.Get("Set-Cookie") != "" || resp.Header.Get("X-Worker-Pid") != "" {
		t.Errorf("handler headers leaked into the error response: %v", resp.Header)
	}
	e := waitEntry(t, f.hook, "worker failed during the request")
	if e.Data["req_id"] != resp.Header.Get(HeaderRequestID) || e.Data["exit"] != "exited with status 3" ||
		!strings.Contains(fmt.Sprint(e.Data["stderr"]), "crash: exiting with status 3 as asked") {
		t.Fatalf("crash log entry: %v", e.Data)
	}
	if r, b := mustGet(t, f.url+"/"); r.StatusCode != 200 || b != "ok\n" {
		t.Fatalf("after the crash: %d %q", r.StatusCode, b)
	}
}

func TestHangGives504(t *testing.T) {
	f := startFront(t, "hang", workers.Config{Timeout: 300 * time.Millisecond})
	resp, body := mustGet(t, f.url+"/hang")
	if resp.StatusCode != 504 || resp.Header.Get(HeaderError) != "true" || !strings.Contains(body, "300ms") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	e := waitEntry(t, f.hook, "request timed out; worker killed")
	if e.Data["req_id"] != resp.Header.Get(HeaderRequestID) {
		t.Errorf("timeout log entry %v", e.Data)
	}
	if r, _ := mustGet(t, f.url+"/"); r.StatusCode != 200 {
		t.Fatalf("after the timeout: %d", r.StatusCode)
	}
}

func TestInvalidResponseHeaderIsRefused(t *testing.T) {
	f := startFront(t, "panic", workers.Config{})
	resp, body := mustGet(t, f.url+"/badheader")
	if resp.StatusCode != 502 || strings.Contains(body, "should not reach") || resp.Header.Get("Set-Cookie") != "" {
		t.Fatalf("%d %v %q", resp.StatusCode, resp.Header, body)
	}
	e := waitEntry(t, f.hook, "worker failed")
	if !strings.Contains(fmt.Sprint(e.Data["error"]), `"X-Injected"`) {
		t.Fatalf("log does not name the bad field: %v", e.Data)
	}
}

func TestAccessLog(t *testing.T) {
	f := startFront(t, "hello", workers.Config{})
	req, _ := http.NewRequest("GET", f.url+"/some/path?secret=1", nil)
	req.Header.Set("User-Agent", "test-agent/1.0")
	req.Host = "app.example"
	resp, _ := mustDo(t, req)
	pid := resp.Header.Get("X-Worker-Pid")
	e := waitEntry(t, f.hook, "request")
	want := map[string]any{
		"method": "GET", "path": "/some/path", "query": "secret=1", "status": 200, "bytes": int64(12),
		"req_id": resp.Header.Get(HeaderRequestID), "client": "127.0.0.1", "host": "app.example",
		"user_agent": "test-agent/1.0",
	}
	for k, v := range want {
		if e.Data[k] != v {
			t.Errorf("access log %s = %v (%T), want %v", k, e.Data[k], e.Data[k], v)
		}
	}
	if fmt.Sprint(e.Data["pid"]) != pid {
		t.Errorf("access log pid %v, want %s", e.Data["pid"], pid)
	}
	if _, ok := e.Data["duration_ms"].(float64); !ok {
		t.Errorf("duration_ms %v", e.Data["duration_ms"])
	}
}

func TestAccessLogOmitQuery(t *testing.T) {
	f := startFrontWith(t, "hello", frontOpts{server: Config{AccessLogOmitQuery: true}})
	req, _ := http.NewRequest("GET", f.url+"/p?secret=1", nil)
	req.Header.Set("User-Agent", "")
	mustDo(t, req)
	e := waitEntry(t, f.hook, "request")
	if e.Data["path"] != "/p" {
		t.Errorf("path %v", e.Data["path"])
	}
	for _, k := range []string{"query", "user_agent"} { // left out, and empty
		if v, ok := e.Data[k]; ok {
			t.Errorf("%s = %q in the access log", k, v)
		}
	}
}

func TestClientGoneCancelsHandler(t *testing.T) {
	f := startFront(t, "hang", workers.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/ctx", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitEntry(t, f.hook, "hang: waiting")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v", err)
	}
	waitEntry(t, f.hook, "hang: context cancelled: context canceled")
	if r, _ := mustGet(t, f.url+"/"); r.StatusCode != 200 {
		t.Fatalf("next request: %d", r.StatusCode)
	}
}

// BenchmarkServeHTTP measures the dispatcher's side of a small GET through a
// real worker (the allocations are the dispatcher's: the worker is another
// process). The HTTP server and client are left out: the handler is called
// directly. The access log is off, written through logrus to a file (as
// before LogWriter), or written through a LogWriter to a file; cpu-ns/op is
// the CPU time of the whole test process (the LogWriter's goroutine
// included) per request, which depends less than ns/op on what else runs
// on the machine.
func BenchmarkServeHTTP(b *testing.B) {
	logger, _ := test.NewNullLogger()
	pool, err := workers.NewPool(workers.Config{Path: bins["hello"], Size: 1, Logger: logrus.NewEntry(logger)})
	if err != nil {
		b.Fatal(err)
	}
	if err := pool.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer pool.Close(context.Background())
	for _, bc := range []struct {
		name string
		out  func(f *os.File) io.Writer
	}{
		{"access-log=off", nil},
		{"access-log=logrus", func(f *os.File) io.Writer { return f }},
		{"access-log=logwriter", func(f *os.File) io.Writer { return NewLogWriter(f, LogWriterConfig{}) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			logger := logrus.New()
			logger.Out = io.Discard
			if bc.out != nil {
				f, err := os.Create(b.TempDir() + "/log")
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				logger.Out = bc.out(f)
				if lw, ok := logger.Out.(*LogWriter); ok {
					defer lw.Close(context.Background())
				}
			}
			logger.Formatter = &logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000Z07:00"}
			srv, err := New(Config{Invoker: pool, Logger: logrus.NewEntry(logger), AccessLog: bc.out != nil})
			if err != nil {
				b.Fatal(err)
			}
			req := httptest.NewRequest("GET", "/path?q=1", nil)
			req.Header.Set("User-Agent", "bench")
			w := &discardWriter{h: make(http.Header)}
			b.ReportAllocs()
			cpu0 := processCPU(b)
			for b.Loop() {
				clear(w.h)
				srv.ServeHTTP(w, req)
				if w.status != 200 {
					b.Fatal(w.status)
				}
			}
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU returns the CPU time (user and system) the test process has
// used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
