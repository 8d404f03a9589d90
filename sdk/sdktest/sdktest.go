// Package sdktest tests worker binaries the way they run in production, in
// the spirit of net/http/httptest. Build compiles a worker's main package
// once per test binary; Start runs it under a real dispatcher on a loopback
// port and returns its base URL:
//
//	func TestHello(t *testing.T) {
//		srv := sdktest.Start(t, sdktest.Build(t, "."))
//		resp, err := http.Get(srv.URL + "/")
//		...
//	}
//
// The dispatcher is the real command, cmd/dispatcher, run as a process:
// every request takes the production path, through its HTTP front (request
// IDs, hop-by-hop headers, status mapping, access log), its worker pool
// (timeouts, crash detection, restarts), msgpack frames over inherited
// socketpairs, and the sdk in the child. So a test sees what a client will:
// a crash is a 502, a handler that outlives Options.Timeout a 504, a header
// with CR or LF a 502, and the handler's log lines reach Server.Log at their
// level with the request ID.
//
// The dispatcher binary is built once per test binary from the module that
// provides this package, at the version the handler's module requires (or
// the directory a replace directive or a go.work names), so the sdk and the
// dispatcher always match. Set SDKTEST_DISPATCHER to the path of a
// dispatcher binary to use that one instead.
//
// Because the dispatcher runs as a process, this package imports none of it:
// a handler's module that tests with sdktest requires what the sdk itself
// does, not the dispatcher's own dependencies (go-plugin, gRPC, protobuf,
// Prometheus).
package sdktest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// DefaultStartTimeout is the start and handshake limit of each worker when
// Options.StartTimeout is zero: more than a dispatcher's default, because a
// test machine running the race detector and other test binaries at once
// can be slow to start a process.
const DefaultStartTimeout = 30 * time.Second

// LogWait bounds Server.WaitLog.
const LogWait = 15 * time.Second

// closeTimeout bounds the graceful part of Server.Close (the dispatcher's
// --shutdown-timeout): in-flight requests and workers that do not finish
// within it are cut and killed.
const closeTimeout = 10 * time.Second

// exitWait is how long Close waits for the dispatcher to exit after its
// graceful part, and NewServer for it to listen after the workers' start
// limit, before killing it.
const exitWait = 15 * time.Second

// Options configures the dispatcher Start runs. The zero value means one
// worker serving one request at a time with the dispatcher's defaults.
type Options struct {
	// Size is the number of worker processes (the dispatcher's
	// --pool-size). If zero, 1.
	Size int
	// Concurrency is the number of requests one worker serves at once
	// (--concurrency, 1-1024). If zero, 1.
	Concurrency int
	// Pipeline is how many requests may be outstanding on one busy slot,
	// counting the running one (--pipeline, 1-64; 1 disables pipelining).
	// If zero, the dispatcher's default.
	Pipeline int
	// Timeout bounds each request from the moment a worker takes it
	// (--timeout); past it the client gets a 504 and the worker is killed
	// and replaced. If zero, the dispatcher's default.
	Timeout time.Duration
	// StartTimeout bounds each worker's start and handshake
	// (--start-timeout). If zero, DefaultStartTimeout.
	StartTimeout time.Duration
	// Env holds "KEY=value" entries added to the environment of the
	// workers, as the dispatcher's --env flag does. Workers otherwise get
	// the dispatcher's minimal environment (PATH, and LANG and TZ if set),
	// never the test process's own.
	Env []string
	// Args are passed to the worker binary, as the arguments after "--" on
	// the dispatcher's command line are.
	Args []string
	// Dir is the dispatcher's working directory, which workers inherit
	// with --sandbox=off (in a sandbox theirs is /). If empty, the test's.
	Dir string
	// Flags are more of the dispatcher's flags, as on its command line:
	// {"--max-body", "1M"}, {"--mode", "oneshot"}. They come after those
	// the fields above set, so they win; with a --mode other than pool,
	// Size is not passed (--pool-size is pool mode's).
	Flags []string
	// LogOutput, if set, also receives the dispatcher's log as text lines
	// as they are written (os.Stderr to watch a test live). The log is
	// always kept in memory (Server.Log), and Start prints it with tb.Log
	// when the test fails.
	LogOutput io.Writer
}

// args returns the dispatcher's command line for binary.
func (o Options) args(binary string) []string {
	if o.Size == 0 {
		o.Size = 1
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	args := []string{
		"--workers", binary,
		"--listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0",
		"--log-format", "json",
		"--log-level", "debug",
		"--start-timeout", o.StartTimeout.String(),
		"--shutdown-timeout", closeTimeout.String(),
	}
	if mode := flagValue(o.Flags, "mode"); mode == "" || mode == "pool" {
		args = append(args, "--pool-size", strconv.Itoa(o.Size))
	}
	if o.Concurrency != 0 {
		args = append(args, "--concurrency", strconv.Itoa(o.Concurrency))
	}
	if o.Pipeline != 0 {
		args = append(args, "--pipeline", strconv.Itoa(o.Pipeline))
	}
	if o.Timeout != 0 {
		args = append(args, "--timeout", o.Timeout.String())
	}
	for _, kv := range o.Env {
		args = append(args, "--env", kv)
	}
	args = append(args, o.Flags...)
	if len(o.Args) > 0 {
		args = append(append(args, "--"), o.Args...)
	}
	return args
}

// flagValue returns the last value flags give the flag name (as --name v,
// --name=v, or with one dash), or "".
func flagValue(flags []string, name string) string {
	v := ""
	for i, f := range flags {
		f = strings.TrimPrefix(strings.TrimPrefix(f, "-"), "-")
		switch {
		case f == name && i+1 < len(flags):
			v = flags[i+1]
		case strings.HasPrefix(f, name+"="):
			v = strings.TrimPrefix(f, name+"=")
		}
	}
	return v
}

// Server is a dispatcher serving a worker binary on a loopback port.
type Server struct {
	// URL is the base URL, "http://127.0.0.1:port", without a trailing
	// slash.
	URL string

	admin  string // the admin listener's base URL
	cmd    *exec.Cmd
	exited chan struct{} // closed once the dispatcher is reaped
	read   chan struct{} // closed once its stderr is read to the end
	logs   *capture

	closeOnce sync.Once
	closeErr  error
}

// Start starts binary (see Build) under a dispatcher configured by opts (at
// most one Options) and returns it once every worker has completed its
// handshake. The dispatcher is closed when the test ends, after which its
// log is printed if the test failed. A worker that does not start fails the
// test with the dispatcher's reason.
func Start(tb testing.TB, binary string, opts ...Options) *Server {
	tb.Helper()
	if len(opts) > 1 {
		tb.Fatalf("sdktest.Start: %d Options given, want at most one", len(opts))
	}
	var o Options
	if len(opts) == 1 {
		o = opts[0]
	}
	s, err := NewServer(binary, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("sdktest: closing the dispatcher: %v", err)
		}
		if tb.Failed() {
			tb.Logf("dispatcher log:\n%s", s.logs.String())
		}
	})
	return s
}

// NewServer is Start for code without a testing.TB (a TestMain, an
// example): it returns the Server or why it could not start, and the caller
// must Close it.
func NewServer(binary string, opts Options) (*Server, error) {
	disp, err := Dispatcher()
	if err != nil {
		return nil, err
	}
	if binary, err = filepath.Abs(binary); err != nil {
		return nil, fmt.Errorf("sdktest: %w", err)
	}
	cmd := exec.Command(disp, opts.args(binary)...)
	cmd.Dir = opts.Dir
	cmd.SysProcAttr = sysProcAttr()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("sdktest: %w", err)
	}
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("sdktest: start the dispatcher: %w", err)
	}
	w.Close()
	s := &Server{cmd: cmd, exited: make(chan struct{}), read: make(chan struct{}), logs: newCapture()}
	go func() {
		defer close(s.read)
		defer r.Close()
		s.follow(r, opts.LogOutput)
	}()
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()

	limit := opts.StartTimeout
	if limit == 0 {
		limit = DefaultStartTimeout
	}
	listening, ok := s.logs.wait(limit+exitWait, s.read, func(e Entry) bool { return e.Message == "dispatcher listening" })
	if !ok {
		s.kill()
		return nil, fmt.Errorf("sdktest: the dispatcher did not start: %s", s.failure())
	}
	addr, _ := listening.Fields["addr"].(string)
	admin, _ := listening.Fields["admin"].(string)
	if addr == "" || admin == "" {
		s.kill()
		return nil, fmt.Errorf("sdktest: the dispatcher's listening entry lacks its addresses: %v", listening)
	}
	s.URL, s.admin = "http://"+addr, "http://"+admin
	return s, nil
}

// follow turns the dispatcher's stderr into log entries: its JSON lines,
// and any other line (its last words on a failure) as an error.
func (s *Server) follow(r io.Reader, out io.Writer) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line = strings.TrimSuffix(line, "\n"); line != "" {
			e := parseEntry(line)
			if out != nil {
				fmt.Fprintln(out, e.String())
			}
			s.logs.add(e)
		}
		if err != nil {
			return
		}
	}
}

// parseEntry decodes one line of the dispatcher's JSON log.
func parseEntry(line string) Entry {
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil || m == nil {
		return Entry{Time: time.Now(), Level: logrus.ErrorLevel, Message: line, Fields: logrus.Fields{}}
	}
	e := Entry{Fields: logrus.Fields{}}
	for k, v := range m {
		switch k {
		case logrus.FieldKeyMsg:
			e.Message, _ = v.(string)
		case logrus.FieldKeyLevel:
			s, _ := v.(string)
			e.Level, _ = logrus.ParseLevel(s)
		case logrus.FieldKeyTime:
			s, _ := v.(string)
			e.Time, _ = time.Parse(time.RFC3339Nano, s)
		default:
			e.Fields[k] = v
		}
	}
	return e
}

// failure says why the dispatcher stopped or did not become ready: its
// exit status and its last words, or its last error entries.
func (s *Server) failure() string {
	var last []string
	for _, e := range s.logs.entries() {
		if e.Level <= logrus.ErrorLevel {
			msg := e.Message
			if err, ok := e.Fields[logrus.ErrorKey]; ok {
				msg += ": " + fmt.Sprint(err)
			}
			last = append(last, msg)
		}
	}
	if len(last) > 3 {
		last = last[len(last)-3:]
	}
	status := "it is still running"
	if st := s.cmd.ProcessState; st != nil {
		status = st.String()
	}
	if len(last) == 0 {
		return status + "; its log:\n" + s.logs.String()
	}
	return strings.Join(last, "; ") + " (" + status + ")"
}

// kill ends a dispatcher that did not start, and waits for it.
func (s *Server) kill() {
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.awaitStderr()
}

// awaitStderr waits, briefly, for the last of the dispatcher's stderr: a
// process it left behind might hold the pipe open.
func (s *Server) awaitStderr() {
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-s.read:
	case <-t.C:
	}
}

// Close stops the dispatcher as SIGTERM does in production: it stops
// accepting requests, lets those in flight finish (cutting them after
// 10 s), stops the workers and exits. Later calls return the first call's
// result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(closeTimeout + exitWait)
		defer t.Stop()
		select {
		case <-s.exited:
		case <-t.C:
			_ = s.cmd.Process.Kill()
			<-s.exited
			s.closeErr = fmt.Errorf("the dispatcher did not exit within %s of SIGTERM; killed it", closeTimeout+exitWait)
		}
		s.awaitStderr()
		if st := s.cmd.ProcessState; s.closeErr == nil && !st.Success() {
			s.closeErr = fmt.Errorf("the dispatcher %s: %s", st, s.failure())
		}
		// Connections the default client keeps to this server are useless
		// now, as httptest.Server.Close does.
		if t, ok := http.DefaultTransport.(interface{ CloseIdleConnections() }); ok {
			t.CloseIdleConnections()
		}
	})
	return s.closeErr
}

// Workers returns the process ids of the live workers, from the
// dispatcher's status page. After a crash, the replacement shows up here
// once it has completed its handshake.
func (s *Server) Workers() []int {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(s.admin + "/status?format=json")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st struct {
		Functions []struct {
			Workers []struct {
				PID   int    `json:"pid"`
				State string `json:"state"`
			} `json:"workers"`
		} `json:"functions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil
	}
	var pids []int
	for _, f := range st.Functions {
		for _, w := range f.Workers {
			if w.State != "dead" {
				pids = append(pids, w.PID)
			}
		}
	}
	return pids
}

// Entry is one entry of the dispatcher's log: its own events, one access
// log entry per request (message "request", fields such as method, path,
// status, bytes, duration_ms, pid, req_id), and each line the workers
// write.
//
// A line a worker logs through sdk.Logger keeps its level and message; its
// request ID is in field "req_id" and its other fields are prefixed with
// "child.". Other worker output lines arrive at info level (error level for
// a Go panic). Worker lines also have fields "worker" (the binary's base
// name), "pid" and "stream" ("stderr" or "stdout").
//
// Field values are as encoding/json decodes them from the dispatcher's JSON
// log: strings, float64 numbers (200, not int 200), bools.
type Entry struct {
	Time    time.Time
	Level   logrus.Level
	Message string
	Fields  logrus.Fields
}

// String formats e as one text line: time, level, message and fields.
func (e Entry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-5.5s %s", e.Time.Format("15:04:05.000"), strings.ToUpper(e.Level.String()), e.Message)
	for _, k := range sortedKeys(e.Fields) {
		fmt.Fprintf(&b, " %s=%v", k, e.Fields[k])
	}
	return b.String()
}

// Log returns the entries logged so far, oldest first.
func (s *Server) Log() []Entry { return s.logs.entries() }

// WaitLog returns the first entry, logged before or after the call, for
// which match returns true. Worker output reaches the log asynchronously,
// possibly after the response that caused it: WaitLog waits for it, up to
// LogWait, then fails the test.
func (s *Server) WaitLog(tb testing.TB, match func(Entry) bool) Entry {
	tb.Helper()
	e, ok := s.logs.wait(LogWait, s.read, match)
	if !ok {
		tb.Fatalf("sdktest: no matching log entry within %s; log:\n%s", LogWait, s.logs.String())
	}
	return e
}

// errNoDispatcher says how to get a dispatcher when none can be built.
var errNoDispatcher = errors.New("set SDKTEST_DISPATCHER to the path of a dispatcher binary")
