package sandbox_test

// Hostile handlers (testdata/workers/hostile) against real sandboxes: each
// test runs a pool of real workers through go-plugin and the sdk, lets the
// handler attack, and checks that the attack failed, that the pool serves a
// healthy request right after, and that nothing is left behind: no process,
// cgroup or socket.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/workers"
	"github.com/childproc/dispatcher/workers/sandbox"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// newSandbox makes a sandbox for the hostile worker, skipping the test when
// the machine cannot honour opts (failing instead under CI, which runs as
// root on a machine that can).
func newSandbox(t *testing.T, path string, opts sandbox.Options) *sandbox.Sandbox {
	t.Helper()
	sb, err := sandbox.New(path, opts)
	var ue *sandbox.UnsupportedError
	if errors.As(err, &ue) {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run this test, but the machine lacks what it needs: %v", err)
		}
		t.Skipf("this machine lacks what the test needs: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test as root")
		}
		t.Skip("needs root (switching users, namespaces)")
	}
}

type env struct {
	t      *testing.T
	pool   *workers.Pool
	sb     *sandbox.Sandbox
	hook   *test.Hook
	token  string // unique to the test: in the command line of what the worker starts
	sock   string // the pool's socket directory's parent
	worker string // the binary
}

// start runs a pool of the hostile worker in a sandbox with opts. Cleanup
// closes both and checks that no process, cgroup or socket is left.
func start(t *testing.T, opts sandbox.Options, cfg workers.Config) *env {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = bins["hostile"]
	}
	sb := newSandbox(t, cfg.Path, opts)
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	if cfg.Size == 0 {
		cfg.Size = 1
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 20 * time.Second
	}
	sock, err := os.MkdirTemp("", "sbt")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o711); err != nil { // for workers run as another user
		t.Fatal(err)
	}
	cfg.SocketDir = sock
	cfg.Logger = logrus.NewEntry(logger)
	cfg.Sandbox = sb
	e := &env{t: t, sb: sb, hook: hook, token: strconv.FormatUint(rand.Uint64()%1e12, 10), sock: sock, worker: cfg.Path}
	p, err := workers.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		sb.Close()
		os.RemoveAll(sock)
		t.Fatal(err)
	}
	e.pool = p
	t.Cleanup(func() {
		if t.Failed() {
			// Escapees the sandbox failed to kill could hold a worker's
			// stderr and wedge go-plugin's stop: end them, and the test.
			for _, pid := range e.spawned() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		pids := p.Workers()
		if err := p.Close(context.Background()); err != nil {
			t.Errorf("pool Close: %v", err)
		}
		if err := sb.Close(); err != nil {
			t.Errorf("sandbox Close: %v", err)
		}
		for _, pid := range pids {
			waitGone(t, pid)
		}
		if left := e.spawned(); len(left) > 0 {
			t.Errorf("processes the worker started outlived it: %v", left)
		}
		for _, d := range sb.Dirs() {
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Errorf("cgroup %s left behind (%v)", d, err)
			}
		}
		if left, _ := filepath.Glob(filepath.Join(sock, "*", "*")); len(left) > 0 {
			t.Errorf("socket directories left behind: %v", left)
		}
		os.RemoveAll(sock)
	})
	return e
}

// get sends a GET through the pool and returns the status and body.
func (e *env) get(path string) (int, string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := &ipc.Request{Method: "GET", URI: path, Proto: "HTTP/1.1", Host: "test", EOF: true}
	resp, err := e.pool.RoundTrip(ctx, req, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Close()
	var body bytes.Buffer
	for {
		b, err := resp.Next()
		if err == io.EOF {
			return resp.Status, body.String(), nil
		}
		if err != nil {
			return resp.Status, body.String(), err
		}
		body.Write(b)
	}
}

// must is get for requests that must succeed.
func (e *env) must(path string) string {
	e.t.Helper()
	status, body, err := e.get(path)
	if err != nil || status != 200 {
		e.t.Fatalf("GET %s: %d %v\n%s", path, status, err, body)
	}
	return body
}

// healthy checks that the pool serves a request.
func (e *env) healthy() {
	e.t.Helper()
	if body := e.must("/whoami"); !strings.Contains(body, "pid=") {
		e.t.Fatalf("GET /whoami after the attack: %q", body)
	}
}

// whoami returns the worker's report as a map (env lines under "env KEY").
func (e *env) whoami() map[string]string {
	e.t.Helper()
	m := map[string]string{}
	for line := range strings.SplitSeq(e.must("/whoami"), "\n") {
		if kv, ok := strings.CutPrefix(line, "env "); ok {
			k, v, _ := strings.Cut(kv, "=")
			m["env "+k] = v
		} else if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// spawned lists the live processes whose command line carries the token.
func (e *env) spawned() []int {
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte(e.token)) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		if alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (e *env) logged(s string) *logrus.Entry {
	for _, entry := range e.hook.AllEntries() {
		if strings.Contains(entry.Message, s) || strings.Contains(fmt.Sprint(entry.Data), s) {
			return entry
		}
	}
	return nil
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// waitFor polls cond with a bounded backoff (waiting on the kernel or the
// pool's supervisor) and fails the test if it never holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for d := time.Millisecond; !cond(); d = min(2*d, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(d)
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("process %d to be gone", pid), func() bool { return !alive(pid) })
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func pgid(pid int) int {
	g, err := syscall.Getpgid(pid)
	if err != nil {
		return -1
	}
	return g
}

func TestDefaultConfinement(t *testing.T) {
	t.Setenv("DISPATCHER_TEST_SECRET", "hunter2")
	e := start(t, sandbox.Options{}, workers.Config{})
	w := e.whoami()
	if w["nonewprivs"] != "1" {
		t.Errorf("no_new_privs = %q, want 1", w["nonewprivs"])
	}
	if !strings.Contains(w["cgroup"], "/dispatcher-") {
		t.Errorf("worker is not in a cell cgroup: %s", w["cgroup"])
	}
	if _, ok := w["env DISPATCHER_TEST_SECRET"]; ok {
		t.Error("the dispatcher's environment reached the worker")
	}
	if body := e.must("/snoop?name=DISPATCHER_TEST_SECRET"); strings.Contains(body, "own environment") {
		t.Errorf("secret in the worker's own environment:\n%s", body)
	}
	// The default confinement needs no shim where the kernel can create
	// the worker in its cell (clone3, Linux 5.7): that is what makes
	// spawns cheap.
	v2Cell := slices.ContainsFunc(e.sb.Notes(), func(n string) bool {
		return strings.HasPrefix(n, "cell cgroups in cgroup v2 ") && !strings.Contains(n, " and ")
	})
	if v2Cell {
		if !slices.Contains(e.sb.Notes(), "started directly into the cell") {
			t.Errorf("a cgroup v2 cell, yet workers start through the shim: %q", e.sb.Notes())
		}
	}
}

// Options the direct start cannot give go through the shim; the worker is
// confined all the same.
func TestShimStart(t *testing.T) {
	e := start(t, sandbox.Options{NoFile: 512}, workers.Config{})
	if slices.Contains(e.sb.Notes(), "started directly into the cell") {
		t.Errorf("NoFile needs the shim, yet: %q", e.sb.Notes())
	}
	w := e.whoami()
	if w["nonewprivs"] != "1" {
		t.Errorf("no_new_privs = %q, want 1", w["nonewprivs"])
	}
	if len(e.sb.Dirs()) > 0 && !strings.Contains(w["cgroup"], "/dispatcher-") {
		t.Errorf("worker is not in a cell cgroup: %s", w["cgroup"])
	}
}

// Processes a worker detaches with setsid or a double fork leave its process
// group: they die with the worker all the same, whether it crashes or is
// stopped, and a stop is not held up by them keeping its stderr open.
func TestEscapeesDie(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts sandbox.Options
	}{
		{"default", sandbox.Options{}},
		{"namespaces", sandbox.Options{Namespaces: true}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			if mode.opts.Namespaces {
				requireRoot(t)
			}
			t.Run("crash", func(t *testing.T) {
				e := start(t, mode.opts, workers.Config{})
				esc := escape(t, e)
				_, _, err := e.get("/exit")
				var exit *workers.ExitError
				if !errors.As(err, &exit) {
					t.Fatalf("GET /exit: %v, want an *ExitError", err)
				}
				for _, pid := range esc {
					waitGone(t, pid)
				}
				e.healthy()
			})
			t.Run("close", func(t *testing.T) {
				e := start(t, mode.opts, workers.Config{})
				esc := escape(t, e)
				t0 := time.Now()
				if err := e.pool.Close(context.Background()); err != nil {
					t.Errorf("Close: %v", err)
				}
				if d := time.Since(t0); d > 10*time.Second {
					t.Errorf("Close took %s: an escapee held it up", d)
				}
				for _, pid := range esc {
					waitGone(t, pid)
				}
			})
		})
	}
}

// escape has the worker leave two escapees and returns their pids.
func escape(t *testing.T, e *env) []int {
	t.Helper()
	body := e.must("/escape?token=" + e.token)
	if !strings.Contains(body, "escape: 2 escapees running") {
		t.Fatalf("GET /escape: %s", body)
	}
	var esc []int
	waitFor(t, "two escapees", func() bool { esc = e.spawned(); return len(esc) == 2 })
	workers := e.pool.Workers()
	for _, pid := range esc {
		for _, w := range workers {
			if pgid(pid) == w {
				t.Fatalf("escapee %d is in worker %d's process group: the test proves nothing", pid, w)
			}
		}
	}
	return esc
}

func TestMemoryLimit(t *testing.T) {
	e := start(t, sandbox.Options{MemoryLimit: 64 << 20}, workers.Config{})
	_, body, err := e.get("/alloc?mb=512")
	var exit *workers.ExitError
	if !errors.As(err, &exit) || !errors.Is(err, workers.ErrOutOfMemory) {
		t.Fatalf("GET /alloc?mb=512: %v (body %q), want an *ExitError wrapping ErrOutOfMemory", err, body)
	}
	if !strings.Contains(err.Error(), "out of memory") {
		t.Errorf("error %q does not say out of memory", err)
	}
	waitFor(t, `the pool's "out of memory" log line`, func() bool { return e.logged("out of memory") != nil })
	e.healthy()
	if body := e.must("/alloc?mb=16"); !strings.Contains(body, "survived 16 MiB") {
		t.Errorf("GET /alloc?mb=16: %q", body)
	}
}

func TestPidsLimit(t *testing.T) {
	const limit = 48
	e := start(t, sandbox.Options{PidsLimit: limit}, workers.Config{})
	status, body, err := e.get("/forkbomb?token=" + e.token)
	var exit *workers.ExitError
	switch {
	case errors.As(err, &exit):
		// The bomb took the worker's own runtime down (it could not start a
		// thread): contained all the same.
	case err != nil || status != 200:
		t.Fatalf("GET /forkbomb: %d %v %s", status, err, body)
	default:
		var started int
		if _, err := fmt.Sscanf(body, "forkbomb: started %d:", &started); err != nil {
			t.Fatalf("GET /forkbomb: %q", body)
		}
		if started >= limit || !strings.Contains(body, "resource temporarily unavailable") {
			t.Errorf("the bomb started %d processes under a limit of %d tasks: %s", started, limit, body)
		}
	}
	waitFor(t, "the pool to serve again", func() bool {
		status, _, err := e.get("/whoami")
		return err == nil && status == 200
	})
}

func TestCPULimit(t *testing.T) {
	e := start(t, sandbox.Options{CPULimit: 0.2}, workers.Config{})
	body := e.must("/spin?ms=1500&threads=2")
	var cpu, wall int
	if _, err := fmt.Sscanf(body, "spin: cpu_ms=%d wall_ms=%d", &cpu, &wall); err != nil {
		t.Fatalf("GET /spin: %q", body)
	}
	// 0.2 CPU over the wall time, plus a scheduling period of slack.
	if max := wall/5 + 150; cpu > max {
		t.Errorf("two spinning threads got %d ms of CPU in %d ms under a 0.2 CPU limit (at most %d)", cpu, wall, max)
	}
	e.healthy()
}

func TestNoFile(t *testing.T) {
	const limit = 64
	e := start(t, sandbox.Options{NoFile: limit}, workers.Config{})
	if got := e.whoami()["nofile"]; got != strconv.Itoa(limit) {
		t.Errorf("worker's open files limit %s, want %d", got, limit)
	}
	body := e.must("/fds")
	var opened int
	if _, err := fmt.Sscanf(body, "fds: opened %d:", &opened); err != nil || opened >= limit || !strings.Contains(body, "too many open files") {
		t.Errorf("GET /fds under a limit of %d: %q", limit, body)
	}
	e.healthy()
}

func TestUser(t *testing.T) {
	requireRoot(t)
	t.Setenv("DISPATCHER_TEST_SECRET", "hunter2")
	e := start(t, sandbox.Options{User: "65534:65534"}, workers.Config{Size: 2})
	w := e.whoami()
	if w["uid"] != "65534" || w["gid"] != "65534" || w["groups"] != "" {
		t.Errorf("worker runs as uid %s gid %s groups %q, want 65534 65534 none", w["uid"], w["gid"], w["groups"])
	}
	if w["capeff"] != "0000000000000000" {
		t.Errorf("worker has capabilities %s", w["capeff"])
	}
	// Its socket directory is its own, and the others' are out of reach.
	dir := w["env PLUGIN_UNIX_SOCKET_DIR"]
	if fi, err := os.Stat(dir); err != nil {
		t.Errorf("socket directory: %v", err)
	} else if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || fi.Mode().Perm() != 0o700 {
		t.Errorf("socket directory %s: owner %d mode %v, want 65534 and 0700", dir, st.Uid, fi.Mode().Perm())
	}
	if body := e.must("/snoop?name=DISPATCHER_TEST_SECRET"); strings.Contains(body, "found") {
		t.Errorf("the worker found the dispatcher's secret:\n%s", body)
	}
	me := os.Getpid()
	for _, attack := range []string{"/signal", "/ptrace"} {
		if body := e.must(fmt.Sprintf("%s?pid=%d", attack, me)); !strings.Contains(body, "operation not permitted") {
			t.Errorf("GET %s on the dispatcher: %q", attack, body)
		}
	}
	if body := e.must("/connect?dir=" + filepath.Dir(dir)); !strings.Contains(body, " 0 connected") {
		t.Errorf("the worker connected to another worker's socket:\n%s", body)
	}
	e.healthy()
}

// Junk or the header of a giant frame, written on the slot connection
// behind the sdk's back, is a protocol violation: the worker is killed (an
// *ExitError, a 502) and replaced.
func TestJunkOnTheConnection(t *testing.T) {
	for _, path := range []string{"/junk", "/junk?giant=1"} {
		t.Run(path, func(t *testing.T) {
			e := start(t, sandbox.Options{}, workers.Config{})
			_, body, err := e.get(path)
			var exit *workers.ExitError
			var proto *ipc.ProtocolError
			if !errors.As(err, &exit) || !errors.As(err, &proto) {
				t.Fatalf("GET %s: %v (body %q), want an *ExitError for a protocol violation", path, err, body)
			}
			waitFor(t, "the pool's log line", func() bool { return e.logged("protocol violation") != nil })
			e.healthy()
		})
	}
}

// Without namespaces or another user, what keeps a worker off another's
// control socket is that it no longer exists once the dispatcher connected.
func TestOtherWorkersSocket(t *testing.T) {
	e := start(t, sandbox.Options{}, workers.Config{Size: 2})
	pools, _ := filepath.Glob(filepath.Join(e.sock, "*"))
	if len(pools) != 1 {
		t.Fatalf("socket directories in %s: %v", e.sock, pools)
	}
	body := e.must("/connect?dir=" + pools[0])
	if !strings.Contains(body, " 0 connected") {
		t.Errorf("the worker connected to another worker's socket:\n%s", body)
	}
	e.healthy()
}

func TestNamespaces(t *testing.T) {
	requireRoot(t)
	t.Setenv("DISPATCHER_TEST_SECRET", "hunter2")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	hostFile := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(hostFile, []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory anyone may write to, outside /tmp: read-only inside.
	open, err := os.MkdirTemp("/var/tmp", "sbt-open")
	if err != nil {
		t.Skipf("no /var/tmp to test the read-only file system in: %v", err)
	}
	defer os.RemoveAll(open)
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}

	e := start(t, sandbox.Options{Namespaces: true, User: "65534:65534", MemoryLimit: 256 << 20}, workers.Config{Size: 2})
	w := e.whoami()
	self, _ := os.Readlink("/proc/self/ns/pid")
	for k, want := range map[string]string{"hostname": "sandbox", "seccomp": "2", "nonewprivs": "1", "capeff": "0000000000000000", "capbnd": "0000000000000000",
		"capinh": "0000000000000000", "capprm": "0000000000000000", "capamb": "0000000000000000", "uid": "0"} {
		if w[k] != want {
			t.Errorf("%s = %q, want %q", k, w[k], want)
		}
	}
	// Root in the sandbox is the User outside.
	for _, pid := range e.pool.Workers() {
		if uid := outerUID(t, pid); uid != "65534" {
			t.Errorf("sandbox %d runs as uid %s outside, want 65534", pid, uid)
		}
	}
	if strings.Contains(w["cgroup"], "dispatcher-") {
		t.Errorf("the worker sees where its cgroups are (no cgroup namespace): %s", w["cgroup"])
	}
	if w["ns_pid"] == self || w["ppid"] != "1" {
		t.Errorf("worker shares the dispatcher's PID namespace (ns %s, ppid %s)", w["ns_pid"], w["ppid"])
	}
	checkSyscalls(t, e, false)
	me := strconv.Itoa(os.Getpid())
	for path, want := range map[string]string{
		"/signal?pid=" + me:                  "no such process", // the dispatcher is out of sight
		"/ptrace?pid=1":                      "function not implemented",
		"/snoop?name=DISPATCHER_TEST_SECRET": "snoop: read",
		"/read?path=" + hostFile:             "no such file", // private /tmp
		"/write?path=" + open + "/pwned":     "no such file", // not in the sandbox's root
		"/write?path=/tmp/mine":              "write: ok",
		"/dial?addr=" + ln.Addr().String():   "address family not supported", // no AF_INET without the network
		"/connect?dir=" + filepath.Dir(w["env PLUGIN_UNIX_SOCKET_DIR"]): " 0 connected",
	} {
		body := e.must(path)
		if !strings.Contains(body, want) || strings.Contains(body, "found in") {
			t.Errorf("GET %s: want %q in\n%s", path, want, body)
		}
	}
	if _, err := os.Stat("/tmp/mine"); err == nil {
		t.Error("the worker's /tmp is the host's")
	}
	// A crash inside the sandbox is an ordinary crash.
	_, _, err = e.get("/exit")
	var exit *workers.ExitError
	if !errors.As(err, &exit) {
		t.Errorf("GET /exit: %v, want an *ExitError", err)
	}
	e.healthy()

	t.Run("allow network", func(t *testing.T) {
		e := start(t, sandbox.Options{Namespaces: true, AllowNetwork: true}, workers.Config{})
		if body := e.must("/dial?addr=" + ln.Addr().String()); !strings.Contains(body, "dial: ok") {
			t.Errorf("with AllowNetwork: %q", body)
		}
		checkSyscalls(t, e, true)
		// Root inside, without capabilities: still a read-only world.
		if body := e.must("/write?path=/etc/pwned"); !strings.Contains(body, "read-only file system") {
			t.Errorf("GET /write as root: %q", body)
		}
		if w := e.whoami(); w["uid"] != "0" || w["capeff"] != "0000000000000000" {
			t.Errorf("root worker: uid %s capabilities %s, want 0 and none", w["uid"], w["capeff"])
		}
	})
}

// outerUID returns the real uid of process pid as the host sees it.
func outerUID(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			return strings.Fields(v)[0]
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return ""
}

func TestChecksum(t *testing.T) {
	// A copy of the worker, so that the test can change it.
	dir := t.TempDir()
	path := filepath.Join(dir, "hostile")
	b, err := os.ReadFile(bins["hostile"])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256Hex(b)

	_, err = sandbox.New(path, sandbox.Options{Checksum: "sha256:" + strings.Repeat("0", 64)})
	var ce *sandbox.ChecksumError
	if !errors.As(err, &ce) || ce.Got != "sha256:"+sum || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("New with a wrong checksum: %v, want a *ChecksumError naming the binary's sha256:%s", err, sum)
	}

	e := start(t, sandbox.Options{Checksum: "sha256:" + sum}, workers.Config{Path: path})
	e.healthy()
	// Swapped after the dispatcher started: the next start refuses it.
	hello, err := os.ReadFile(bins["hello"])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".new", hello, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.get("/exit"); err == nil {
		t.Fatal("GET /exit succeeded")
	}
	waitFor(t, "a start refused for its checksum", func() bool {
		entry := e.logged("worker failed to start")
		return entry != nil && strings.Contains(fmt.Sprint(entry.Data["error"]), "not the expected sha256:"+sum)
	})
}

// The workers of two sandboxes (two functions) of a root dispatcher
// without network share no network namespace: one cannot reach an
// abstract unix socket the other listens on (TCP is denied to both by the
// filter), which its own sandbox's workers reach.
func TestSandboxesHaveSeparateNetworks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: an unprivileged dispatcher's workers each have a network namespace of their own")
	}
	a := start(t, sandbox.Options{Namespaces: true}, workers.Config{Size: 1})
	b := start(t, sandbox.Options{Namespaces: true}, workers.Config{Size: 1})
	const sock = "net=unix&addr=@dispatcher-test-" + "separate-networks"
	if body := a.must("/listen?" + sock); !strings.Contains(body, "listen: ok") {
		t.Fatalf("listen in the first sandbox: %s", body)
	}
	if body := a.must("/dial?" + sock); !strings.Contains(body, "dial: ok") {
		t.Fatalf("dial from the same sandbox: %s", body)
	}
	if body := b.must("/dial?" + sock); !strings.Contains(body, "dial: error") {
		t.Errorf("a worker of another sandbox reached the first one's abstract socket: %s", body)
	}
}
