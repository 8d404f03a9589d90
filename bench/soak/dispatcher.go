package main

// Running one dispatcher process: start it on a loopback port with a fresh
// TMPDIR, follow its JSON log (stderr), stop it, and count the events the
// report needs.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// logEntry is the part of a dispatcher log line the soak reads.
type logEntry struct {
	Level    string `json:"level"`
	Msg      string `json:"msg"`
	Addr     string `json:"addr"`
	Status   int    `json:"status"`
	Reason   string `json:"reason"`
	Refused  int    `json:"refused"`
	Stream   string `json:"stream"`
	PID      int    `json:"pid"`
	Error    string `json:"error"`
	ReqID    string `json:"req_id"`
	Streamed bool   `json:"streamed"`
}

// events counts what the dispatcher logged.
type events struct {
	mu            sync.Mutex
	exited        int            // "worker exited unexpectedly; replacing it"
	killed        map[string]int // "worker killed; replacing it", by reason (shortened)
	oomKilled     int            // "worker killed: out of memory ...; replacing it"
	quarantined   int            // "worker quarantined: ..."
	breakerOpen   int
	breakerProbe  int
	breakerClosed int
	startFailed   int
	refused       int                  // requests refused by admission control (summed)
	access        map[int]int          // access log: status -> count
	oomCgroup     int                  // worker lines: "chaos: oom: memory limit ..."
	oomFallback   int                  // "chaos: oom: no memory limit ..."
	oomUnenforced int                  // "... the limit is not enforced ..."
	faultStart    map[string]time.Time // worker lines "chaos: fault KIND ID NS": request ID -> when the worker took it
	exitAfterPID  map[int]bool         // workers that took an exit-after request
	exitAfterReq  map[string]bool      // the exit-after requests
	exitAfterRacy int                  // exit-after workers without the seccomp filter ("chaos: exit-after: no seccomp filter ...")
	retried       int                  // "request did not reach its worker; retrying on another" (debug)
	retriedStream int                  // of which with a streamed request body
	failed        map[string]failure   // requests whose worker failed, by request ID
	otherErrors   map[string]int       // error-level lines of the dispatcher itself not accounted for above
	nonJSON       []string             // the first lines that were not JSON
}

// failure is what the dispatcher logged of a request whose worker failed.
type failure struct {
	pid int
	err string
}

// lostToExit reports whether request id failed because its worker, which
// had just answered an exit-after request, exited on its own (status 0)
// after reading it: the dispatcher saw the connection end with all it had
// sent read (EOF, not a reset), so the worker took the request with it, a
// 502 by design. Such a request is not the dispatcher's failure.
func (ev *events) lostToExit(id string) bool {
	f, ok := ev.failed[id]
	return ok && ev.exitAfterPID[f.pid] && !ev.exitAfterReq[id] &&
		strings.Contains(f.err, "exited with status 0") &&
		strings.Contains(f.err, "worker closed the connection: EOF")
}

func newEvents() *events {
	return &events{killed: map[string]int{}, access: map[int]int{}, otherErrors: map[string]int{}, faultStart: map[string]time.Time{},
		exitAfterPID: map[int]bool{}, exitAfterReq: map[string]bool{}, failed: map[string]failure{}}
}

// expectedErrors are error-level messages of the dispatcher that the
// faults cause by design.
var expectedErrors = map[string]bool{
	"worker failed during the request": true,
	"request timed out; worker killed": true,
	"worker failed":                    true,
	"worker binary quarantined: breaker open, no worker starts and requests that find none are refused until then": true,
}

func (ev *events) add(e *logEntry) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if e.Stream != "" { // a line a worker wrote
		switch {
		case strings.HasPrefix(e.Msg, "chaos: fault "):
			if f := strings.Fields(e.Msg); len(f) == 5 {
				if ns, err := strconv.ParseInt(f[4], 10, 64); err == nil {
					ev.faultStart[f[3]] = time.Unix(0, ns)
				}
				if f[2] == "exit-after" {
					ev.exitAfterPID[e.PID] = true
					ev.exitAfterReq[f[3]] = true
				}
			}
		case strings.HasPrefix(e.Msg, "chaos: exit-after: no seccomp filter"):
			ev.exitAfterRacy++
		case strings.HasPrefix(e.Msg, "chaos: oom: memory limit"):
			ev.oomCgroup++
		case strings.HasPrefix(e.Msg, "chaos: oom: no memory limit"):
			ev.oomFallback++
		case strings.Contains(e.Msg, "the limit is not enforced"):
			ev.oomUnenforced++
		}
		return
	}
	switch {
	case e.Msg == "request":
		ev.access[e.Status]++
	case e.Msg == "worker failed during the request", e.Msg == "response failed after its head was sent; connection cut":
		ev.failed[e.ReqID] = failure{pid: e.PID, err: e.Error}
	case e.Msg == "request did not reach its worker; retrying on another":
		ev.retried++
		if e.Streamed {
			ev.retriedStream++
		}
	case e.Msg == "worker exited unexpectedly; replacing it":
		ev.exited++
	case e.Msg == "worker killed; replacing it":
		r := e.Reason
		if i := strings.IndexByte(r, ':'); i > 0 {
			r = r[:i]
		}
		ev.killed[r]++
	case strings.HasPrefix(e.Msg, "worker killed: out of memory"):
		ev.oomKilled++
	case strings.HasPrefix(e.Msg, "worker quarantined:"):
		ev.quarantined++
	case strings.HasPrefix(e.Msg, "worker binary quarantined"):
		ev.breakerOpen++
	case strings.HasPrefix(e.Msg, "worker binary quarantine over"):
		ev.breakerProbe++
	case strings.HasPrefix(e.Msg, "worker binary out of quarantine"):
		ev.breakerClosed++
	case e.Msg == "worker failed to start":
		ev.startFailed++
	case strings.HasPrefix(e.Msg, "overloaded"):
		ev.refused += e.Refused
	}
	if (e.Level == "error" || e.Level == "fatal" || e.Level == "panic") && !expectedErrors[e.Msg] {
		ev.otherErrors[e.Msg]++
	}
}

func (ev *events) restarts() int {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	n := ev.exited + ev.oomKilled
	for _, k := range ev.killed {
		n += k
	}
	return n
}

// snapshot returns a copy safe to read without the lock.
func (ev *events) snapshot() *events {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return &events{
		exited: ev.exited, killed: clone(ev.killed), oomKilled: ev.oomKilled,
		quarantined: ev.quarantined, breakerOpen: ev.breakerOpen, breakerProbe: ev.breakerProbe,
		breakerClosed: ev.breakerClosed, startFailed: ev.startFailed, refused: ev.refused,
		access: clone(ev.access), oomCgroup: ev.oomCgroup, oomFallback: ev.oomFallback,
		oomUnenforced: ev.oomUnenforced, otherErrors: clone(ev.otherErrors), faultStart: clone(ev.faultStart),
		exitAfterPID: clone(ev.exitAfterPID), exitAfterReq: clone(ev.exitAfterReq), failed: clone(ev.failed),
		exitAfterRacy: ev.exitAfterRacy, retried: ev.retried, retriedStream: ev.retriedStream,
		nonJSON: append([]string(nil), ev.nonJSON...),
	}
}

func clone[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// dispatcher is one running dispatcher process.
type dispatcher struct {
	cmd     *exec.Cmd
	pid     int
	addr    string // where it serves HTTP
	admin   string // its admin listener, if any
	tmpdir  string // its TMPDIR
	logPath string
	ev      *events

	listening chan struct{} // closed when "dispatcher listening" was logged
	exited    chan struct{} // closed when the process was reaped
	state     *os.ProcessState
	readDone  chan struct{}
	logR      *os.File
	tailMu    sync.Mutex
	tail      []string // the last lines, for error messages
}

// startDispatcher starts bin with args (--listen, --log-format and
// --log-level are added) and waits until it listens. TMPDIR is tmpdir. If
// it exits first, the error carries its exit status and last log lines.
func startDispatcher(ctx context.Context, bin string, args []string, tmpdir, logPath, admin string) (*dispatcher, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	// Debug: the retries of requests a dead worker never read are counted.
	args = append([]string{"--listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug"}, args...)
	if admin != "" {
		args = append(args, "--admin-listen", admin)
	}
	r, w, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(withoutEnv(os.Environ(), "TMPDIR"), "TMPDIR="+tmpdir)
	cmd.Stdout, cmd.Stderr = w, w
	// Its own process group: a Ctrl-C at the terminal reaches the soak,
	// which stops it in order. Pdeathsig: it does not outlive the soak.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		logf.Close()
		return nil, err
	}
	w.Close()
	d := &dispatcher{
		cmd: cmd, pid: cmd.Process.Pid, tmpdir: tmpdir, logPath: logPath, admin: admin, ev: newEvents(),
		listening: make(chan struct{}), exited: make(chan struct{}), readDone: make(chan struct{}), logR: r,
	}
	go d.read(r, logf)
	go func() {
		_ = cmd.Wait()
		d.state = cmd.ProcessState
		close(d.exited)
	}()
	t := time.NewTimer(60 * time.Second)
	defer t.Stop()
	select {
	case <-d.listening:
		return d, nil
	case <-d.exited:
		d.waitLog(2 * time.Second)
		return d, &startError{status: d.state.ExitCode(), tail: d.lastLines()}
	case <-t.C:
		d.kill()
		return d, fmt.Errorf("dispatcher did not listen within 60s; last lines:\n%s", d.lastLines())
	case <-ctx.Done():
		d.kill()
		return d, ctx.Err()
	}
}

// startError is a dispatcher that exited before it listened.
type startError struct {
	status int
	tail   string
}

func (e *startError) Error() string {
	return fmt.Sprintf("dispatcher exited with status %d before listening:\n%s", e.status, e.tail)
}

func withoutEnv(env []string, key string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func (d *dispatcher) read(r io.Reader, logf *os.File) {
	defer close(d.readDone)
	defer logf.Close()
	bw := bufio.NewWriterSize(logf, 64<<10)
	defer bw.Flush()
	br := bufio.NewReaderSize(r, 64<<10)
	listening := false
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			_, _ = bw.Write(line)
			line = bytes.TrimRight(line, "\r\n")
			d.keepTail(string(line))
			var e logEntry
			if json.Unmarshal(line, &e) != nil {
				d.ev.mu.Lock()
				if len(d.ev.nonJSON) < 20 {
					d.ev.nonJSON = append(d.ev.nonJSON, string(line))
				}
				d.ev.mu.Unlock()
			} else {
				d.ev.add(&e)
				if !listening && e.Msg == "dispatcher listening" && e.Addr != "" {
					listening = true
					d.addr = e.Addr
					close(d.listening)
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func (d *dispatcher) keepTail(s string) {
	d.tailMu.Lock()
	defer d.tailMu.Unlock()
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	d.tail = append(d.tail, s)
	if len(d.tail) > 40 {
		d.tail = d.tail[len(d.tail)-20:]
	}
}

func (d *dispatcher) lastLines() string {
	d.tailMu.Lock()
	defer d.tailMu.Unlock()
	n := min(len(d.tail), 15)
	return "  " + strings.Join(d.tail[len(d.tail)-n:], "\n  ")
}

// waitLog waits, at most timeout, for the log to be read to its end (the
// pipe may be held by a straggler: then it is closed).
func (d *dispatcher) waitLog(timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-d.readDone:
	case <-t.C:
		d.logR.Close()
		<-d.readDone
	}
}

func (d *dispatcher) running() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to timeout for the exit, then kills it.
// It returns how long the stop took and whether it had to kill.
func (d *dispatcher) stop(timeout time.Duration) (time.Duration, bool) {
	t0 := time.Now()
	if !d.running() {
		return 0, false
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-d.exited:
		d.waitLog(5 * time.Second)
		return time.Since(t0), false
	case <-t.C:
		d.kill()
		return time.Since(t0), true
	}
}

// kill ends the dispatcher and its process group at once and waits for it.
func (d *dispatcher) kill() {
	if d.running() {
		_ = syscall.Kill(-d.pid, syscall.SIGKILL)
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.waitLog(5 * time.Second)
}

// exitDesc describes how the dispatcher ended.
func (d *dispatcher) exitDesc() string {
	if d.state == nil {
		return "running"
	}
	if ws, ok := d.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return "status " + strconv.Itoa(d.state.ExitCode())
}

// goroutines reads go_goroutines from the admin listener's /metrics, or
// returns -1.
func (d *dispatcher) goroutines() int {
	if d.admin == "" {
		return -1
	}
	// No keep-alive: a connection left open would count among the
	// dispatcher's descriptors and goroutines at the next measurement.
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + d.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return -1
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return int(f)
			}
		}
	}
	return -1
}

// freeLoopbackAddr returns a loopback address with a port free right now.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// helpMentions reports whether `bin --help` lists flag.
func helpMentions(bin, flag string) (bool, error) {
	out, err := exec.Command(bin, "--help").CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return false, err
	}
	return bytes.Contains(out, []byte("-"+flag+" ")) || bytes.Contains(out, []byte("-"+flag+"\n")), nil
}
