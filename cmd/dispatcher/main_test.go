package main

// End-to-end tests: the real dispatcher binary, run as a subprocess, with the
// test workers of testdata/workers. Helpers are in helpers_test.go.

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/testbin"
)

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := dir + "/no-such-worker"
	plain := dir + "/not-executable"
	if err := os.WriteFile(plain, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	subdir := dir + "/a-directory"
	if err := os.Mkdir(subdir, 0o755); err != nil {
		t.Fatal(err)
	}
	hello := bin(t, "hello")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string // substrings of stderr
	}{
		{"unknown flag", []string{"--bogus", "--workers", hello}, 2,
			[]string{"dispatcher: unknown flag --bogus; see dispatcher --help"}},
		{"misspelt flag", []string{"--workers", hello, "--pool_size", "2"}, 2,
			[]string{"unknown flag --pool_size (did you mean --pool-size?)"}},
		{"another server's flag", []string{"--workers", hello, "--bind", ":80"}, 2,
			[]string{"unknown flag --bind (did you mean --listen?)"}},
		{"a replaced flag", []string{"--workers", hello, "--breaker-failures", "3"}, 2,
			[]string{"unknown flag --breaker-failures (replaced:", "--breaker-crash-ratio"}},
		{"duration without a unit", []string{"--workers", hello, "--timeout", "5"}, 2,
			[]string{`dispatcher: --timeout "5": a duration needs a unit, such as 5s, 5ms or 5m; see dispatcher --help`}},
		{"not a duration", []string{"--workers", hello, "--start-timeout=soon"}, 2,
			[]string{`--start-timeout "soon": want a duration with a unit, such as 30s, 500ms or 1m30s`}},
		{"not a number", []string{"--workers", hello, "--concurrency", "two"}, 2,
			[]string{`--concurrency "two": want a whole number, such as 4`}},
		{"not a boolean", []string{"--workers", hello, "--watch=yes please"}, 2,
			[]string{`--watch "yes please": want true or false`}},
		{"boolean value apart", []string{"--workers", hello, "--access-log", "false"}, 2,
			[]string{`unexpected argument "false": a boolean flag takes its value as --access-log=false`}},
		{"no value", []string{"--workers", hello, "--listen"}, 2,
			[]string{"--listen needs a value"}},
		{"positional binary", []string{hello}, 2,
			[]string{`unexpected argument "` + hello + `": the worker binary goes after --workers, and its own arguments after --`}},
		{"positional after flags", []string{"--workers", hello, "extra"}, 2,
			[]string{`unexpected argument "extra"`}},
		{"a count for --workers", []string{"--workers", "4"}, 2,
			[]string{`--workers "4": no such file (--workers is the worker binary; the number of workers is --pool-size)`}},
		{"a port without colon", []string{"--workers", hello, "--listen", "8080"}, 2,
			[]string{`--listen "8080": want host:port, such as :8080 (every interface) or 127.0.0.1:8080`}},
		{"missing --workers", []string{"--listen", "127.0.0.1:0"}, 2,
			[]string{"dispatcher: --workers BINARY or --config FILE is required; see dispatcher --help"}},
		{"missing path", []string{"--workers", missing}, 2,
			[]string{missing, "no such file"}},
		{"not executable", []string{"--workers", plain}, 2,
			[]string{plain, "is not executable"}},
		{"directory", []string{"--workers", subdir}, 2,
			[]string{subdir, "is a directory"}},
		{"bad pool size", []string{"--workers", hello, "--pool-size", "0"}, 2,
			[]string{"--pool-size 0"}},
		{"bad log format", []string{"--workers", hello, "--log-format", "xml"}, 2,
			[]string{`--log-format "xml"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, stderr, tmp := run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit status %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if n := strings.Count(stderr, "\n"); n != 1 {
				t.Errorf("%d lines on stderr, want one:\n%s", n, stderr)
			}
			if names := dirEntries(t, tmp); len(names) > 0 {
				t.Errorf("TMPDIR not empty after a usage error: %v", names)
			}
		})
	}
}

// --help goes to standard output, grouped by topic, with the flags'
// two-dash names and defaults that do not depend on this machine.
func TestHelp(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"--help", "-h", "-help"} {
		code, stdout, stderr := runStdout(t, arg)
		if code != 0 || stderr != "" {
			t.Fatalf("%s: exit %d, stderr %q", arg, code, stderr)
		}
		var at []int
		for _, w := range []string{
			"Usage:\n  dispatcher --workers BINARY",
			"\nServing: ", "  --workers BINARY\n", "  --listen ADDRESS\n",
			"\nModes: ", "  --mode VALUE\n", "  --pool-size N\n", "(default: the number of CPUs)",
			"\nLimits: ", "  --timeout DURATION\n", "(default 30s)",
			"\nIsolation: ", "  --memory-limit SIZE\n",
			"\nOperations: ", "  --admin-listen ADDRESS\n", "(default 127.0.0.1:8079)", "  --version\n",
		} {
			i := strings.Index(stdout, w)
			if i < 0 {
				t.Fatalf("%s: the help lacks %q:\n%s", arg, w, stdout)
			}
			at = append(at, i)
		}
		if !slices.IsSorted(at) {
			t.Errorf("%s: topics or flags out of order:\n%s", arg, stdout)
		}
		if strings.Contains(stdout, "dispatcher.example.yaml") || !strings.Contains(stdout, "examples/dispatcher.yaml") {
			t.Errorf("%s: the help must name examples/dispatcher.yaml, the file that exists", arg)
		}
		if _, err := os.Stat(filepath.Join(testbin.Root(), "examples", "dispatcher.yaml")); err != nil {
			t.Error(err)
		}
		if regexp.MustCompile(`(?m)^  -[a-z]`).MatchString(stdout) {
			t.Errorf("%s: a flag shown with one dash:\n%s", arg, stdout)
		}
		for _, l := range strings.Split(stdout, "\n") {
			if len(l) > 80 {
				t.Errorf("%s: line longer than 80 columns: %q", arg, l)
			}
		}
	}
	// A bare dispatcher shows the synopsis and the one-line error.
	code, stdout, stderr := runStdout(t)
	if code != 2 || stdout != "" || !strings.HasPrefix(stderr, "Usage:\n") || !strings.HasSuffix(stderr, "dispatcher: --workers BINARY or --config FILE is required; see dispatcher --help\n") {
		t.Errorf("bare dispatcher: exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runStdout(t, "--version")
	if code != 0 || stderr != "" || !regexp.MustCompile(`^dispatcher \S+ \(.*go1\.\d+.*\)\n$`).MatchString(stdout) {
		t.Fatalf("--version: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	version := strings.TrimSuffix(strings.TrimPrefix(stdout, "dispatcher "), "\n")

	// The status page and the build-info metric say the same.
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "1")
	_, body := d.getURL(d.admin + "/status?format=json")
	var st struct{ Version string }
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Version != version {
		t.Errorf("/status version %q (%v), want %q", st.Version, err, version)
	}
	_, metrics := d.getURL(d.admin + "/metrics")
	short, _, _ := strings.Cut(version, " ")
	if !regexp.MustCompile(`(?m)^dispatcher_build_info\{goversion="go1\.[^"]+",revision="[^"]*",version="` + regexp.QuoteMeta(short) + `"\} 1$`).MatchString(metrics) {
		t.Errorf("no dispatcher_build_info with version %q:\n%s", short, metrics)
	}
}

// Binaries that are not workers: the handshake fails, the dispatcher exits
// with status 2 naming the binary, and nothing is left running.
func TestNotAWorker(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"/bin/true", "/bin/cat", bin(t, "stdoutjunk")} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			t.Parallel()
			if _, err := os.Stat(path); err != nil {
				t.Skipf("%s: %v", path, err)
			}
			start := time.Now()
			code, stderr, tmp := run(t, "--workers", path, "--listen", "127.0.0.1:0", "--pool-size", "2", "--start-timeout", "3s")
			elapsed := time.Since(start)
			if code != 2 {
				t.Errorf("exit status %d, want 2; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, "start worker") || !strings.Contains(stderr, path) {
				t.Errorf("stderr does not name the binary %s:\n%s", path, stderr)
			}
			if strings.Contains(stderr, "dispatcher listening") {
				t.Errorf("dispatcher claims to listen:\n%s", stderr)
			}
			t.Logf("exited in %s", elapsed.Round(time.Millisecond))
			if names := dirEntries(t, tmp); len(names) > 0 {
				t.Errorf("socket directory left in TMPDIR: %v", names)
			}
			if path == bins["stdoutjunk"] {
				var left []int
				if !poll(goneWait, func() bool { left = processesOf(path); return len(left) == 0 }) {
					t.Errorf("stdoutjunk processes left behind: %v", left)
				}
			}
		})
	}
}

var pidField = regexp.MustCompile(`^[1-9][0-9]*$`)

func TestHello(t *testing.T) {
	t.Parallel()
	// --sandbox=off: the test matches the pid the worker reports with the
	// access log's, which differ in a sandbox (its own PID namespace).
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "2", "--sandbox=off")
	if len(d.workers) != 2 {
		t.Fatalf("listening line names %d workers, want 2: %v", len(d.workers), d.workers)
	}

	resp, body := d.get("/")
	if resp.StatusCode != http.StatusOK || body != "hello world\n" {
		t.Fatalf("GET /: %d %q, want 200 %q", resp.StatusCode, body, "hello world\n")
	}
	if id := resp.Header.Get("X-Request-Id"); id == "" {
		t.Error("no X-Request-Id in the response")
	}
	if resp.Header.Get("X-Dispatcher-Error") != "" {
		t.Error("X-Dispatcher-Error on a successful response")
	}

	const id = "e2e-hello-0001"
	resp, body = d.get("/some/path?q=1", "X-Request-Id", id)
	if resp.StatusCode != http.StatusOK || body != "hello world\n" {
		t.Fatalf("GET /some/path: %d %q", resp.StatusCode, body)
	}
	if got := resp.Header.Get("X-Request-Id"); got != id {
		t.Errorf("X-Request-Id %q, want the incoming %q", got, id)
	}
	workerPid := resp.Header.Get("X-Worker-Pid")

	line := d.waitLog("msg=request", "req_id="+id)
	for key, want := range map[string]string{"method": "GET", "path": "/some/path", "status": "200", "req_id": id} {
		if got, ok := field(line, key); !ok || got != want {
			t.Errorf("access log %s=%q, want %q: %s", key, got, want, line)
		}
	}
	pid, _ := field(line, "pid")
	if !pidField.MatchString(pid) {
		t.Errorf("access log pid=%q: %s", pid, line)
	}
	if pid != workerPid {
		t.Errorf("access log pid=%s, but the worker that answered says %s", pid, workerPid)
	}
	if n, _ := strconv.Atoi(pid); !slices.Contains(d.workers, n) {
		t.Errorf("access log pid %s is not one of the workers %v", pid, d.workers)
	}
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	const shutdownTimeout = 5 * time.Second
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "2",
		"--shutdown-timeout", shutdownTimeout.String())
	if names := dirEntries(t, d.tmpDir); len(names) != 1 || !strings.HasPrefix(names[0], "dispatcher-") {
		t.Errorf("TMPDIR while running holds %v, want one dispatcher-* socket directory", names)
	}
	if resp, body := d.get("/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d %q", resp.StatusCode, body)
	}

	start := time.Now()
	d.signal(syscall.SIGTERM)
	st := d.waitExit(shutdownTimeout + exitWait)
	t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	if st.ExitCode() != 0 {
		t.Errorf("exit %v, want status 0", st)
	}
	for _, pid := range d.workers {
		if !waitGone(pid, goneWait) {
			t.Errorf("worker %d still running after the dispatcher exited", pid)
		}
	}
	if names := dirEntries(t, d.tmpDir); len(names) > 0 {
		t.Errorf("TMPDIR not empty after a clean shutdown: %v", names)
	}
	d.waitLog("shutting down")
	d.waitLog("msg=stopped")
	for _, l := range d.log.Lines() {
		if strings.Contains(l, "level=error") || strings.Contains(l, "level=warning") {
			t.Errorf("unexpected log line during a clean run: %s", l)
		}
	}
}

// A request still running when --shutdown-timeout expires has its
// connection cut; the dispatcher still exits 0 and stops its workers.
func TestShutdownTimeoutCutsInflight(t *testing.T) {
	t.Parallel()
	const shutdownTimeout = time.Second
	d := startDispatcher(t, "--workers", bin(t, "hang"), "--pool-size", "1",
		"--shutdown-timeout", shutdownTimeout.String())
	const id = "e2e-inflight-1"
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, d.url+"/ctx", nil)
		req.Header.Set("X-Request-Id", id)
		resp, err := d.client.Do(req)
		if err == nil {
			resp.Body.Close()
			err = &unexpectedStatus{resp.StatusCode}
		}
		errc <- err
	}()
	d.waitLog("hang: waiting for cancellation of " + id)

	start := time.Now()
	d.signal(syscall.SIGTERM)
	st := d.waitExit(shutdownTimeout + exitWait)
	elapsed := time.Since(start)
	t.Logf("exited %s after SIGTERM", elapsed.Round(time.Millisecond))
	if st.ExitCode() != 0 {
		t.Errorf("exit %v, want status 0", st)
	}
	if elapsed < shutdownTimeout {
		t.Errorf("exited %s after SIGTERM, before --shutdown-timeout %s: in-flight request not drained", elapsed, shutdownTimeout)
	}
	select {
	case err := <-errc:
		if _, ok := err.(*unexpectedStatus); ok {
			t.Errorf("in-flight request answered (%v); want its connection cut", err)
		}
	case <-time.After(exitWait):
		t.Fatal("in-flight request still pending after the dispatcher exited")
	}
	d.waitLog("did not finish within --shutdown-timeout")
	for _, pid := range d.workers {
		if !waitGone(pid, goneWait) {
			t.Errorf("worker %d still running after the dispatcher exited", pid)
		}
	}
	if names := dirEntries(t, d.tmpDir); len(names) > 0 {
		t.Errorf("TMPDIR not empty after shutdown: %v", names)
	}
}

type unexpectedStatus struct{ code int }

func (e *unexpectedStatus) Error() string { return "status " + strconv.Itoa(e.code) }

// A second signal during the drain ends the dispatcher at once; its workers
// die with it.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "hang"), "--pool-size", "1", "--shutdown-timeout", "1m")
	const id = "e2e-second-signal-1"
	go func() {
		req, _ := http.NewRequest(http.MethodGet, d.url+"/ctx", nil)
		req.Header.Set("X-Request-Id", id)
		if resp, err := d.client.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	d.waitLog("hang: waiting for cancellation of " + id)
	d.signal(syscall.SIGTERM)
	d.waitLog("shutting down")
	// The default action is restored just after the first signal is seen, in
	// its own goroutine: repeat the second one until it takes.
	start := time.Now()
	if !poll(exitWait, func() bool {
		if d.exited() {
			return true
		}
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		return false
	}) {
		t.Fatalf("dispatcher still draining %s after a second SIGTERM", exitWait)
	}
	st := d.waitExit(exitWait)
	t.Logf("exited %s after the second SIGTERM: %v", time.Since(start).Round(time.Millisecond), st)
	if ws, ok := st.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("exit %v, want killed by SIGTERM", st)
	}
	for _, pid := range d.workers {
		if !waitGone(pid, goneWait) {
			t.Errorf("worker %d survived the dispatcher", pid)
		}
	}
}

func TestSIGKILLTakesWorkersDown(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "2")
	if resp, body := d.get("/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d %q", resp.StatusCode, body)
	}
	d.signal(syscall.SIGKILL)
	d.waitExit(exitWait)
	for _, pid := range d.workers {
		if !waitGone(pid, goneWait) {
			t.Errorf("worker %d survived SIGKILL of the dispatcher", pid)
		}
	}
}

func TestCrashContained(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "crash"), "--pool-size", "2")
	const id = "e2e-crash-exit"
	resp, body := d.get("/exit", "X-Request-Id", id)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("GET /exit: status %d, want 502", resp.StatusCode)
	}
	if resp.Header.Get("X-Dispatcher-Error") != "true" {
		t.Errorf("GET /exit: X-Dispatcher-Error %q, want true", resp.Header.Get("X-Dispatcher-Error"))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /exit: Content-Type %q, want text/plain", ct)
	}
	if !strings.HasPrefix(body, "502 ") {
		t.Errorf("GET /exit: body %q", body)
	}
	if got := resp.Header.Get("X-Request-Id"); got != id {
		t.Errorf("GET /exit: X-Request-Id %q, want %q", got, id)
	}

	line := d.waitLog("level=error", "req_id="+id, "exited with status 3")
	pid, _ := field(line, "pid")
	n, _ := strconv.Atoi(pid)
	if !slices.Contains(d.workers, n) {
		t.Errorf("error line names pid %q, not one of the workers %v: %s", pid, d.workers, line)
	}
	if !strings.Contains(line, "pid "+pid) && !strings.Contains(line, "pid="+pid) {
		t.Errorf("error line does not name the pid: %s", line)
	}
	access := d.waitLog("msg=request", "req_id="+id)
	if s, _ := field(access, "status"); s != "502" {
		t.Errorf("access log status %q, want 502: %s", s, access)
	}
	if p, _ := field(access, "pid"); p != pid {
		t.Errorf("access log pid %q, want %s", p, pid)
	}
	// Its last words on stderr, written just before it exited.
	d.waitLog("crash: exiting with status 3 as asked", "pid="+pid)
	d.waitLog("worker exited unexpectedly", "pid="+pid, "exited with status 3")
	if !waitGone(n, goneWait) {
		t.Errorf("crashed worker %d still there", n)
	}

	resp, body = d.get("/")
	if resp.StatusCode != http.StatusOK || body != "ok\n" {
		t.Errorf("GET / after the crash: %d %q, want 200 ok", resp.StatusCode, body)
	}
	if d.exited() {
		t.Fatal("dispatcher exited")
	}
}

func TestHangTimeoutKillsGroup(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	// --sandbox=off: the worker starts sleep(1), and the test finds it by
	// the pid the worker reports.
	d := startDispatcher(t, "--workers", bin(t, "hang"), "--pool-size", "1", "--timeout", timeout.String(), "--sandbox=off")
	worker := d.workers[0]

	start := time.Now()
	resp, body := d.get("/spawn")
	elapsed := time.Since(start)
	t.Logf("GET /spawn answered in %s", elapsed.Round(time.Millisecond))
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("GET /spawn: status %d, want 504; body %q", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Dispatcher-Error") != "true" {
		t.Error("GET /spawn: no X-Dispatcher-Error: true")
	}
	if elapsed < timeout-50*time.Millisecond || elapsed > timeout+5*time.Second {
		t.Errorf("GET /spawn took %s, want about %s", elapsed, timeout)
	}

	grandchild := regexp.MustCompile(`grandchild ([0-9]+)`)
	line := d.waitLogFunc("grandchild <pid>", grandchild.MatchString)
	gpid, _ := strconv.Atoi(grandchild.FindStringSubmatch(line)[1])
	if !waitGone(gpid, goneWait) {
		t.Errorf("grandchild %d still running after the timeout", gpid)
	}
	if !waitGone(worker, goneWait) {
		t.Errorf("timed-out worker %d still running", worker)
	}
	d.waitLog("request timed out; worker killed", "pid="+strconv.Itoa(worker))
	d.waitLog("worker killed; replacing it", "pid="+strconv.Itoa(worker))

	resp, body = d.get("/")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "ok ") {
		t.Errorf("GET / after the timeout: %d %q, want 200 ok <pid>", resp.StatusCode, body)
	}
	if strings.TrimSpace(strings.TrimPrefix(body, "ok ")) == strconv.Itoa(worker) {
		t.Errorf("answered by the killed worker %d", worker)
	}
}

func TestStderrJunk(t *testing.T) {
	t.Parallel()
	// At debug level, go-plugin's own copies of long lines would show.
	d := startDispatcher(t, "--workers", bin(t, "stderrjunk"), "--pool-size", "2", "--log-level", "debug")
	for i := range 5 {
		resp, body := d.get("/")
		if resp.StatusCode != http.StatusOK || body != "ok\n" {
			t.Fatalf("request %d: %d %q, want 200 ok", i, resp.StatusCode, body)
		}
	}
	d.waitLog("stderrjunk: done")
	if d.exited() {
		t.Fatalf("dispatcher exited: %v", d.state)
	}
	if resp, _ := d.get("/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET / after the junk: %d", resp.StatusCode)
	}
	for _, l := range d.log.Lines() {
		if strings.Contains(l, "level=panic") || strings.Contains(l, "level=fatal") {
			t.Errorf("a worker's line raised the dispatcher's log to panic/fatal: %.300s", l)
		}
		if len(l) > 64<<10 {
			t.Errorf("log line of %d bytes: worker lines should be capped", len(l))
		}
		if strings.Contains(l, "xxxxxxxxxxxxxxxx") && !strings.Contains(l, "stream=stderr") {
			t.Errorf("a piece of the 1 MiB line logged other than as the worker's line: %.300s", l)
		}
	}
	for _, pid := range d.workers {
		if state, _, ok := procStat(pid); !ok || state == 'Z' {
			t.Errorf("worker %d is gone", pid)
		}
	}
}

func TestJSONLog(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "1", "--log-format", "json")
	const id = "e2e-json-1"
	if resp, _ := d.get("/json-path", "X-Request-Id", id); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	d.waitLog(`"req_id":"` + id + `"`)
	d.signal(syscall.SIGTERM)
	if st := d.waitExit(exitWait); st.ExitCode() != 0 {
		t.Errorf("exit %v, want 0", st)
	}

	var listening, access map[string]any
	lines := d.log.Lines()
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("not a JSON line (%v): %s", err, l)
			continue
		}
		for _, k := range []string{"level", "msg", "time"} {
			if _, ok := m[k]; !ok {
				t.Errorf("JSON line without %q: %s", k, l)
			}
		}
		switch m["msg"] {
		case "dispatcher listening":
			listening = m
		case "request":
			access = m
		}
	}
	if listening == nil {
		t.Fatal("no listening line")
	}
	if addr, _ := listening["addr"].(string); addr != d.addr {
		t.Errorf("listening line addr %v, want %q", listening["addr"], d.addr)
	}
	if access == nil {
		t.Fatal("no access log line")
	}
	if access["method"] != "GET" || access["path"] != "/json-path" || access["req_id"] != id {
		t.Errorf("access log line: %v", access)
	}
	if status, _ := access["status"].(float64); status != 200 {
		t.Errorf("access log status %v, want 200", access["status"])
	}
	if pid, _ := access["pid"].(float64); int(pid) != d.workers[0] {
		t.Errorf("access log pid %v, want %d", access["pid"], d.workers[0])
	}
}

// An address in use (a second dispatcher on the host, say) names the flag
// to change.
func TestAddressInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := ln.Addr().String()
	hello := bin(t, "hello")
	for _, flag := range []string{"--listen", "--admin-listen"} {
		args := []string{"--workers", hello, "--pool-size", "1", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", flag, busy}
		code, stderr, _ := run(t, args...)
		want := "dispatcher: " + flag + " " + busy + ": the address is in use, by another dispatcher or another server: give this one another with " + flag
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("%s on a busy port: exit %d, want 1 and %q; stderr:\n%s", flag, code, want, stderr)
		}
	}
}

// A worker that never completes the handshake: the log says that the
// dispatcher waits for it, and the error names --start-timeout, not
// go-plugin's wording.
func TestStartTimeout(t *testing.T) {
	t.Parallel()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	code, stderr, _ := run(t, "--workers", sleep, "--pool-size", "1", "--listen", "127.0.0.1:0", "--start-timeout", "2s", "--", "60")
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	for _, w := range []string{
		`msg="workers still starting: no handshake yet; waiting until --start-timeout"`,
		`dispatcher: start worker "` + sleep + `": no handshake within 2s`,
		"a worker that is only slow to start needs a longer --start-timeout",
	} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
	if strings.Contains(stderr, "timeout while waiting for plugin to start") {
		t.Errorf("go-plugin's wording reached the user:\n%s", stderr)
	}
}
