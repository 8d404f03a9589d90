package sdktest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/childproc/dispatcher/sdk/sdktest"
	"github.com/sirupsen/logrus"
)

const workers = "../../testdata/workers/"

func get(tb testing.TB, url string) (*http.Response, string) {
	tb.Helper()
	resp, err := http.Get(url)
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

func TestStartServesThroughARealWorker(t *testing.T) {
	// --sandbox=off: the worker's pid (X-Worker-Pid) is its PID
	// namespace's in a sandbox, not the one Workers() knows.
	srv := sdktest.Start(t, sdktest.Build(t, workers+"hello"), sdktest.Options{Flags: []string{"--sandbox=off"}})
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") || strings.HasSuffix(srv.URL, "/") {
		t.Errorf("URL %q, want http://127.0.0.1:port", srv.URL)
	}
	resp, body := get(t, srv.URL+"/")
	if resp.StatusCode != 200 || body != "hello world\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	pids := srv.Workers()
	if len(pids) != 1 || strconv.Itoa(pids[0]) != resp.Header.Get("X-Worker-Pid") {
		t.Errorf("Workers() %v; the response came from pid %s", pids, resp.Header.Get("X-Worker-Pid"))
	}
	if pids[0] == os.Getpid() {
		t.Error("the handler ran in the test process")
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no request ID: the response did not come through the dispatcher")
	}
}

type probeReport struct {
	PID  int
	Args []string
	Dir  string
	Env  []string
}

func TestOptionsReachTheWorkers(t *testing.T) {
	t.Setenv("SDKTEST_OUTER", "must not leak")
	dir := sdktest.TempDir(t) // the workers' working directory
	srv := sdktest.Start(t, sdktest.Build(t, "./testdata/probe"), sdktest.Options{
		Size: 2,
		Env:  []string{"PROBE_A=1", "PROBE_B=two words"},
		Args: []string{"-flag", "value"},
		Dir:  dir,
		// Without the sandbox: in it, a worker's working directory is /.
		Flags: []string{"--sandbox=off"},
	})
	if n := len(srv.Workers()); n != 2 {
		t.Fatalf("%d workers, want 2", n)
	}
	resp, body := get(t, srv.URL+"/")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var r probeReport
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	for _, kv := range []string{"PROBE_A=1", "PROBE_B=two words", "PATH=/usr/local/bin:/usr/bin:/bin"} {
		if !slices.Contains(r.Env, kv) {
			t.Errorf("worker environment lacks %q: %q", kv, r.Env)
		}
	}
	for _, kv := range r.Env {
		if strings.HasPrefix(kv, "SDKTEST_OUTER=") {
			t.Errorf("the test process's environment leaked into the worker: %q", kv)
		}
	}
	if !slices.Equal(r.Args, []string{"-flag", "value"}) {
		t.Errorf("args %q", r.Args)
	}
	wantDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if gotDir, err := filepath.EvalSymlinks(r.Dir); err != nil || gotDir != wantDir {
		t.Errorf("working directory %q (%v), want %q", r.Dir, err, dir)
	}
}

// With Concurrency 2, one worker serves two requests at once: each of them
// waits inside the handler until both have arrived.
func TestConcurrency(t *testing.T) {
	srv := sdktest.Start(t, sdktest.Build(t, "./testdata/probe"), sdktest.Options{Concurrency: 2, Timeout: 20 * time.Second})
	var wg sync.WaitGroup
	results := make([]string, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(srv.URL + "/barrier?n=2")
			if err != nil {
				results[i] = err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			results[i] = fmt.Sprintf("%d %s", resp.StatusCode, b)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r != "200 all arrived\n" {
			t.Errorf("request %d: %q (the two requests were not served at once)", i, r)
		}
	}
}

// The production failure mapping applies: a crash is a 502 and the worker
// is replaced; a handler past Timeout is a 504.
func TestCrashAndTimeout(t *testing.T) {
	t.Run("crash", func(t *testing.T) {
		srv := sdktest.Start(t, sdktest.Build(t, workers+"crash"))
		before := srv.Workers()
		resp, body := get(t, srv.URL+"/exit")
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Dispatcher-Error") != "true" {
			t.Fatalf("%d %v %q, want a dispatcher 502", resp.StatusCode, resp.Header, body)
		}
		// The next request waits for the replacement.
		if resp, body := get(t, srv.URL+"/"); resp.StatusCode != 200 || body != "ok\n" {
			t.Fatalf("after the crash: %d %q", resp.StatusCode, body)
		}
		if after := srv.Workers(); len(after) != 1 || after[0] == before[0] {
			t.Errorf("workers %v after the crash of %v", after, before)
		}
		srv.WaitLog(t, func(e sdktest.Entry) bool {
			return e.Message == "crash: exiting with status 3 as asked" && e.Fields["stream"] == "stderr"
		})
	})
	t.Run("timeout", func(t *testing.T) {
		srv := sdktest.Start(t, sdktest.Build(t, workers+"hang"), sdktest.Options{Timeout: 300 * time.Millisecond})
		resp, body := get(t, srv.URL+"/hang")
		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("%d %q, want 504", resp.StatusCode, body)
		}
	})
}

func TestWaitLog(t *testing.T) {
	srv := sdktest.Start(t, sdktest.Build(t, "./testdata/probe"))
	resp, _ := get(t, srv.URL+"/log")
	id := resp.Header.Get("X-Request-Id")
	e := srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == "probe warning" })
	if e.Level != logrus.WarnLevel || e.Fields["req_id"] != id || e.Fields["child.probe"] != "yes" {
		t.Errorf("worker entry %v, want level warning, req_id %s, child.probe yes", e, id)
	}
	access := srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == "request" && e.Fields["req_id"] == id })
	if access.Fields["status"] != float64(200) || access.Fields["path"] != "/log" {
		t.Errorf("access log entry %v", access)
	}
	if !slices.ContainsFunc(srv.Log(), func(x sdktest.Entry) bool { return x.Message == "probe warning" }) {
		t.Error("Log() lacks an entry WaitLog returned")
	}
}

// failingTB is a testing.TB whose test has failed; it records what Start
// logs and registers, so that the cleanup can be run and inspected.
type failingTB struct {
	testing.TB
	mu       sync.Mutex
	logs     []string
	cleanups []func()
}

func (f *failingTB) Failed() bool { return true }
func (f *failingTB) Helper()      {}
func (f *failingTB) Cleanup(fn func()) {
	f.mu.Lock()
	f.cleanups = append(f.cleanups, fn)
	f.mu.Unlock()
}
func (f *failingTB) Logf(format string, args ...any) {
	f.mu.Lock()
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

func TestLogIsPrintedWhenTheTestFails(t *testing.T) {
	ftb := &failingTB{TB: t}
	srv := sdktest.Start(ftb, sdktest.Build(t, workers+"hello"))
	resp, _ := get(t, srv.URL+"/printed")
	id := resp.Header.Get("X-Request-Id")
	srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == "request" && e.Fields["req_id"] == id })
	for _, fn := range slices.Backward(ftb.cleanups) {
		fn()
	}
	out := strings.Join(ftb.logs, "\n")
	if !strings.Contains(out, "dispatcher log:") || !strings.Contains(out, "path=/printed") || !strings.Contains(out, "req_id="+id) {
		t.Errorf("the failed test's log lacks the dispatcher log with the request:\n%s", out)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	bin := sdktest.Build(t, workers+"hello")
	srv, err := sdktest.NewServer(bin, sdktest.Options{Size: 2})
	if err != nil {
		t.Fatal(err)
	}
	pids := srv.Workers()
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Close returns once the pool has reaped its workers.
	for _, pid := range pids {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == bin {
			t.Errorf("worker %d still running after Close", pid)
		}
	}
	if _, err := http.Get(srv.URL + "/"); err == nil {
		t.Error("the server still answers after Close")
	}
}

// Options become the dispatcher's flags, which it validates.
func TestInvalidOptions(t *testing.T) {
	bin := sdktest.Build(t, workers+"hello")
	tests := []struct {
		name string
		opts sdktest.Options
		want string
	}{
		{"concurrency", sdktest.Options{Concurrency: 2000}, "--concurrency 2000: must be 1-1024"},
		{"pipeline", sdktest.Options{Pipeline: 65}, "--pipeline 65: must be 1-64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := sdktest.NewServer(bin, tc.opts)
			if err == nil {
				srv.Close()
				t.Fatal("NewServer accepted the options")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestStartFailureNamesTheCause(t *testing.T) {
	_, err := sdktest.NewServer(sdktest.Build(t, workers+"stdoutjunk"), sdktest.Options{StartTimeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "is it a worker built with the sdk?") {
		t.Fatalf("NewServer with a binary that is not a worker: %v", err)
	}
}

func TestBuild(t *testing.T) {
	t.Run("cached", func(t *testing.T) {
		first := sdktest.Build(t, workers+"hello")
		st1, err := os.Stat(first)
		if err != nil {
			t.Fatal(err)
		}
		paths := make([]string, 4)
		errs := make([]error, len(paths))
		var wg sync.WaitGroup
		for i := range paths {
			wg.Add(1)
			go func() {
				defer wg.Done()
				paths[i], errs[i] = sdktest.Binary(workers + "hello")
			}()
		}
		wg.Wait()
		for i, p := range paths {
			if p != first || errs[i] != nil {
				t.Errorf("Binary gave %q, then %q (%v)", first, p, errs[i])
			}
		}
		st2, err := os.Stat(first)
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(st1, st2) || !st1.ModTime().Equal(st2.ModTime()) {
			t.Error("the binary was rebuilt: Build must build once per test binary")
		}
		if filepath.Base(first) != "hello" {
			t.Errorf("binary %q, want it named after its package", first)
		}
	})
	t.Run("compile error", func(t *testing.T) {
		_, err := sdktest.Binary("./testdata/nocompile")
		if err == nil || !strings.Contains(err.Error(), "cannot use \"not a number\"") {
			t.Fatalf("error %v, want the compiler's message", err)
		}
		// The failure is remembered, not retried.
		_, err2 := sdktest.Binary("./testdata/nocompile")
		if err2 == nil || err2.Error() != err.Error() {
			t.Errorf("second attempt: %v", err2)
		}
	})
	t.Run("missing package", func(t *testing.T) {
		if _, err := sdktest.Binary("./testdata/missing"); err == nil {
			t.Fatal("no error for a package that does not exist")
		}
	})
}

// SDKTEST_DISPATCHER names a dispatcher binary to run instead of the one
// built from the module.
func TestDispatcherFromEnvironment(t *testing.T) {
	built, err := sdktest.Dispatcher()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	marker := filepath.Join(dir, "used")
	wrapper := filepath.Join(dir, "dispatcher")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\ntouch '"+marker+"'\nexec '"+built+"' \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SDKTEST_DISPATCHER", wrapper)
	srv := sdktest.Start(t, sdktest.Build(t, workers+"hello"))
	if resp, body := get(t, srv.URL+"/"); resp.StatusCode != 200 || body != "hello world\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the dispatcher of SDKTEST_DISPATCHER did not run: %v", err)
	}
}

// Options.Flags reach the dispatcher's command line: its own limits and
// modes apply, as in production.
func TestFlags(t *testing.T) {
	t.Run("max-body", func(t *testing.T) {
		srv := sdktest.Start(t, sdktest.Build(t, "./testdata/probe"), sdktest.Options{Flags: []string{"--max-body", "1K"}})
		resp, err := http.Post(srv.URL+"/", "text/plain", strings.NewReader(strings.Repeat("x", 2048)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("2 KiB body with --max-body 1K: %d, want 413", resp.StatusCode)
		}
	})
	t.Run("oneshot", func(t *testing.T) {
		srv := sdktest.Start(t, sdktest.Build(t, "./testdata/probe"), sdktest.Options{Flags: []string{"--mode=oneshot", "--spares", "1", "--sandbox=off"}}) // pids: see TestStartServesThroughARealWorker
		var pids []int
		for range 2 {
			_, body := get(t, srv.URL+"/")
			var r probeReport
			if err := json.Unmarshal([]byte(body), &r); err != nil {
				t.Fatalf("%v: %s", err, body)
			}
			pids = append(pids, r.PID)
		}
		if pids[0] == pids[1] {
			t.Errorf("oneshot: two requests served by one process %d", pids[0])
		}
	})
}
