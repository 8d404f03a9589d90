package main

// Helpers for the end-to-end tests in main_test.go: building the binaries,
// running the dispatcher as a subprocess, following its log, polling /proc.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/testbin"
)

// bins maps a binary's base name ("dispatcher", "hello", ...) to its path.
var bins map[string]string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	return testbin.Run(m, &bins, append([]string{"cmd/dispatcher"}, testbin.Workers()...)...)
}

// bin returns the path of a built binary.
func bin(t testing.TB, name string) string {
	t.Helper()
	p, ok := bins[name]
	if !ok {
		t.Fatalf("no binary %q was built", name)
	}
	return p
}

// Bounds. The machine may be small and busy (-race, -count=5): generous but
// finite.
const (
	startWait = 15 * time.Second // for the listening line
	exitWait  = 15 * time.Second // for the process to exit once it should
	goneWait  = 10 * time.Second // for a killed process to disappear
	logWait   = 10 * time.Second // for an expected log line
)

// poll calls cond with a bounded exponential backoff until it returns true
// or timeout passes; it reports whether cond returned true.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	delay := 2 * time.Millisecond
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		t := time.NewTimer(min(delay, left))
		<-t.C
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// logBuf collects a process's stderr, line by line, and lets tests wait for
// a line.
type logBuf struct {
	mu      sync.Mutex
	lines   []string
	eof     bool
	changed chan struct{} // closed and replaced on every change
}

func newLogBuf() *logBuf { return &logBuf{changed: make(chan struct{})} }

// follow reads r until end of file.
func (b *logBuf) follow(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			b.add(strings.TrimSuffix(line, "\n"))
		}
		if err != nil {
			b.mu.Lock()
			b.eof = true
			close(b.changed)
			b.changed = make(chan struct{})
			b.mu.Unlock()
			return
		}
	}
}

func (b *logBuf) add(line string) {
	b.mu.Lock()
	b.lines = append(b.lines, line)
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// Lines returns a copy of the lines read so far.
func (b *logBuf) Lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.lines...)
}

// String returns the lines read so far, each shortened for test output.
func (b *logBuf) String() string {
	var sb strings.Builder
	for _, l := range b.Lines() {
		if len(l) > 600 {
			l = l[:600] + fmt.Sprintf("... (%d bytes)", len(l))
		}
		sb.WriteString(l)
		sb.WriteByte('\n')
	}
	return sb.String()
}

// wait returns the first line that satisfies match, waiting up to timeout
// for it. ok is false on timeout or if the stream ended without one.
func (b *logBuf) wait(timeout time.Duration, match func(string) bool) (line string, ok bool) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	next := 0
	for {
		b.mu.Lock()
		lines, eof, changed := b.lines[next:], b.eof, b.changed
		next = len(b.lines)
		b.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, true
			}
		}
		if eof {
			return "", false
		}
		select {
		case <-changed:
		case <-timer.C:
			return "", false
		}
	}
}

// containsAll returns a matcher for lines containing every one of subs.
func containsAll(subs ...string) func(string) bool {
	return func(l string) bool {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				return false
			}
		}
		return true
	}
}

// logfmtField returns the value of key in a logrus text line (key=value or
// key="quoted value"), and whether it is there.
func logfmtField(line, key string) (string, bool) {
	for i := 0; ; {
		j := strings.Index(line[i:], key+"=")
		if j < 0 {
			return "", false
		}
		j += i
		i = j + len(key) + 1
		if j > 0 && line[j-1] != ' ' {
			continue // the key is the end of another key or inside a value
		}
		rest := line[i:]
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return "", false
			}
			v, err := strconv.Unquote(q)
			return v, err == nil
		}
		if k := strings.IndexByte(rest, ' '); k >= 0 {
			rest = rest[:k]
		}
		return rest, true
	}
}

// field returns the value of key in a log line of either format.
func field(line, key string) (string, bool) {
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			return "", false
		}
		v, ok := m[key]
		if !ok {
			return "", false
		}
		if s, ok := v.(string); ok {
			return s, true
		}
		return fmt.Sprint(v), true
	}
	return logfmtField(line, key)
}

func isListening(line string) bool {
	msg, _ := field(line, "msg")
	return msg == "dispatcher listening"
}

// dproc is a dispatcher running as a subprocess.
type dproc struct {
	t       *testing.T
	cmd     *exec.Cmd
	log     *logBuf
	done    chan struct{} // closed once the process is reaped
	state   *os.ProcessState
	tmpDir  string // the process's TMPDIR
	addr    string // host:port it listens on
	url     string // http://addr
	admin   string // http://admin-addr, if the admin listener is on
	workers []int  // worker pids from the listening line
	client  *http.Client
}

// startProc starts the dispatcher with args and a fresh, empty TMPDIR, and
// follows its stderr. It does not wait for anything.
func startProc(t *testing.T, args ...string) *dproc {
	t.Helper()
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--admin-listen") }) {
		// Not the default port: tests run dispatchers in parallel.
		args = append([]string{"--admin-listen", "127.0.0.1:0"}, args...)
	}
	return launchProc(t, shortTempDir(t), append([]string{bin(t, "dispatcher")}, args...))
}

// launchProc starts argv (the dispatcher, or a wrapper that executes it)
// with tmpDir as its TMPDIR and follows its stderr.
func launchProc(t *testing.T, tmpDir string, argv []string) *dproc {
	t.Helper()
	return launchProcWith(t, tmpDir, argv, nil)
}

// launchProcWith is launchProc with prep, if not nil, adjusting the
// command before it starts (descriptors to inherit, an identity).
func launchProcWith(t *testing.T, tmpDir string, argv []string, prep func(*exec.Cmd)) *dproc {
	t.Helper()
	d := &dproc{t: t, log: newLogBuf(), done: make(chan struct{}), tmpDir: tmpDir}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Env = envWithTMPDIR(tmpDir)
	if prep != nil {
		prep(d.cmd)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stderr = w
	if err := d.cmd.Start(); err != nil {
		r.Close()
		w.Close()
		t.Fatal(err)
	}
	w.Close()
	go func() {
		defer r.Close()
		d.log.follow(r)
	}()
	go func() {
		_ = d.cmd.Wait()
		d.state = d.cmd.ProcessState
		close(d.done)
	}()
	t.Cleanup(d.cleanup)
	return d
}

// envWithTMPDIR returns the test process's environment with TMPDIR set to
// dir.
func envWithTMPDIR(dir string) []string {
	env := []string{"TMPDIR=" + dir}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TMPDIR=") {
			env = append(env, kv)
		}
	}
	return env
}

// startDispatcher starts the dispatcher on 127.0.0.1:0 with args and waits
// for its listening line.
func startDispatcher(t *testing.T, args ...string) *dproc {
	t.Helper()
	d := startProc(t, append([]string{"--listen", "127.0.0.1:0"}, args...)...)
	d.awaitListening(!slices.Contains(args, "ondemand") && !slices.Contains(args, "--config"))
	return d
}

// awaitListening waits for the listening line and takes the addresses and
// worker pids from it; withWorkers: it must name some.
func (d *dproc) awaitListening(withWorkers bool) {
	t := d.t
	t.Helper()
	line, ok := d.log.wait(startWait, isListening)
	if !ok {
		t.Fatalf("no listening line within %s (exited: %v); log:\n%s", startWait, d.exited(), d.log)
	}
	addr, ok := field(line, "addr")
	if !ok || !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("listening line without a 127.0.0.1 addr: %s", line)
	}
	d.addr, d.url = addr, "http://"+addr
	ws, _ := field(line, "workers")
	for _, f := range strings.Fields(ws) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("listening line: bad workers field %q", ws)
		}
		d.workers = append(d.workers, pid)
	}
	if a, ok := field(line, "admin"); ok {
		d.admin = "http://" + a
	}
	if len(d.workers) == 0 && withWorkers {
		t.Fatalf("listening line names no workers: %s", line)
	}
	d.client = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}
}

func (d *dproc) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the dispatcher.
func (d *dproc) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil && !d.exited() {
		d.t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits up to timeout for the dispatcher to exit and returns how it
// ended; on timeout it fails the test (cleanup kills the process).
func (d *dproc) waitExit(timeout time.Duration) *os.ProcessState {
	d.t.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-d.done:
		return d.state
	case <-t.C:
		d.t.Fatalf("dispatcher did not exit within %s; log:\n%s", timeout, d.log)
		return nil
	}
}

// waitLog waits for a line containing every one of subs and returns it.
func (d *dproc) waitLog(subs ...string) string {
	d.t.Helper()
	return d.waitLogFunc(strings.Join(subs, " & "), containsAll(subs...))
}

func (d *dproc) waitLogFunc(what string, match func(string) bool) string {
	d.t.Helper()
	line, ok := d.log.wait(logWait, match)
	if !ok {
		d.t.Fatalf("no log line with %s within %s; log:\n%s", what, logWait, d.log)
	}
	return line
}

// cleanup stops a dispatcher still running (gracefully if it can), checks
// that its workers are gone and reports its log if the test failed.
func (d *dproc) cleanup() {
	if !d.exited() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(exitWait)
		select {
		case <-d.done:
		case <-t.C:
			d.t.Errorf("dispatcher ignored SIGTERM for %s; killing it", exitWait)
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		t.Stop()
	}
	for _, pid := range d.workers {
		if !waitGone(pid, goneWait) {
			d.t.Errorf("worker %d still running %s after the dispatcher exited", pid, goneWait)
		}
	}
	if d.t.Failed() {
		d.t.Logf("dispatcher stderr:\n%s", d.log)
	}
}

// get sends a GET to path with the given header pairs (name, value, ...).
func (d *dproc) get(path string, header ...string) (*http.Response, string) {
	d.t.Helper()
	return d.getURL(d.url+path, header...)
}

// getURL sends a GET to url (the admin listener's, say).
func (d *dproc) getURL(url string, header ...string) (*http.Response, string) {
	d.t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	resp, body := d.do(d.client, req)
	return resp, string(body)
}

// do sends req with client and reads the whole response body; a failure
// fails the test.
func (d *dproc) do(client *http.Client, req *http.Request) (*http.Response, []byte) {
	d.t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		d.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		d.t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, body
}

// run runs the dispatcher to completion (bounded by exitWait) with a fresh
// TMPDIR and returns its exit status, stderr and TMPDIR.
func run(t *testing.T, args ...string) (code int, stderr, tmpDir string) {
	t.Helper()
	code, _, stderr, tmpDir = runAll(t, args...)
	return code, stderr, tmpDir
}

// runStdout is run for a command that writes to stdout.
func runStdout(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	code, stdout, stderr, _ = runAll(t, args...)
	return code, stdout, stderr
}

func runAll(t *testing.T, args ...string) (code int, stdout, stderr, tmpDir string) {
	t.Helper()
	tmpDir = shortTempDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), exitWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin(t, "dispatcher"), args...)
	cmd.WaitDelay = time.Second
	cmd.Env = envWithTMPDIR(tmpDir)
	var buf, out bytes.Buffer
	cmd.Stderr, cmd.Stdout = &buf, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("dispatcher %s did not exit within %s; stderr:\n%s", strings.Join(args, " "), exitWait, buf.String())
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("dispatcher %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), buf.String(), tmpDir
}

// procStat returns the state letter and start time (in clock ticks since
// boot) of pid, or ok false if there is no such process.
func procStat(pid int) (state byte, start uint64, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...; comm may contain anything, even ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, false
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], start, true
}

// waitGone polls until pid no longer runs: no such process, a zombie (an
// orphan the container's init may never reap) or a different process that
// reused the pid. It reports whether that happened within timeout.
func waitGone(pid int, timeout time.Duration) bool {
	_, start0, ok := procStat(pid)
	if !ok {
		return true
	}
	return poll(timeout, func() bool {
		state, start, ok := procStat(pid)
		return !ok || state == 'Z' || state == 'X' || start != start0
	})
}

// processesOf returns the pids of live (non-zombie) processes running the
// executable at path.
func processesOf(path string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		exe, _ := os.Readlink(filepath.Join(dir, "exe"))
		exe = strings.TrimSuffix(exe, " (deleted)")
		argv0 := ""
		if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
			argv0, _, _ = strings.Cut(string(b), "\x00")
		}
		if exe == path || argv0 == path {
			if state, _, ok := procStat(pid); ok && state != 'Z' && state != 'X' {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// shortTempDir returns a new empty directory (mode 0755), removed when the test ends,
// with a path short enough to hold the dispatcher's unix sockets (unlike
// t.TempDir, whose path grows with the test's name).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "de2e")
	if err != nil {
		t.Fatal(err)
	}
	// Searchable by the workers' user (nobody, for a dispatcher running
	// as root), whose socket directories go there.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing the test's TMPDIR: %v", err)
		}
	})
	return dir
}

// dirEntries lists dir's entries by name.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
