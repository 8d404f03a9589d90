package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/testbin"
	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"
)

var bins map[string]string

func TestMain(m *testing.M) {
	os.Exit(testbin.Run(m, &bins, testbin.Workers()...))
}

type testPool struct {
	*Pool
	hook      *test.Hook
	socketDir string
}

// startPool starts a pool of the named test worker; cleanup closes it and
// checks that no worker process or socket is left.
func startPool(tb testing.TB, worker string, cfg Config) *testPool {
	tb.Helper()
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	cfg.Path = bins[worker]
	if cfg.Size == 0 {
		cfg.Size = 1
	}
	cfg.SocketDir = shortTempDir(tb)
	cfg.Logger = logrus.NewEntry(logger)
	p, err := NewPool(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tp := &testPool{Pool: p, hook: hook, socketDir: cfg.SocketDir}
	tb.Cleanup(func() {
		pids := p.Workers()
		if err := p.Close(context.Background()); err != nil {
			tb.Errorf("Close: %v", err)
		}
		for _, pid := range pids {
			waitGone(tb, pid)
		}
		if left, _ := os.ReadDir(cfg.SocketDir); len(left) > 0 {
			tb.Errorf("socket directory not empty after Close: %v", left)
		}
	})
	return tp
}

// roundTripper is a *Pool or a *Function.
type roundTripper interface {
	RoundTrip(ctx context.Context, req *ipc.Request, body io.Reader) (*Response, error)
}

// get sends a bodiless GET and returns the status, body and pid.
func get(ctx context.Context, p roundTripper, path string) (int, string, int, error) {
	req := &ipc.Request{Method: "GET", URI: path, Proto: "HTTP/1.1", Host: "test", ContentLength: 0, EOF: true}
	resp, err := p.RoundTrip(ctx, req, nil)
	if err != nil {
		return 0, "", 0, err
	}
	defer resp.Close()
	var body strings.Builder
	for {
		b, err := resp.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return resp.Status, body.String(), resp.PID, err
		}
		body.Write(b)
	}
	return resp.Status, body.String(), resp.PID, nil
}

// shortTempDir returns a temporary directory whose path is short enough for
// unix sockets below it (t.TempDir embeds the test name).
func shortTempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "wt")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is dead for our purposes (its parent reaps it).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// waitGone polls with backoff until pid no longer runs.
func waitGone(tb testing.TB, pid int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d := time.Millisecond; alive(pid); d = min(2*d, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("process %d still running", pid)
		}
		time.Sleep(d)
	}
}

// waitFor polls cond with backoff until it holds or fails the test.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d := time.Millisecond; !cond(); d = min(2*d, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(d)
	}
}

// logLine returns the first entry whose message contains s.
func logLine(h *test.Hook, s string) *logrus.Entry {
	for _, e := range h.AllEntries() {
		if strings.Contains(e.Message, s) {
			return e
		}
	}
	return nil
}

func TestRoundTrip(t *testing.T) {
	p := startPool(t, "hello", Config{Size: 2})
	for i := range 20 {
		status, body, pid, err := get(context.Background(), p.Pool, "/")
		if err != nil || status != 200 || body != "hello world\n" {
			t.Fatalf("request %d: %d %q %v", i, status, body, err)
		}
		if !alive(pid) {
			t.Fatalf("response names pid %d, which is not running", pid)
		}
	}
	if n := len(p.Workers()); n != 2 {
		t.Fatalf("%d workers, want 2", n)
	}
}

func TestCrashIsReportedAndReplaced(t *testing.T) {
	tests := []struct {
		path   string
		how    string
		stderr string
	}{
		{"/exit", "exited with status 3", "crash: exiting with status 3 as asked"},
		{"/kill", "killed by signal Killed", "crash: killing myself"},
		{"/fatal", "exited with status 2", "stack overflow"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			p := startPool(t, "crash", Config{Size: 1})
			before := p.Workers()
			_, _, _, err := get(context.Background(), p.Pool, tt.path)
			var xe *ExitError
			if !errors.As(err, &xe) {
				t.Fatalf("error %v (%T), want *ExitError", err, err)
			}
			if xe.PID != before[0] || xe.How() != tt.how {
				t.Errorf("ExitError pid %d %q, want pid %d %q", xe.PID, xe.How(), before[0], tt.how)
			}
			if !strings.Contains(strings.Join(xe.Stderr, "\n"), tt.stderr) {
				t.Errorf("stderr tail %q lacks %q", xe.Stderr, tt.stderr)
			}
			waitFor(t, "a replacement worker", func() bool {
				w := p.Workers()
				return len(w) == 1 && w[0] != before[0]
			})
			if status, body, _, err := get(context.Background(), p.Pool, "/"); err != nil || status != 200 || body != "ok\n" {
				t.Fatalf("after the crash: %d %q %v", status, body, err)
			}
			waitFor(t, "the exit log line", func() bool { return logLine(p.hook, "worker exited unexpectedly") != nil })
		})
	}
}

func TestCrashDoesNotDisturbOtherWorkers(t *testing.T) {
	p := startPool(t, "crash", Config{Size: 2, Concurrency: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				status, _, _, err := get(context.Background(), p.Pool, "/")
				if err != nil && !errors.As(err, new(*ExitError)) {
					errs <- err
				} else if err == nil && status != 200 {
					errs <- fmt.Errorf("status %d", status)
				}
			}
		}()
	}
	for range 3 {
		if _, _, _, err := get(context.Background(), p.Pool, "/exit"); !errors.As(err, new(*ExitError)) {
			t.Errorf("crash request: %v", err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("healthy request failed with a non-crash error: %v", err)
	}
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Timeout: 300 * time.Millisecond})
	pid := p.Workers()[0]
	_, _, _, err := get(context.Background(), p.Pool, "/spawn")
	var te *TimeoutError
	if !errors.As(err, &te) || !errors.Is(err, context.DeadlineExceeded) || te.PID != pid {
		t.Fatalf("error %v, want *TimeoutError for pid %d matching context.DeadlineExceeded", err, pid)
	}
	var grandchild int
	waitFor(t, "the grandchild's pid in the log", func() bool {
		e := logLine(p.hook, "grandchild ")
		if e == nil {
			return false
		}
		grandchild, _ = strconv.Atoi(strings.TrimPrefix(e.Message, "grandchild "))
		return grandchild > 0
	})
	waitGone(t, pid)
	waitGone(t, grandchild)
	waitFor(t, "a replacement worker", func() bool { w := p.Workers(); return len(w) == 1 && w[0] != pid })
	if status, _, _, err := get(context.Background(), p.Pool, "/"); err != nil || status != 200 {
		t.Fatalf("after the timeout: %d %v", status, err)
	}
	waitFor(t, "the kill's log line", func() bool { return logLine(p.hook, "worker killed") != nil })
	if e := logLine(p.hook, "worker killed"); e.Data["reason"] != "request timed out" {
		t.Fatalf("kill log line without the reason: %v", e.Data)
	}
}

// A worker that leaves its process group for the dispatcher's and ignores
// SIGQUIT still dies at its timeout: its request gets the timeout, it is
// replaced, the next request is served, and Close returns promptly.
func TestUnkillableWorkerIsKilled(t *testing.T) {
	p := startPool(t, "escape", Config{Size: 1, Timeout: 300 * time.Millisecond, QuarantineGrace: 100 * time.Millisecond})
	pid := p.Workers()[0]
	_, _, _, err := get(context.Background(), p.Pool, "/?how=group&how=quit")
	var te *TimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("hanging request: %v, want a *TimeoutError", err)
	}
	if e := logLine(p.hook, "escape: ready"); e == nil {
		t.Fatal("the worker never left its process group")
	}
	waitGone(t, pid)
	status, body, got, err := get(context.Background(), p.Pool, "/")
	if err != nil || status != 200 || got == pid {
		t.Fatalf("next request: %d %q pid %d (the unkillable one was %d): %v", status, body, got, pid, err)
	}
	start := time.Now()
	if err := p.Close(context.Background()); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > DefaultStopTimeout+launch.KillWait {
		t.Errorf("Close took %s", d)
	}
}

// A worker that dies while idle must not cost the next client its request.
func TestIdleDeathIsRetried(t *testing.T) {
	p := startPool(t, "hello", Config{Size: 1})
	for i := range 5 {
		pid := p.Workers()[0]
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		status, body, got, err := get(context.Background(), p.Pool, "/")
		if err != nil || status != 200 || body != "hello world\n" {
			t.Fatalf("round %d: request after an idle death: %d %q %v", i, status, body, err)
		}
		if got == pid {
			t.Fatalf("round %d: answered by the killed pid %d", i, pid)
		}
	}
}

// A worker that writes on its slot while idle is replaced, and the request
// that found the junk goes to another worker instead of failing with it.
func TestIdleJunkIsRetried(t *testing.T) {
	p := startPool(t, "chaos", Config{Size: 1})
	status, _, pid, err := get(context.Background(), p.Pool, "/?fault=junk-after")
	if err != nil || status != 200 {
		t.Fatalf("junk-after request: %d %v", status, err)
	}
	waitFor(t, "the junk", func() bool { return logLine(p.hook, "chaos: junk written") != nil })
	status, _, got, err := get(context.Background(), p.Pool, "/")
	if err != nil || status != 200 {
		t.Fatalf("request after idle junk: %d %v, want 200", status, err)
	}
	if got == pid {
		t.Fatalf("answered by the worker that wrote junk, pid %d", pid)
	}
	waitGone(t, pid)
	if e := logLine(p.hook, "worker killed; replacing it"); e == nil || !strings.Contains(fmt.Sprint(e.Data["reason"]), "no exchange was in progress") {
		t.Errorf("no log line naming the junk: %v", e)
	}
}

func TestCancelReachesHandlerAndKeepsWorker(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1})
	pid := p.Workers()[0]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, _, err := get(ctx, p.Pool, "/ctx")
		done <- err
	}()
	waitFor(t, "the handler to start", func() bool { return logLine(p.hook, "hang: waiting") != nil })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled request: %v, want context.Canceled", err)
	}
	waitFor(t, "the handler to see the cancellation", func() bool {
		return logLine(p.hook, "hang: context cancelled: context canceled") != nil
	})
	status, _, got, err := get(context.Background(), p.Pool, "/")
	if err != nil || status != 200 || got != pid {
		t.Fatalf("next request: %d pid %d (want %d) %v", status, got, pid, err)
	}
}

func TestConcurrencySlots(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Concurrency: 3})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Three handlers block on /ctx; a fourth request still fits nowhere.
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, _, _, err := get(ctx, p.Pool, "/ctx")
			errs <- err
		}()
	}
	waitFor(t, "three handlers running", func() bool {
		n := 0
		for _, e := range p.hook.AllEntries() {
			if strings.Contains(e.Message, "hang: waiting") {
				n++
			}
		}
		return n == 3
	})
	short, cancelShort := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelShort()
	if _, _, _, err := get(short, p.Pool, "/"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("fourth request: %v, want to wait until its context ended", err)
	}
	cancel()
	for range 3 {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("blocked request: %v", err)
		}
	}
	if status, _, _, err := get(context.Background(), p.Pool, "/"); err != nil || status != 200 {
		t.Fatalf("after cancellation: %d %v", status, err)
	}
}

func TestStreamedBodyRoundTrip(t *testing.T) {
	p := startPool(t, "echo", Config{Size: 1})
	payload := make([]byte, 3<<20+17)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	first := payload[:ipc.ChunkSize]
	req := &ipc.Request{Method: "POST", URI: "/", Proto: "HTTP/1.1", ContentLength: int64(len(payload)), Body: first}
	resp, err := p.RoundTrip(context.Background(), req, strings.NewReader(string(payload[ipc.ChunkSize:])))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Close()
	got, _ := readChunks(t, resp)
	if string(got) != string(payload) {
		t.Fatalf("echoed %d bytes, want the %d sent", len(got), len(payload))
	}
	if !resp.Streaming {
		t.Error("a 3 MiB response should stream")
	}
}

// readChunks reads a response body to its end with Next, and returns it
// and the size of each chunk.
func readChunks(t *testing.T, resp *Response) (body []byte, sizes []int) {
	t.Helper()
	for {
		b, err := resp.Next()
		if err == io.EOF {
			return body, sizes
		}
		if err != nil {
			t.Fatal(err)
		}
		body = append(body, b...)
		sizes = append(sizes, len(b))
	}
}

// A response body streams in chunks of up to ipc.WideChunkSize after a
// first chunk of at most ipc.ChunkSize, when the frame limit holds a wide
// chunk (the dispatcher then announces FeatureWideChunk); with the smallest
// frame limit, in chunks of at most ipc.ChunkSize.
func TestWideChunks(t *testing.T) {
	for _, maxFrame := range []int{ipc.DefaultMaxFrame, ipc.MinMaxFrame} {
		t.Run(fmt.Sprint("max frame ", maxFrame), func(t *testing.T) {
			p := startPool(t, "fidelity", Config{MaxFrame: maxFrame})
			const n = 2 << 20
			req := &ipc.Request{Method: "GET", URI: fmt.Sprintf("/big?n=%d", n), Proto: "HTTP/1.1", EOF: true}
			resp, err := p.RoundTrip(context.Background(), req, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Close()
			body, sizes := readChunks(t, resp)
			total := len(body)
			want := ipc.ChunkSize
			if maxFrame >= ipc.WideChunkMaxFrame {
				want = ipc.WideChunkSize
			}
			if total != n || len(sizes) < 2 || sizes[0] > ipc.ChunkSize || slices.Max(sizes) != want {
				t.Fatalf("%d bytes in chunks of %v: want %d bytes, the first chunk at most %d, the largest %d",
					total, sizes, n, ipc.ChunkSize, want)
			}
		})
	}
}

func TestStartFailures(t *testing.T) {
	tests := []struct {
		name, path, want string
	}{
		{"exits at once", "/bin/true", "Failed to read any lines from plugin's stdout"},
		{"stdout junk", bins["stdoutjunk"], "this is not a handshake line"},
		{"no handshake", "/bin/sleep", "no handshake within 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortTempDir(t)
			p, err := NewPool(Config{Path: tt.path, Args: []string{"30"}, Size: 1, StartTimeout: time.Second, SocketDir: dir,
				Logger: logrus.NewEntry(logrus.New())})
			if err != nil {
				t.Fatal(err)
			}
			err = p.Start(context.Background())
			var se *launch.StartError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tt.path) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start: %v, want a StartError naming %s and saying %q", err, tt.path, tt.want)
			}
			if left, _ := os.ReadDir(dir); len(left) > 0 {
				t.Errorf("left behind in the socket directory: %v", left)
			}
		})
	}
}

func TestCloseIsIdempotentAndRefusesRequests(t *testing.T) {
	p := startPool(t, "hello", Config{Size: 2})
	pids := p.Workers()
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, pid := range pids {
		waitGone(t, pid)
	}
	if _, _, _, err := get(context.Background(), p.Pool, "/"); !errors.Is(err, ErrClosed) {
		t.Fatalf("request after Close: %v, want ErrClosed", err)
	}
	if _, err := os.Stat(filepath.Join(p.socketDir)); err != nil {
		t.Fatalf("the caller's socket dir itself must stay: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no path", Config{}, "Path is required"},
		{"negative size", Config{Path: "x", Size: -1}, "Size -1"},
		{"huge concurrency", Config{Path: "x", Concurrency: 5000}, "Concurrency 5000"},
		{"negative timeout", Config{Path: "x", Timeout: -time.Second}, "must not be negative"},
		{"tiny frame", Config{Path: "x", MaxFrame: 10}, "MaxFrame 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewPool(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewPool: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	cfg := Config{Path: "x"}
	if _, err := NewPool(cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Size != 0 || cfg.Env != nil {
		t.Fatal("NewPool wrote defaults into the caller's Config")
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	p := startPool(b, "hello", Config{Size: 1})
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, _, _, err := get(ctx, p.Pool, "/"); err != nil {
			b.Fatal(err)
		}
	}
}

// TMPDIR, when set, is where sockets go; else a writable memory file
// system; else the system's temporary directory.
func TestDefaultSocketDir(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	if got := DefaultSocketDir(); got != dir {
		t.Errorf("with TMPDIR=%s: %s", dir, got)
	}
	t.Setenv("TMPDIR", "")
	// Not a memory file system (t.TempDir is under TMPDIR's disk, or
	// /tmp): skipped for /dev/shm, or /tmp.
	t.Setenv("XDG_RUNTIME_DIR", dir)
	got := DefaultSocketDir()
	var st unix.Statfs_t
	shm := unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC && unix.Access("/dev/shm", unix.W_OK) == nil
	want := "/tmp"
	if shm {
		want = "/dev/shm"
	}
	if unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC {
		want = dir
	}
	if got != want {
		t.Errorf("without TMPDIR, XDG_RUNTIME_DIR=%s: %s, want %s", dir, got, want)
	}
}

// A handler that gives up at its context's deadline and answers is heard:
// its deadline comes before the dispatcher's timeout, and the worker lives.
func TestHandlerDeadlineComesBeforeTheTimeout(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Timeout: 300 * time.Millisecond})
	pid := p.Workers()[0]
	for i := range 5 {
		status, _, got, err := get(context.Background(), p.Pool, "/deadline")
		if err != nil || status != http.StatusServiceUnavailable || got != pid {
			t.Fatalf("round %d: %d from pid %d (was %d): %v; want the handler's own 503", i, status, got, pid, err)
		}
	}
}
