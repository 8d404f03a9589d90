package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Config describes a worker process to start.
type Config struct {
	// Cmd is the process to start: Path, Args, Env, Dir and SysProcAttr are
	// used as given, except that Setpgid is forced on (the child leads its
	// own process group, which Kill signals as a whole) and Pdeathsig
	// defaults to SIGKILL. Stdin, Stdout, Stderr and ExtraFiles must be unset.
	// The environment is exactly Cmd.Env plus the handshake variables: the
	// dispatcher's own environment is never inherited.
	Cmd *exec.Cmd
	// Slots is the number of slot connections (concurrent exchanges). If
	// zero, 1.
	Slots int
	// MaxFrame bounds frames read from the worker. If zero, DefaultMaxFrame.
	MaxFrame int
	// Depth is the pipelining depth announced to the worker: how many
	// exchanges the dispatcher may have outstanding on one slot. If zero, 1.
	Depth int
	// StartTimeout bounds start, handshake and the first ping of every slot.
	// If zero, 10s.
	StartTimeout time.Duration
	// SocketDir is the directory in which go-plugin's control socket
	// directory is created (and removed on exit). If empty, os.TempDir().
	SocketDir string
	// Control makes Start open go-plugin's control connection to the worker
	// (yamux and net/rpc on its unix socket), check it with Control.Ping and
	// keep it, so that Stop asks the worker to quit with Control.Quit. The
	// conformance checker uses it to test a worker's side of that
	// connection. Without it (the dispatcher's way), go-plugin completes the
	// handshake, the control socket is removed without ever being
	// connected, and Stop closes the slots, on which a worker exits
	// (PROTOCOL.md section 9). That saves a worker start the connection's
	// setup and six goroutines, on each side, for as long as it lives.
	Control bool
	// Logger receives the worker's output lines and go-plugin's messages
	// (at debug level). If nil, logrus's standard logger.
	Logger *logrus.Entry
	// Name is the worker binary as logs and errors name it. If empty,
	// Cmd.Path (set it when Cmd starts a wrapper such as a sandbox shim).
	Name string
	// StartProcess, if set, starts Cmd once Start has completed it (its
	// descriptors, environment and process attributes), instead of
	// Cmd.Start: the place for a confinement that must make the process
	// itself.
	StartProcess func(*exec.Cmd) error
	// OnExit, if set, is called once the process has exited and been
	// reaped, or failed to start, before Exited is closed: the place to
	// kill and remove what it leaves behind (its sandbox cell).
	OnExit func()
	// LogLines and LogBytes bound the worker's output (stdout and stderr
	// together) that reaches the log, per second: a line past either is
	// dropped unread, and what was dropped is logged in one warning per
	// second while it lasts. If zero, DefaultLogLines and DefaultLogBytes;
	// if negative, no bound.
	LogLines, LogBytes int
	// LogDropped, if set, is told what was dropped, with each warning.
	LogDropped func(lines, bytes int)
	// Requests, if set, returns the IDs of the requests the worker is
	// serving (or the one it is blamed for), which the log entry of a
	// stack trace on its stderr names. It is called from the goroutine
	// reading stderr, at the trace's first line.
	Requests func() []string
}

// ErrStartTimeout is the Err of a StartError for a worker that did not
// complete the handshake (and answer its pings) within Config.StartTimeout.
var ErrStartTimeout = errors.New("no handshake")

// ErrHandshakeAddress is the Err (wrapped) of a StartError for a worker
// whose handshake names anything but a unix socket in the directory the
// dispatcher made for it: that address is never removed or dialled.
var ErrHandshakeAddress = errors.New("handshake refused: its address is not a unix socket in the worker's own socket directory")

// StartError reports a worker that could not be started or did not complete
// the handshake.
type StartError struct {
	Path   string           // the binary
	Err    error            // what went wrong
	Stderr []string         // the last lines it wrote on stderr, if any
	State  *os.ProcessState // how it ended, if it ran at all
}

func (e *StartError) Error() string {
	// go-plugin's messages span lines ("Unrecognized remote plugin
	// message: \nFailed to read any lines..."): one line per log entry.
	msg := fmt.Sprintf("start worker %q: %v", e.Path, strings.Join(strings.Fields(e.Err.Error()), " "))
	var exec *exec.Error
	switch {
	case errors.As(e.Err, &exec), errors.Is(e.Err, os.ErrNotExist), errors.Is(e.Err, os.ErrPermission):
	case e.State != nil && e.State.Exited() && len(e.Stderr) > 0:
		// What it wrote says why (a sandbox that could not execute it, a
		// worker refusing its configuration).
		msg += fmt.Sprintf(" (it exited with status %d before completing the handshake)", e.State.ExitCode())
	case e.State != nil && e.State.Exited():
		msg += fmt.Sprintf(" (it exited with status %d before completing the handshake: is it a worker built with the sdk?)", e.State.ExitCode())
	default:
		msg += " (is it a worker built with the sdk?)"
	}
	if len(e.Stderr) > 0 {
		msg += " (stderr: " + strings.Join(e.Stderr, " | ") + ")"
	}
	return msg
}

func (e *StartError) Unwrap() error { return e.Err }

// Child is a running worker process with its slot connections.
type Child struct {
	path    string
	client  *plugin.Client
	control bool // Config.Control
	run     *procRunner
	conns   []*ipc.Conn
	stderr  *workerLog

	cleaned chan struct{} // closed by cleanup
}

// Start starts a worker, completes the go-plugin handshake and checks that
// every slot answers a ping. On failure nothing is left running.
func Start(cfg Config) (*Child, error) {
	if cfg.Cmd == nil || cfg.Cmd.Path == "" {
		return nil, errors.New("launch: Start without a command")
	}
	if cfg.Cmd.Stdin != nil || cfg.Cmd.Stdout != nil || cfg.Cmd.Stderr != nil || cfg.Cmd.ExtraFiles != nil {
		return nil, errors.New("launch: Start: the command's stdio and ExtraFiles must be unset")
	}
	if cfg.Slots <= 0 {
		cfg.Slots = 1
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = ipc.DefaultMaxFrame
	}
	if cfg.Depth <= 0 {
		cfg.Depth = 1
	}
	if cfg.Depth > ipc.MaxDepth {
		return nil, fmt.Errorf("launch: Start: depth %d above %d", cfg.Depth, ipc.MaxDepth)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = logrus.NewEntry(logrus.StandardLogger())
	}
	deadline := time.Now().Add(cfg.StartTimeout)
	cmd := cfg.Cmd
	path := cmd.Path
	if cfg.Name != "" {
		path = cfg.Name
	}

	hostConns, childFiles, err := socketpairs(cfg.Slots)
	if err != nil {
		return nil, &StartError{Path: path, Err: err}
	}
	closeChildFiles := func() {
		for _, f := range childFiles {
			f.Close()
		}
		childFiles = nil
	}
	defer closeChildFiles()

	fds := make([]string, cfg.Slots)
	for i := range fds {
		fds[i] = strconv.Itoa(3 + i)
	}
	cmd.ExtraFiles = childFiles
	cmd.Env = append(cmd.Env, ipc.EnvFDs+"="+strings.Join(fds, ","), ipc.EnvMaxFrame+"="+strconv.Itoa(cfg.MaxFrame),
		ipc.EnvFeatures+"="+strings.Join(ipc.Announced(cfg.MaxFrame), ","))
	if cfg.Depth > 1 {
		cmd.Env = append(cmd.Env, ipc.EnvDepth+"="+strconv.Itoa(cfg.Depth))
	}
	if !cfg.Control {
		cmd.Env = append(cmd.Env, ipc.EnvControl+"="+ipc.ControlNone)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pgid = 0
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}

	log := cfg.Logger.WithField("worker", filepath.Base(path))
	stderr := &workerLog{e: log, stream: "stderr", requests: cfg.Requests}
	stdout := &workerLog{e: log, stream: "stdout", requests: cfg.Requests}
	syncOut := &workerLog{e: log, stream: "stdout"}
	syncErr := &workerLog{e: log, stream: "stderr"}
	limit := newOutputLimit(cfg.LogLines, cfg.LogBytes, func(lines, bytes int) {
		stderr.e.WithFields(logrus.Fields{"dropped_lines": lines, "dropped_bytes": bytes}).Warn("worker output over its limit: lines dropped")
		if cfg.LogDropped != nil {
			cfg.LogDropped(lines, bytes)
		}
	})
	pr := &procRunner{cmd: cmd, name: path, control: cfg.Control, sockFD: -1, start: cfg.StartProcess, onExit: cfg.OnExit, started: make(chan struct{}), waitDone: make(chan struct{}), onStart: func(pid int) {
		l := log.WithField("pid", pid)
		stderr.e, stdout.e, syncOut.e, syncErr.e = l, l, l, l
		closeChildFiles()
	}}
	stderrSink := stderr.limitedSink(limit)
	stdoutSink := stdout.limitedSink(limit)
	pr.stderrDone = make(chan struct{})
	pr.stdoutSink, pr.stderrSink, pr.limit = stdoutSink, stderrSink, limit
	pr.stdoutEOF = func() { stdoutSink.Flush(); stdout.finish() }
	pr.stderrEOF = func() { stderrSink.Flush(); stderr.finish() }

	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          pluginSet(),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolNetRPC},
		RunnerFunc: func(_ hclog.Logger, spec *exec.Cmd, sockDir string) (runner.Runner, error) {
			cmd.Env = append(cmd.Env, spec.Env...)
			pr.sockDir = filepath.Clean(sockDir)
			return pr, nil
		},
		SkipHostEnv: true,
		// go-plugin's reader of the worker's standard error, which only
		// ever reads its end (outputPump): the smallest.
		PluginLogBufferSize: 16,
		StartTimeout:        cfg.StartTimeout,
		Logger:              newHclog(log),
		Stderr:              stderrSink,
		SyncStdout:          syncOut.sink(),
		SyncStderr:          syncErr.sink(),
		UnixSocketConfig:    &plugin.UnixSocketConfig{TempDir: cfg.SocketDir},
	})
	c := &Child{path: path, client: client, control: cfg.Control, run: pr, stderr: stderr, cleaned: make(chan struct{})}
	for _, hc := range hostConns {
		c.conns = append(c.conns, ipc.NewConn(hc, cfg.MaxFrame))
	}
	fail := func(err error) (*Child, error) {
		if !time.Now().Before(deadline) {
			err = fmt.Errorf("%w within %s", ErrStartTimeout, cfg.StartTimeout) // not go-plugin's wording
		}
		c.Kill()
		c.CloseConns()
		if !pr.began() {
			pr.exited() // never started: nothing to wait for
		}
		t := time.NewTimer(KillWait)
		select {
		case <-pr.waitDone:
		case <-t.C:
		}
		t.Stop()
		c.waitStderr(200 * time.Millisecond)
		go c.cleanup()
		return nil, &StartError{Path: path, Err: err, Stderr: stderr.Tail(time.Time{}), State: c.ExitState()}
	}
	if cfg.Control {
		rpc, err := client.Client()
		if err != nil {
			return fail(err)
		}
		if err := rpc.Ping(); err != nil {
			return fail(fmt.Errorf("control connection: %w", err))
		}
	} else if _, err := client.Start(); err != nil {
		return fail(err)
	}
	// Unlink the control socket so that no other process (such as another
	// worker) can ever connect to this worker's control server. (A worker
	// told that no connection comes may not have made it.) Only the name
	// PluginToHost checked, in the worker's own directory, whatever it is
	// now.
	pr.unlinkSocket()
	for i, conn := range c.conns {
		conn.SetDeadline(deadline)
		if err := conn.Ping(); err != nil {
			return fail(fmt.Errorf("slot %d did not answer a ping: %w", i, err))
		}
		conn.SetDeadline(time.Time{})
	}
	go c.cleanup()
	return c, nil
}

func socketpairs(n int) ([]net.Conn, []*os.File, error) {
	var hosts []net.Conn
	var childs []*os.File
	for i := range n {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeHostConns(hosts)
			for _, f := range childs {
				f.Close()
			}
			return nil, nil, fmt.Errorf("socketpair: %w", err)
		}
		hf := os.NewFile(uintptr(fds[0]), "slot-host-"+strconv.Itoa(i))
		hc, err := net.FileConn(hf)
		hf.Close()
		if err != nil {
			unix.Close(fds[1])
			closeHostConns(hosts)
			for _, f := range childs {
				f.Close()
			}
			return nil, nil, fmt.Errorf("slot connection: %w", err)
		}
		hosts = append(hosts, hc)
		childs = append(childs, os.NewFile(uintptr(fds[1]), "slot-child-"+strconv.Itoa(i)))
	}
	return hosts, childs, nil
}

func closeHostConns(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// PID returns the worker's process id.
func (c *Child) PID() int { return c.run.pid }

// Path returns the worker binary.
func (c *Child) Path() string { return c.path }

// Conns returns the slot connections, one per concurrent exchange.
func (c *Child) Conns() []*ipc.Conn { return c.conns }

// Exited is closed once the process has exited and been reaped.
func (c *Child) Exited() <-chan struct{} { return c.run.waitDone }

// ExitState returns how the process ended; nil before Exited is closed.
func (c *Child) ExitState() *os.ProcessState {
	select {
	case <-c.run.waitDone:
		return c.run.cmd.ProcessState
	default:
		return nil
	}
}

// StderrTail returns the worker's last stderr lines read at or after since
// (all it kept if since is zero), waiting up to d for its stderr to reach
// end of file so that a dying worker's last words are in. A stack trace
// counts as its first line: it is logged whole, as one entry.
func (c *Child) StderrTail(since time.Time, d time.Duration) []string {
	c.waitStderr(d)
	return c.stderr.Tail(since)
}

func (c *Child) waitStderr(d time.Duration) {
	if c.run.stderrDone == nil {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.run.stderrDone:
	case <-t.C:
	}
}

// Signal sends sig to the worker process and to its process group.
func (c *Child) Signal(sig syscall.Signal) error { return c.run.signal(sig) }

// Kill sends SIGKILL to the worker process (through its pidfd, so even one
// that left its process group) and to its process group, and returns
// without waiting: Exited is closed once it is reaped. The slot
// connections stay open for their owner to close (CloseConns), so that an
// exchange in flight sees the worker's death rather than a closed
// connection. Safe to call at any time, more than once, concurrently.
func (c *Child) Kill() { _ = c.run.signal(syscall.SIGKILL) }

// Stop asks the worker to exit and waits until it has, or until ctx is
// done; then it kills it and waits at most KillWait more for it to be
// reaped. It returns ctx.Err() if the worker had to be killed, and
// ErrUnreaped if it was not reaped even then. The worker is asked by
// closing its slots (after which it lets in-flight handlers finish and
// exits), or with Config.Control by go-plugin's graceful quit
// (Control.Quit).
func (c *Child) Stop(ctx context.Context) error {
	if c.control {
		go c.quit()
	} else {
		c.CloseConns()
	}
	select {
	case <-c.run.waitDone:
		return nil
	case <-ctx.Done():
	}
	c.Kill()
	t := time.NewTimer(KillWait)
	defer t.Stop()
	select {
	case <-c.run.waitDone:
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%w: %w", ErrUnreaped, ctx.Err())
	}
}

// KillWait bounds Stop's wait for a killed worker to be reaped.
const KillWait = 2 * time.Second

// ErrUnreaped reports a worker process that was still not reaped KillWait
// after SIGKILL (stuck in the kernel). Its Exited channel closes if it
// ever is.
var ErrUnreaped = errors.New("launch: the worker was not reaped after SIGKILL")

// quit asks a worker with a control connection to exit (Control.Quit),
// then kills it 2 s later if it has not.
func (c *Child) quit() {
	if rpc, err := c.client.Client(); err == nil {
		_ = rpc.Close()
	}
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-c.run.waitDone:
	case <-t.C:
		c.Kill()
	}
}

// CloseConns closes every slot connection.
func (c *Child) CloseConns() {
	for _, conn := range c.conns {
		conn.Close()
	}
}

// Cleaned is closed once everything of the worker is released, after
// Exited: its output pipes and go-plugin's goroutines and socket
// directory. That takes at most outputWait after the exit.
func (c *Child) Cleaned() <-chan struct{} { return c.cleaned }

// outputWait bounds the wait for a reaped worker's output pipes to reach end
// of file: a descendant that escaped the kill may hold them open.
const outputWait = 500 * time.Millisecond

// cleanup releases what go-plugin holds for the worker once it has exited.
func (c *Child) cleanup() {
	defer close(c.cleaned)
	<-c.run.waitDone
	if c.run.stderrDone != nil {
		t := time.NewTimer(outputWait)
		select {
		case <-c.run.stderrDone:
		case <-t.C:
		}
		t.Stop()
	}
	c.run.closeOutput()
	// The worker's socket directory goes first, all of it: go-plugin's
	// Kill dials the handshake's address for a graceful quit, which then
	// names nothing (or, with Config.Control, the socket pinned by
	// PluginToHost, of a worker now dead), and fails at once. go-plugin's
	// goroutines end with the pipes.
	c.run.removeSocketDir()
	c.client.Kill()
	c.run.closeSocketFD()
}

// procRunner implements go-plugin's runner.Runner: it starts the worker in
// its own process group and kills the whole group.
type procRunner struct {
	cmd     *exec.Cmd
	name    string
	pid     int
	start   func(*exec.Cmd) error // Config.StartProcess
	onStart func(pid int)
	onExit  func() // Config.OnExit
	control bool   // Config.Control

	// The worker's own socket directory, made by go-plugin, and what
	// PluginToHost found in it.
	sockMu   sync.Mutex
	sockDir  string // cleaned; "" until RunnerFunc
	sockName string // the handshake's socket name in sockDir, once checked
	sockFD   int    // with control: an O_PATH descriptor of that socket, or -1

	stdoutR    io.ReadCloser
	stdoutSink io.Writer
	stdoutEOF  func()
	stderrR    io.ReadCloser
	stderrSink io.Writer
	stderrEOF  func()
	stderrDone chan struct{}
	limit      *outputLimit

	started  chan struct{}
	waitDone chan struct{}
	waitErr  error
	exitOnce sync.Once
	outOnce  sync.Once
	outR     []io.Closer // the read ends of its output pipes
}

var _ runner.Runner = (*procRunner)(nil)

func (r *procRunner) Start(context.Context) error {
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return err
	}
	r.cmd.Stdout, r.cmd.Stderr = outW, errW
	if r.start != nil {
		err = r.start(r.cmd)
	} else {
		err = r.cmd.Start()
	}
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		r.waitErr = err
		r.exited()
		return err
	}
	r.pid = r.cmd.Process.Pid
	stdout, stderr := newOutputPump(outR, r.stdoutSink, r.limit), newOutputPump(errR, r.stderrSink, r.limit)
	stdout.handshake, stdout.eof = true, r.stdoutEOF
	stderr.eof, stderr.done = r.stderrEOF, r.stderrDone
	r.outR = []io.Closer{stdout, stderr}
	r.stdoutR, r.stderrR = stdout, stderr
	close(r.started)
	r.onStart(r.pid)
	go func() {
		r.waitErr = r.cmd.Wait()
		// Stragglers left in its process group die with it.
		_ = r.signalGroup(syscall.SIGKILL)
		r.exited()
	}()
	return nil
}

// began reports whether the process was started.
func (r *procRunner) began() bool {
	select {
	case <-r.started:
		return true
	default:
		return false
	}
}

// exited runs OnExit, then closes waitDone, once.
func (r *procRunner) exited() {
	r.exitOnce.Do(func() {
		if r.onExit != nil {
			r.onExit()
		}
		close(r.waitDone)
	})
}

// closeOutput closes the read ends of the worker's output pipes, ending
// go-plugin's readers of them whatever still holds the write ends.
func (r *procRunner) closeOutput() {
	r.outOnce.Do(func() {
		for _, c := range r.outR {
			c.Close()
		}
	})
}

func (r *procRunner) Diagnose(context.Context) string { return "" }
func (r *procRunner) Stdout() io.ReadCloser           { return r.stdoutR }
func (r *procRunner) Stderr() io.ReadCloser           { return r.stderrR }
func (r *procRunner) Name() string                    { return r.name }
func (r *procRunner) ID() string {
	if r.pid == 0 {
		return ""
	}
	return strconv.Itoa(r.pid)
}

func (r *procRunner) Wait(context.Context) error {
	<-r.waitDone
	return r.waitErr
}

func (r *procRunner) Kill(context.Context) error {
	return r.signal(syscall.SIGKILL)
}

// signal sends sig to the worker process, through its pidfd (so it reaches
// the process wherever it moved, and never another process that reused
// its pid), and to its process group.
func (r *procRunner) signal(sig syscall.Signal) error {
	if !r.began() {
		return nil
	}
	err := r.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		err = nil
	}
	return errors.Join(err, r.signalGroup(sig))
}

// signalGroup signals the worker's process group. The group outlives its
// leader while members remain, so this also reaches stragglers after the
// worker itself exited; a group that no longer exists is not an error.
func (r *procRunner) signalGroup(sig syscall.Signal) error {
	if !r.began() {
		return nil
	}
	err := unix.Kill(-r.pid, sig)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// PluginToHost is go-plugin's hook between reading the worker's handshake
// and using its address: it refuses any address but a name in the
// worker's own socket directory (see checkAddress).
func (r *procRunner) PluginToHost(network, addr string) (string, string, error) {
	a, err := r.checkAddress(network, addr)
	if err != nil {
		return "", "", err
	}
	return "unix", a, nil
}

func (r *procRunner) HostToPlugin(n, a string) (string, string, error) { return n, a, nil }

// maxAddress bounds the address quoted in an error: it is the worker's.
const maxAddress = 200

// checkAddress checks the handshake's address: a unix socket path made of
// the worker's socket directory, exactly as go-plugin made it, and one
// plain name, which is, within that directory (looked up without following
// symbolic links), a socket or, without Control, nothing at all (the
// worker was told no connection comes). It returns the address to dial:
// with Control, /proc/self/fd/N of a descriptor of the socket itself, so
// that what was checked is what is dialled even if the worker changes the
// name meanwhile; without, the path, which cleanup removes before go-plugin
// would dial it.
func (r *procRunner) checkAddress(network, addr string) (string, error) {
	r.sockMu.Lock()
	defer r.sockMu.Unlock()
	refuse := func(why string) (string, error) {
		a := truncate(addr, maxAddress)
		return "", fmt.Errorf("%w: %q %q: %s", ErrHandshakeAddress, truncate(network, 20), a, why)
	}
	dir := r.sockDir
	name := filepath.Base(addr)
	switch {
	case r.sockName != "" || r.sockFD >= 0:
		return refuse("a second address")
	case network != "unix":
		return refuse("not a unix socket")
	case dir == "" || dir == ".":
		return refuse("no socket directory was made for the worker")
	case strings.ContainsRune(addr, 0) || addr != filepath.Join(dir, name) || name == "." || name == ".." || name == "/":
		return refuse("not a name in " + dir)
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return refuse(fmt.Sprintf("the socket directory: %v", err))
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) && !r.control {
		r.sockName = name
		return addr, nil
	}
	if err != nil {
		return refuse(err.Error())
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		unix.Close(fd)
		return refuse("not a socket")
	}
	r.sockName = name
	if !r.control {
		unix.Close(fd)
		return addr, nil
	}
	r.sockFD = fd
	return "/proc/self/fd/" + strconv.Itoa(fd), nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// unlinkSocket removes the name PluginToHost checked from the worker's
// socket directory (never following a symbolic link), if it is there.
func (r *procRunner) unlinkSocket() {
	r.sockMu.Lock()
	defer r.sockMu.Unlock()
	if r.sockName == "" {
		return
	}
	dfd, err := unix.Open(r.sockDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	_ = unix.Unlinkat(dfd, r.sockName, 0)
	unix.Close(dfd)
}

// removeSocketDir removes the worker's socket directory and whatever it
// put there (os.RemoveAll follows no symbolic link). go-plugin removes it
// too, but only for a process that started.
func (r *procRunner) removeSocketDir() {
	r.sockMu.Lock()
	dir := r.sockDir
	r.sockMu.Unlock()
	if dir != "" && dir != "." {
		_ = os.RemoveAll(dir)
	}
}

// closeSocketFD closes the descriptor PluginToHost pinned, once go-plugin
// is done with the address naming it.
func (r *procRunner) closeSocketFD() {
	r.sockMu.Lock()
	defer r.sockMu.Unlock()
	if r.sockFD >= 0 {
		unix.Close(r.sockFD)
		r.sockFD = -1
	}
}

// RawConns returns the dispatcher's ends of the child's slot connections as
// plain stream connections, in slot order (see ipc.Conn.NetConn). Start
// has already exchanged one ping (id 1) on each. Whoever uses them must not
// use Conns.
func (c *Child) RawConns() []net.Conn {
	raw := make([]net.Conn, len(c.conns))
	for i, conn := range c.conns {
		raw[i] = conn.NetConn()
	}
	return raw
}
