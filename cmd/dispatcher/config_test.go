package main

// Tests of --config, --check-config, routing between functions, reloads
// (SIGHUP and --watch) and the admin listener, with the real binary.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/testbin"
)

// writeConfig writes a config file into a fresh directory and returns its
// path. HELLO, COUNTER and CRASH in text stand for the test workers'
// paths.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dispatcher.yaml")
	rewriteConfig(t, path, text)
	return path
}

func rewriteConfig(t *testing.T, path, text string) {
	t.Helper()
	text = strings.NewReplacer("HELLO", bin(t, "hello"), "COUNTER", bin(t, "counter"),
		"CRASH", bin(t, "crash")).Replace(text)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		text string
		want []string // in stderr, after the file's path
	}{
		{"unknown setting", "functions:\n  - workers: HELLO\n    pool_size: 2\n",
			[]string{":3: functions[0].pool_size: unknown setting (did you mean pool-size?)"}},
		{"bad value", "timeout: 5x\nfunctions:\n  - workers: HELLO\n",
			[]string{`:1: timeout: invalid value "5x"`}},
		{"duration without a unit", "functions:\n  - workers: HELLO\n    timeout: 5\n",
			[]string{`:3: functions[0].timeout: invalid value "5": a duration needs a unit, such as 5s, 5ms or 5m`}},
		{"command-line only", "version: true\nfunctions:\n  - workers: HELLO\n",
			[]string{":1: version: only on the command line"}},
		{"bad value in a function", "functions:\n  - workers: HELLO\n  - workers: COUNTER\n    memory-limit: lots\n",
			[]string{`:4: functions[1].memory-limit: invalid value "lots"`}},
		{"global setting in a function", "functions:\n  - workers: HELLO\n    listen: :1\n",
			[]string{":3: functions[0].listen is a setting of the whole dispatcher"}},
		{"no binary", "functions:\n  - name: a\n    route: /a\n",
			[]string{":2: functions[0]: workers (the worker binary) is required"}},
		{"missing binary", "functions:\n  - name: gone\n    workers: ./no-such-worker\n",
			[]string{":3: functions[0] (gone): --workers", "no-such-worker", "no such file"}},
		{"invalid setting", "functions:\n  - workers: HELLO\n    pool-size: 0\n",
			[]string{":3: functions[0] (hello): --pool-size 0: must be at least 1"}},
		{"invalid default", "mode: ondemand\npool-size: 3\nfunctions:\n  - workers: HELLO\n",
			[]string{":2: functions[0] (hello): --pool-size: only for --mode pool"}},
		{"duplicate name", "functions:\n  - workers: HELLO\n    route: /a\n  - workers: HELLO\n    route: /b\n",
			[]string{`:4: functions[1]: name "hello" already used by functions[0]`}},
		{"duplicate route", "functions:\n  - workers: HELLO\n    route: /a\n  - workers: COUNTER\n    route: /a/\n",
			[]string{":4: functions[1] (counter): route /a/ is already hello's"}},
		{"strip-prefix of /", "functions:\n  - workers: HELLO\n    strip-prefix: true\n",
			[]string{":2: functions[0].strip-prefix: the route / has no prefix to strip"}},
		{"strip-prefix not a boolean", "functions:\n  - workers: HELLO\n    route: /a\n    strip-prefix: maybe\n",
			[]string{":4: functions[0].strip-prefix: want true or false"}},
		{"function key at the top", "route: /a\nfunctions:\n  - workers: HELLO\n",
			[]string{":1: route: a setting of one function: put it in an entry of functions"}},
		{"bad route", "functions:\n  - workers: HELLO\n    route: api\n",
			[]string{`:3: functions[0].route "api": want a path prefix starting with /`}},
		{"list for a single value", "functions:\n  - workers: HELLO\n    timeout: [1s, 2s]\n",
			[]string{":3: functions[0].timeout: want a single value, not a list"}},
		{"no functions", "listen: 127.0.0.1:0\n",
			[]string{":1: functions: want a list of at least one function"}},
		{"not YAML", "functions: [\n", []string{"dispatcher.yaml: "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, tc.text)
			for _, flag := range []string{"--config", "--check-config"} {
				code, stderr, _ := run(t, flag, path)
				if code != 2 {
					t.Errorf("%s: exit status %d, want 2; stderr:\n%s", flag, code, stderr)
				}
				for _, w := range tc.want {
					if !strings.Contains(stderr, path+w) && !strings.Contains(stderr, w) {
						t.Errorf("%s: stderr lacks %q:\n%s", flag, w, stderr)
					}
				}
				if !strings.Contains(stderr, path) {
					t.Errorf("%s: stderr does not name the file %s:\n%s", flag, path, stderr)
				}
			}
		})
	}
	t.Run("workers and config", func(t *testing.T) {
		t.Parallel()
		path := writeConfig(t, "functions:\n  - workers: HELLO\n")
		code, stderr, _ := run(t, "--config", path, "--workers", bin(t, "hello"))
		if code != 2 || !strings.Contains(stderr, "--workers and --config: use one") {
			t.Errorf("exit status %d; stderr:\n%s", code, stderr)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		code, stderr, _ := run(t, "--check-config", "/no/such/dispatcher.yaml")
		if code != 2 || !strings.Contains(stderr, "/no/such/dispatcher.yaml") {
			t.Errorf("exit status %d; stderr:\n%s", code, stderr)
		}
	})
}

// --check-config starts one worker of each function, whatever its mode,
// through its handshake: a binary that is not a worker fails it, naming
// the function.
func TestCheckConfigStartsWorkers(t *testing.T) {
	t.Parallel()
	good := "functions:\n  - workers: HELLO\n    mode: ondemand\n  - workers: COUNTER\n    route: /c\n    mode: oneshot\n"
	code, stderr, _ := run(t, "--check-config", writeConfig(t, good))
	if code != 0 || !strings.Contains(stderr, "OK, 2 function(s); each worker binary started and completed its handshake") {
		t.Errorf("valid file: exit %d; stderr:\n%s", code, stderr)
	}
	path := writeConfig(t, good+"  - name: truth\n    route: /t\n    workers: /bin/true\n")
	code, stderr, _ = run(t, "--check-config", path)
	want := "dispatcher: " + path + `: function truth: start worker "/bin/true"`
	if code != 2 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "is it a worker built with the sdk?") {
		t.Errorf("/bin/true as a worker: exit %d, want 2 and %q; stderr:\n%s", code, want, stderr)
	}
}

// TestExampleConfig checks that the documented example validates and
// serves each of its functions.
func TestExampleConfig(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	if _, err := testbin.Build(filepath.Join(dir, "bin"), "examples/hello", "examples/jsonapi", "examples/sse", "examples/files"); err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(testbin.Root(), "examples", "dispatcher.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "examples"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "examples", "dispatcher.yaml")
	if err := os.WriteFile(path, example, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stderr, _ := run(t, "--check-config", path)
	if code != 0 || !strings.Contains(stderr, "OK, 4 function(s); each worker binary started and completed its handshake") {
		t.Fatalf("--check-config: exit status %d; stderr:\n%s", code, stderr)
	}
	d := startDispatcher(t, "--config", path, "--admin-listen", "127.0.0.1:0")
	for _, tc := range []struct{ path, want string }{
		{"/", "hello world"},
		{"/products", `"name":"notebook"`},
		{"/events?count=1&every=1ms", "event: tick"},
		{"/files/no-such-file-" + fmt.Sprint(os.Getpid()), "no such file"},
	} {
		resp, body := d.get(tc.path)
		if !strings.Contains(strings.ToLower(body), strings.ToLower(tc.want)) {
			t.Errorf("GET %s: %d %q, want %q", tc.path, resp.StatusCode, body, tc.want)
		}
	}
	d.waitLog("msg=request", "function=events", "path=/events")
	resp, body := d.getURL(d.admin + "/status?format=json")
	for _, name := range []string{`"hello"`, `"api"`, `"events"`, `"files"`} {
		if resp.StatusCode != 200 || !strings.Contains(body, `"name": `+name) {
			t.Errorf("status lacks function %s: %s", name, body)
		}
	}
}

// A route with strip-prefix: the handler sees the path without the
// prefix, and the prefix in X-Forwarded-Prefix.
func TestConfigStripPrefix(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, `
functions:
  - name: mine
    route: /mine
    strip-prefix: true
    workers: `+bin(t, "fidelity")+`
    pool-size: 1
  - name: whole
    route: /whole
    workers: `+bin(t, "fidelity")+`
    pool-size: 1
`)
	d := startDispatcher(t, "--config", path)
	resp, body := d.get("/mine/hop", "X-Forwarded-Prefix", "/spoofed")
	var h http.Header
	if err := json.Unmarshal([]byte(body), &h); resp.StatusCode != 200 || err != nil || h.Get("X-Forwarded-Prefix") != "/mine" {
		t.Errorf("GET /mine/hop: %d %q (%v), want the worker's /hop with X-Forwarded-Prefix /mine", resp.StatusCode, body, err)
	}
	if resp, body := d.get("/whole/hop"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /whole/hop without strip-prefix: %d %q, want the worker's 404 for /whole/hop", resp.StatusCode, body)
	}
}

func TestConfigRoutesByHostAndPrefix(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, `
functions:
  - name: counter
    route: /count
    workers: COUNTER
    pool-size: 1
  - name: hello-a
    host: a.example
    workers: HELLO
    pool-size: 1
`)
	d := startDispatcher(t, "--config", path)
	for _, tc := range []struct {
		path, host string
		status     int
		want       string
	}{
		{"/count", "", 200, "1 "},
		{"/count/x", "", 200, "2 "},
		{"/counter", "", 404, "no function"},
		{"/", "a.example", 200, "hello world"},
		{"/count", "a.example:8080", 200, "hello world"}, // host routes first
		{"/", "", 404, "no function"},
	} {
		var resp *http.Response
		var body string
		if tc.host != "" {
			resp, body = d.get(tc.path, "Host", tc.host)
		} else {
			resp, body = d.get(tc.path)
		}
		if resp.StatusCode != tc.status || !strings.HasPrefix(body, tc.want) && !strings.Contains(body, tc.want) {
			t.Errorf("GET %s (host %q): %d %q, want %d %q", tc.path, tc.host, resp.StatusCode, body, tc.status, tc.want)
		}
		if tc.status == 404 && resp.Header.Get("X-Dispatcher-Error") != "true" {
			t.Errorf("GET %s: 404 without X-Dispatcher-Error: true", tc.path)
		}
	}
	// The metrics name each function.
	resp, body := d.getURL(d.admin + "/metrics")
	for _, want := range []string{`dispatcher_requests_total{code="200",function="counter"} 2`, `dispatcher_requests_total{code="200",function="hello-a"} 2`} {
		if resp.StatusCode != 200 || !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// load sends GETs on conns keep-alive connections until stop is closed and
// counts the answers that are not 200 with the expected body.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startLoad(t *testing.T, url, want string, conns int) *load {
	l := &load{stop: make(chan struct{})}
	for range conns {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := &http.Client{Timeout: 20 * time.Second}
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				resp, err := client.Get(url)
				if err != nil {
					l.fail(err.Error())
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), want) {
					l.fail(fmt.Sprintf("%d %q %v", resp.StatusCode, body, err))
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	t.Cleanup(l.finish)
	return l
}

func (l *load) fail(s string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.failures) < 5 {
		l.failures = append(l.failures, s)
	}
	l.mu.Unlock()
}

func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// waitServed waits until the load has had n more successes.
func (l *load) waitServed(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	deadline := time.Now().Add(logWait)
	for l.ok.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("load stalled at %d answers (%d failed: %v)", l.ok.Load(), l.failed.Load(), l.failures)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestReloadUnderLoad: SIGHUP reloads while requests flow, with no request
// lost and no 5xx; a broken config or binary keeps the old version serving.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "functions:\n  - name: web\n    workers: HELLO\n    pool-size: 2\n")
	d := startDispatcher(t, "--config", path)
	first := workerPIDs(t, d)
	l := startLoad(t, d.url+"/", "hello world", 8)
	l.waitServed(t, 50)
	for i := range 3 {
		// Each reload changes the workers' environment: new workers.
		rewriteConfig(t, path, fmt.Sprintf("functions:\n  - name: web\n    workers: HELLO\n    pool-size: 2\n    env: {GENERATION: %d}\n", i))
		d.signal(syscall.SIGHUP)
		d.waitLogFunc(fmt.Sprintf("reload %d", i+1), nthLine(i+1, "reloaded: new workers serve"))
		l.waitServed(t, 50)
	}
	// A changed file is read again: one worker now.
	rewriteConfig(t, path, "functions:\n  - name: web\n    workers: HELLO\n    pool-size: 1\n")
	d.signal(syscall.SIGHUP)
	d.waitLogFunc("reload 4", nthLine(4, "reloaded: new workers serve"))
	l.waitServed(t, 50)
	// Broken config: refused, the old one serves on.
	rewriteConfig(t, path, "functions:\n  - name: web\n    workers: HELLO\n    pool-size: zero\n")
	d.signal(syscall.SIGHUP)
	d.waitLog("reload refused", "pool-size")
	l.waitServed(t, 50)
	// A binary that is no worker: the new workers never serve.
	notWorker := filepath.Join(filepath.Dir(path), "not-a-worker")
	if err := os.WriteFile(notWorker, []byte("#!/bin/sh\necho not a worker\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	rewriteConfig(t, path, "functions:\n  - name: web\n    workers: "+notWorker+"\n    pool-size: 1\n")
	d.signal(syscall.SIGHUP)
	d.waitLog("reload failed")
	l.waitServed(t, 50)
	l.finish()
	if n := l.failed.Load(); n > 0 {
		t.Fatalf("%d of %d requests failed during reloads: %v", n, n+l.ok.Load(), l.failures)
	}
	t.Logf("%d requests, none failed, across 4 reloads and 2 refused ones", l.ok.Load())
	for _, pid := range first {
		if !waitGone(pid, goneWait) {
			t.Errorf("worker %d of the first version still runs after the reloads", pid)
		}
	}
	if now := workerPIDs(t, d); len(now) != 1 {
		t.Errorf("workers after the reloads: %v, want 1 (pool-size 1)", now)
	}
}

// functionPIDs reads the worker pids of each function from the admin
// status.
func functionPIDs(t *testing.T, d *dproc) map[string][]int {
	t.Helper()
	_, body := d.getURL(d.admin + "/status?format=json")
	var st struct {
		Functions []struct {
			Name    string
			Workers []struct{ PID int }
		}
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	pids := map[string][]int{}
	for _, f := range st.Functions {
		for _, w := range f.Workers {
			pids[f.Name] = append(pids[f.Name], w.PID)
		}
	}
	return pids
}

// A reload replaces the workers of the functions whose settings or binary
// changed (content, or only its modification time), and keeps the others'
// running; a route or a setting of the HTTP front alone keeps them too.
func TestReloadRestartsOnlyChangedFunctions(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	copyFile(t, bin(t, "hello"), a)
	copyFile(t, bin(t, "counter"), b)
	config := func(routeA, maxBody, timeoutB string) string {
		return "functions:\n" +
			"  - name: a\n    route: " + routeA + "\n    workers: " + a + "\n    pool-size: 1\n    max-body: " + maxBody + "\n" +
			"  - name: b\n    route: /b\n    workers: " + b + "\n    pool-size: 1\n    timeout: " + timeoutB + "\n"
	}
	path := writeConfig(t, config("/a", "1M", "10s"))
	d := startDispatcher(t, "--config", path)
	before := functionPIDs(t, d)
	if len(before["a"]) != 1 || len(before["b"]) != 1 {
		t.Fatalf("workers %v, want one per function", before)
	}
	reloads := 0
	reload := func(wantRestarted, wantKept string) map[string][]int {
		t.Helper()
		reloads++
		d.signal(syscall.SIGHUP)
		line := d.waitLogFunc(fmt.Sprintf("reload %d", reloads), nthLine(reloads, "msg=\"reloaded:"))
		if r, _ := field(line, "restarted"); r != wantRestarted {
			t.Errorf("reload %d restarted %q, want %q: %s", reloads, r, wantRestarted, line)
		}
		if k, _ := field(line, "kept"); k != wantKept {
			t.Errorf("reload %d kept %q, want %q: %s", reloads, k, wantKept, line)
		}
		// The new workers are in the status once the reload is logged.
		return functionPIDs(t, d)
	}
	same := func(x, y []int) bool { return len(x) == 1 && len(y) == 1 && x[0] == y[0] }

	// a's route and max-body, b's timeout.
	rewriteConfig(t, path, config("/a2", "2M", "20s"))
	now := reload("b", "a")
	if !same(now["a"], before["a"]) || same(now["b"], before["b"]) {
		t.Errorf("after changing b's timeout: workers %v, before %v: want a's kept, b's replaced", now, before)
	}
	if _, body := d.get("/a2"); body != "hello world\n" {
		t.Errorf("a's new route: %q", body)
	}
	before = now

	// Nothing.
	if now = reload("", "a,b"); !same(now["a"], before["a"]) || !same(now["b"], before["b"]) {
		t.Errorf("after a reload that changed nothing: workers %v, before %v", now, before)
	}

	// a's binary touched: same content, a new modification time.
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(a, later, later); err != nil {
		t.Fatal(err)
	}
	if now = reload("a", "b"); same(now["a"], before["a"]) || !same(now["b"], before["b"]) {
		t.Errorf("after touching a's binary: workers %v, before %v", now, before)
	}
	before = now

	// b's binary replaced by a rename, as a deploy does.
	copyFile(t, bin(t, "hello"), b+".new")
	if err := os.Rename(b+".new", b); err != nil {
		t.Fatal(err)
	}
	if now = reload("b", "a"); !same(now["a"], before["a"]) || same(now["b"], before["b"]) {
		t.Errorf("after replacing b's binary: workers %v, before %v", now, before)
	}
	if _, body := d.get("/b"); body != "hello world\n" {
		t.Errorf("b after its binary became hello: %q", body)
	}

	// The reloads are counted, a failed one too.
	rewriteConfig(t, path, "functions: []\n")
	d.signal(syscall.SIGHUP)
	d.waitLog("reload refused")
	_, metrics := d.getURL(d.admin + "/metrics")
	for _, want := range []string{`dispatcher_reloads_total{result="ok"} 4`, `dispatcher_reloads_total{result="failed"} 1`, "dispatcher_last_reload_successful 0"} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// nthLine matches the n-th line containing sub.
func nthLine(n int, sub string) func(string) bool {
	seen := 0
	return func(l string) bool {
		if strings.Contains(l, sub) {
			seen++
		}
		return seen == n
	}
}

// workerPIDs reads the worker pids from the admin status.
func workerPIDs(t *testing.T, d *dproc) []int {
	t.Helper()
	_, body := d.getURL(d.admin + "/status?format=json")
	var pids []int
	for _, line := range strings.Split(body, "\n") {
		var pid int
		if _, err := fmt.Sscanf(strings.TrimSpace(line), `"pid": %d,`, &pid); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestWatchReloadsOnBinaryChange: with --watch, replacing the worker
// binary (as a deploy does, by rename) moves traffic to the new one.
func TestWatchReloadsOnBinaryChange(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	worker := filepath.Join(dir, "handler")
	copyFile(t, bin(t, "hello"), worker)
	d := startDispatcher(t, "--workers", worker, "--pool-size", "1", "--watch")
	if _, body := d.get("/"); body != "hello world\n" {
		t.Fatalf("before: %q", body)
	}
	copyFile(t, bin(t, "counter"), worker+".new")
	if err := os.Rename(worker+".new", worker); err != nil {
		t.Fatal(err)
	}
	d.waitLog("reloaded: new workers serve")
	if _, body := d.get("/"); !strings.HasPrefix(body, "1 ") {
		t.Fatalf("after the binary changed: %q, want the counter's answer", body)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestWatchFollowsConfig: with --watch, a changed config file reloads, and
// the binaries it names from then on are watched.
func TestWatchFollowsConfig(t *testing.T) {
	t.Parallel()
	other := shortTempDir(t)
	second := filepath.Join(other, "second")
	copyFile(t, bin(t, "counter"), second)
	path := writeConfig(t, "functions:\n  - name: web\n    workers: HELLO\n    pool-size: 1\n")
	d := startDispatcher(t, "--config", path, "--watch")
	if _, body := d.get("/"); body != "hello world\n" {
		t.Fatalf("before: %q", body)
	}
	rewriteConfig(t, path, "functions:\n  - name: web\n    workers: "+second+"\n    pool-size: 1\n")
	d.waitLogFunc("reload 1", nthLine(1, "reloaded: new workers serve"))
	if _, body := d.get("/"); !strings.HasPrefix(body, "1 ") {
		t.Fatalf("after the config changed: %q, want the counter's answer", body)
	}
	copyFile(t, bin(t, "hello"), second+".new")
	if err := os.Rename(second+".new", second); err != nil {
		t.Fatal(err)
	}
	d.waitLogFunc("reload 2", nthLine(2, "reloaded: new workers serve"))
	if _, body := d.get("/"); body != "hello world\n" {
		t.Fatalf("after the newly named binary changed: %q", body)
	}
}
