package main

// Fault injection at the edges: the real dispatcher binary, with faults
// injected from outside while it runs (its control sockets deleted, its
// worker binary replaced or deleted, its TMPDIR unwritable, its open files
// exhausted, its workers stopped with SIGSTOP). Each test asserts, by log
// lines, HTTP answers and polled conditions, that the dispatcher survives,
// says what happened, and leaves nothing behind.
//
// Clock jumps are covered by workers/monotonic_test.go: the host's wall
// clock must not be changed by tests, and no namespace virtualizes
// CLOCK_REALTIME.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// faultCopy copies the test worker name into a directory of its own and
// returns the copy's path: the test may replace or delete it, and
// processesOf(copy) finds exactly this test's workers.
func faultCopy(t *testing.T, name string) string {
	t.Helper()
	dst := filepath.Join(shortTempDir(t), name) // reachable by the workers' user
	if err := faultCopyFile(bin(t, name), dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// faultCopyFile copies src to dst (mode 0755) through a temporary name in
// dst's directory and a rename, as a deployment would: a running executable
// at dst is replaced, never written to.
func faultCopyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".new"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// startWrapped is startDispatcher for a dispatcher started through a
// wrapper command (prefix, which must end by executing the rest of its
// arguments in the same process, as unshare and "sh -c 'exec ...'" do) with
// the given TMPDIR. It waits for the listening line.
func startWrapped(t *testing.T, tmpDir string, prefix []string, args ...string) *dproc {
	t.Helper()
	argv := append(slices.Clone(prefix), bin(t, "dispatcher"), "--admin-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0")
	d := launchProc(t, tmpDir, append(argv, args...))
	d.awaitListening(true)
	return d
}

// faultTry sends a GET without failing the test: for polling a dispatcher
// that may answer with an error. Every answer must come within timeout.
func faultTry(d *dproc, path string, timeout time.Duration) (*http.Response, string, error) {
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(d.url + path)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// faultReaped waits until pid is gone entirely: not running, and not a
// zombie either (the dispatcher, its parent, must reap it). It fails the
// test otherwise.
func faultReaped(t *testing.T, pid int) {
	t.Helper()
	_, start0, ok := procStat(pid)
	if !ok {
		return
	}
	var state byte
	if !poll(goneWait, func() bool {
		s, start, ok := procStat(pid)
		state = s
		return !ok || start != start0
	}) {
		t.Errorf("worker %d not reaped within %s (state %c)", pid, goneWait, state)
	}
}

// faultNoneLeft checks that no process runs the worker binary at path and
// that the dispatcher's TMPDIR is empty, once the dispatcher has exited.
func faultNoneLeft(t *testing.T, d *dproc, path string) {
	t.Helper()
	var left []int
	if !poll(goneWait, func() bool { left = processesOf(path); return len(left) == 0 }) {
		t.Errorf("workers of %s left running: %v", path, left)
	}
	if names := dirEntries(t, d.tmpDir); len(names) > 0 {
		t.Errorf("TMPDIR %s not empty after shutdown: %v", d.tmpDir, names)
	}
}

// faultStop stops the dispatcher with SIGTERM and expects status 0.
func faultStop(t *testing.T, d *dproc) {
	t.Helper()
	d.signal(syscall.SIGTERM)
	if st := d.waitExit(exitWait); st.ExitCode() != 0 {
		t.Errorf("exit %v after SIGTERM, want status 0", st)
	}
}

// faultExpect checks a GET's answer.
func faultExpect(t *testing.T, d *dproc, path string, status int, body string) {
	t.Helper()
	resp, got := d.get(path)
	if resp.StatusCode != status || (body != "" && got != body) {
		t.Fatalf("GET %s: %d %q, want %d %q", path, resp.StatusCode, got, status, body)
	}
}

// crashAndWait makes the (crash) worker exit with status 3 during a request
// and waits for the dispatcher to notice.
func crashAndWait(t *testing.T, d *dproc, id string) {
	t.Helper()
	resp, body := d.get("/exit", "X-Request-Id", id)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("GET /exit: %d %q, want 502", resp.StatusCode, body)
	}
	line := d.waitLog("level=error", "req_id="+id, "exited with status 3")
	pid, _ := field(line, "pid")
	d.waitLog("worker exited unexpectedly", "pid="+pid)
	n, _ := strconv.Atoi(pid)
	faultReaped(t, n)
}

// socketLeftovers returns what remains of the workers' go-plugin control
// sockets under tmp: the sockets themselves (dispatcher-*/plugin-dir*/plugin*)
// and their plugin-dir* directories.
func socketLeftovers(t *testing.T, tmp string) (sockets, dirs []string) {
	t.Helper()
	err := filepath.WalkDir(tmp, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed as we walk: a worker exiting
			}
			return err
		}
		switch {
		case e.Type()&fs.ModeSocket != 0:
			sockets = append(sockets, p)
		case e.IsDir() && strings.HasPrefix(e.Name(), "plugin-dir"):
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sockets, dirs
}

// The workers' go-plugin control sockets deleted under the dispatcher: the
// requests go over the slots' socketpairs, not the socket, so they keep
// working; a crashed worker is still replaced (in a fresh socket
// directory), and the shutdown leaves neither process nor file behind.
//
// The dispatcher itself unlinks each socket once connected (ipc.Launch), so
// what is left to delete while workers run is their plugin-dir* directories
// (and any socket still there).
func TestFaultSocketDeleted(t *testing.T) {
	t.Parallel()
	w := faultCopy(t, "crash")
	d := startDispatcher(t, "--workers", w, "--pool-size", "1")
	faultExpect(t, d, "/", http.StatusOK, "ok\n")

	sockets, dirs := socketLeftovers(t, d.tmpDir)
	if len(sockets)+len(dirs) == 0 {
		t.Fatalf("no control socket nor plugin-dir* under %s: nothing to delete (layout changed?)", d.tmpDir)
	}
	for _, p := range append(sockets, dirs...) {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("deleted %d socket(s) and %d plugin-dir(s)", len(sockets), len(dirs))

	for range 3 {
		faultExpect(t, d, "/", http.StatusOK, "ok\n")
	}
	// Crash, replacement, twice: each replacement makes its own socket.
	crashAndWait(t, d, "e2e-fault-sock-1")
	faultExpect(t, d, "/", http.StatusOK, "ok\n")
	if _, dirs := socketLeftovers(t, d.tmpDir); len(dirs) != 1 {
		t.Errorf("after the replacement: plugin-dirs %v, want the replacement's one", dirs)
	}
	crashAndWait(t, d, "e2e-fault-sock-2")
	faultExpect(t, d, "/", http.StatusOK, "ok\n")

	faultStop(t, d)
	faultNoneLeft(t, d, w)
	for _, l := range d.log.Lines() {
		if strings.Contains(l, "worker failed to start") || strings.Contains(l, "level=panic") || strings.Contains(l, "level=fatal") {
			t.Errorf("unexpected log line: %s", l)
		}
	}
}

// The dispatcher's whole socket directory (TMPDIR/dispatcher-*) deleted
// while it runs, as a /tmp cleaner (systemd-tmpfiles, tmpreaper) does to an
// old directory: requests keep working, and a crashed worker must still be
// replaced.
func TestFaultSocketDirDeleted(t *testing.T) {
	t.Parallel()
	w := faultCopy(t, "crash")
	d := startDispatcher(t, "--workers", w, "--pool-size", "1")
	faultExpect(t, d, "/", http.StatusOK, "ok\n")
	names := dirEntries(t, d.tmpDir)
	if len(names) != 1 || !strings.HasPrefix(names[0], "dispatcher-") {
		t.Fatalf("TMPDIR holds %v, want one dispatcher-* directory", names)
	}
	if err := os.RemoveAll(filepath.Join(d.tmpDir, names[0])); err != nil {
		t.Fatal(err)
	}
	faultExpect(t, d, "/", http.StatusOK, "ok\n")

	crashAndWait(t, d, "e2e-fault-sockdir-1")
	var last string
	if !poll(8*time.Second, func() bool {
		resp, body, err := faultTry(d, "/", 5*time.Second)
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("%d %q", resp.StatusCode, body)
		return resp.StatusCode == http.StatusOK
	}) {
		fail, _ := d.log.wait(0, containsAll("worker failed to start"))
		t.Errorf("no worker replaced the crashed one within 8s of the socket directory's deletion; last answer: %s\nfirst start failure: %s", last, fail)
	}
	faultStop(t, d)
	faultNoneLeft(t, d, w)
}

// The worker binary replaced (a new version renamed over it) while its
// worker runs: it keeps serving the old code; once it crashes, its
// replacement runs the new binary.
func TestFaultBinaryReplaced(t *testing.T) {
	t.Parallel()
	w := faultCopy(t, "crash")
	// One worker: the replacement is the only one that can answer next.
	d := startDispatcher(t, "--workers", w, "--pool-size", "1")
	faultExpect(t, d, "/", http.StatusOK, "ok\n")

	if err := faultCopyFile(bin(t, "hello"), w); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		faultExpect(t, d, "/", http.StatusOK, "ok\n") // the old worker still runs
	}
	crashAndWait(t, d, "e2e-fault-replaced-1")
	faultExpect(t, d, "/", http.StatusOK, "hello world\n")
	faultStop(t, d)
	faultNoneLeft(t, d, w)
	if fail, ok := d.log.wait(0, containsAll("worker failed to start")); ok {
		t.Errorf("a start failed: %s", fail)
	}
}

// The worker binary deleted while its worker runs: the worker keeps
// serving; once it crashes, restarts fail with a log line naming the path,
// requests get a prompt 502 or 503 (never a hang), the breaker opens, and
// restoring the binary lets the pool recover.
func TestFaultBinaryDeleted(t *testing.T) {
	t.Parallel()
	w := faultCopy(t, "crash")
	d := startDispatcher(t, "--workers", w, "--pool-size", "1", "--breaker-start-failures", "3", "--breaker-window", "20s")
	faultExpect(t, d, "/", http.StatusOK, "ok\n")

	if err := os.Remove(w); err != nil {
		t.Fatal(err)
	}
	faultExpect(t, d, "/", http.StatusOK, "ok\n")
	crashAndWait(t, d, "e2e-fault-deleted-1")

	fail := d.waitLog("level=error", "worker failed to start", w)
	if !strings.Contains(fail, "no such file or directory") {
		t.Errorf("start failure does not say the binary is missing: %s", fail)
	}
	// Requests are refused promptly: 502 while starts fail, then 503 once
	// the breaker is open.
	var statuses []int
	var open *http.Response
	if !poll(logWait, func() bool {
		start := time.Now()
		resp, body, err := faultTry(d, "/", 5*time.Second)
		if err != nil {
			t.Fatalf("GET / with the binary deleted: %v (after %s)", err, time.Since(start))
		}
		statuses = append(statuses, resp.StatusCode)
		switch resp.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable:
		default:
			t.Fatalf("GET / with the binary deleted: %d %q, want 502 or 503", resp.StatusCode, body)
		}
		if resp.Header.Get("X-Dispatcher-Error") != "true" {
			t.Errorf("GET /: %d without X-Dispatcher-Error", resp.StatusCode)
		}
		if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, "quarantined") {
			open = resp
			return true
		}
		return false
	}) {
		t.Fatalf("breaker not open within %s; statuses %v", logWait, statuses)
	}
	if ra, err := strconv.Atoi(open.Header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("503 with Retry-After %q, want seconds", open.Header.Get("Retry-After"))
	}
	d.waitLog("worker binary quarantined")

	if err := faultCopyFile(bin(t, "crash"), w); err != nil {
		t.Fatal(err)
	}
	// The breaker's first period is 5s; then a probe worker starts.
	const recover = 5*time.Second + logWait
	if !poll(recover, func() bool {
		resp, _, err := faultTry(d, "/", 5*time.Second)
		return err == nil && resp.StatusCode == http.StatusOK
	}) {
		t.Fatalf("no recovery within %s of restoring the binary", recover)
	}
	d.waitLog("worker binary out of quarantine")
	faultExpect(t, d, "/", http.StatusOK, "ok\n")
	faultStop(t, d)
	faultNoneLeft(t, d, w)
}

// needMountNS skips the test unless it can make private mount namespaces
// with unshare and bind mounts (root, util-linux).
func needMountNS(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for mount namespaces and bind mounts")
	}
	for _, tool := range append([]string{"unshare", "mount", "sh"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	dir := t.TempDir()
	out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && ! touch "$1/x" 2>/dev/null`, "sh", dir).CombinedOutput()
	if err != nil {
		t.Skipf("cannot make a read-only bind mount in a private mount namespace: %v %s", err, out)
	}
}

// TMPDIR unwritable when the dispatcher starts: it exits at once with
// status 1 or 2 and a message naming the directory, starts no worker and
// leaves nothing behind.
func TestFaultTmpdirUnwritableAtStart(t *testing.T) {
	t.Parallel()
	w := faultCopy(t, "hello")
	for _, tc := range []struct {
		name string
		// setup returns the TMPDIR to use and the command prefix; the
		// dispatcher's arguments follow.
		setup func(t *testing.T) (tmp string, prefix []string)
		want  string // in stderr, besides the directory
	}{
		{"read-only mount", func(t *testing.T) (string, []string) {
			needMountNS(t)
			return shortTempDir(t), []string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
				`mount --bind "$TMPDIR" "$TMPDIR" && mount -o remount,bind,ro "$TMPDIR" && exec "$@"`, "sh"}
		}, "read-only file system"},
		{"not writable", func(t *testing.T) (string, []string) {
			if os.Geteuid() == 0 {
				t.Skip("as root, mode 0500 does not stop writes (the read-only mount case covers root)")
			}
			dir := shortTempDir(t)
			if err := os.Chmod(dir, 0o500); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
			return dir, nil
		}, "permission denied"},
		{"a regular file", func(t *testing.T) (string, []string) {
			f := filepath.Join(shortTempDir(t), "file")
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return f, nil
		}, "not a directory"},
		{"missing", func(t *testing.T) (string, []string) {
			return filepath.Join(shortTempDir(t), "missing"), nil
		}, "no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp, prefix := tc.setup(t)
			argv := append(slices.Clone(prefix), bin(t, "dispatcher"), "--workers", w, "--pool-size", "1",
				"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Env = envWithTMPDIR(tmp)
			cmd.WaitDelay = time.Second
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(exitWait):
				_ = cmd.Process.Kill()
				<-done
				t.Fatalf("dispatcher still running %s after starting with TMPDIR %s unwritable; stderr:\n%s", exitWait, tmp, stderr.String())
			}
			code := cmd.ProcessState.ExitCode()
			msg := stderr.String()
			if code != 1 && code != 2 {
				t.Errorf("exit status %d, want 1 or 2; stderr:\n%s", code, msg)
			}
			if !strings.Contains(msg, tmp) || !strings.Contains(msg, tc.want) {
				t.Errorf("stderr does not name %s and %q:\n%s", tmp, tc.want, msg)
			}
			if strings.Contains(msg, "dispatcher listening") {
				t.Errorf("dispatcher claims to listen:\n%s", msg)
			}
			t.Logf("stderr: %s", strings.TrimSpace(msg))
			if left := processesOf(w); len(left) > 0 {
				t.Errorf("workers started: %v", left)
			}
			if fi, err := os.Stat(tmp); err == nil && fi.IsDir() {
				if names := dirEntries(t, tmp); len(names) > 0 {
					t.Errorf("left in TMPDIR: %v", names)
				}
			}
		})
	}
}

// TMPDIR made read-only while the dispatcher runs (a bind mount of it,
// remounted read-only in the dispatcher's private mount namespace): a
// crashed worker's restart fails with a log line naming the directory,
// requests get a prompt 502/503, and once the directory is writable again a
// replacement starts.
func TestFaultTmpdirUnwritableWhileRunning(t *testing.T) {
	t.Parallel()
	needMountNS(t, "nsenter")
	w := faultCopy(t, "crash")
	tmp := shortTempDir(t)
	d := startWrapped(t, tmp, []string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$TMPDIR" "$TMPDIR" && exec "$@"`, "sh"},
		"--workers", w, "--pool-size", "1", "--breaker-start-failures", "0")
	faultExpect(t, d, "/", http.StatusOK, "ok\n")

	remount := func(mode string) {
		t.Helper()
		out, err := exec.Command("nsenter", "--target", strconv.Itoa(d.cmd.Process.Pid), "--mount",
			"mount", "-o", "remount,bind,"+mode, tmp).CombinedOutput()
		if err != nil {
			t.Fatalf("remount %s %s in the dispatcher's namespace: %v %s", tmp, mode, err, out)
		}
	}
	remount("ro")
	faultExpect(t, d, "/", http.StatusOK, "ok\n") // the running worker needs no file
	crashAndWait(t, d, "e2e-fault-rotmp-1")
	fail := d.waitLog("level=error", "worker failed to start")
	if !strings.Contains(fail, tmp) || !strings.Contains(fail, "read-only file system") {
		t.Errorf("start failure does not name the read-only directory %s: %s", tmp, fail)
	}
	resp, body, err := faultTry(d, "/", 5*time.Second)
	if err != nil {
		t.Fatalf("GET / with TMPDIR read-only: %v", err)
	}
	if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("GET / with TMPDIR read-only: %d %q, want 502 or 503", resp.StatusCode, body)
	}

	remount("rw")
	if !poll(logWait, func() bool {
		resp, _, err := faultTry(d, "/", 5*time.Second)
		return err == nil && resp.StatusCode == http.StatusOK
	}) {
		t.Fatalf("no recovery within %s of TMPDIR becoming writable again", logWait)
	}
	faultStop(t, d)
	faultNoneLeft(t, d, w)
}

// procCPU returns the user and system CPU time pid used, in clock ticks.
func procCPU(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	// Fields 14 and 15 (utime, stime); f[0] is field 3.
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return utime + stime, nil
}

func fdCount(pid int) int {
	es, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	return len(es)
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// Open files exhausted in the dispatcher itself (its RLIMIT_NOFILE lowered
// to just above what it uses, then more client connections than that): it
// keeps running, logs the episode once, closes the connections it has no
// descriptor for at once (with the one it holds in reserve) instead of
// spinning or leaving them in the backlog, and serves normally once the
// connections close, without leaking descriptors.
func TestFaultFDExhaustion(t *testing.T) {
	t.Parallel()
	w := faultCopy(t, "hello")
	// The connections that fill the table send nothing: they must not be
	// closed for that during the episode.
	d := startDispatcher(t, "--workers", w, "--pool-size", "1", "--read-header-timeout", "1m")
	faultExpect(t, d, "/", http.StatusOK, "hello world\n")
	pid := d.cmd.Process.Pid

	var orig unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &orig); err != nil {
		t.Skipf("prlimit on the dispatcher: %v", err)
	}
	n0 := fdCount(pid)
	low := unix.Rlimit{Cur: uint64(n0 + 4), Max: orig.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Skipf("lowering the dispatcher's RLIMIT_NOFILE: %v", err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &orig, nil); err != nil && !d.exited() {
				t.Errorf("restoring RLIMIT_NOFILE: %v", err)
			}
		}
	}
	defer restore()
	t.Logf("dispatcher has %d open files; RLIMIT_NOFILE lowered to %d", n0, low.Cur)

	var conns []net.Conn
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
		conns = nil
	}
	defer closeAll()
	for range 24 {
		c, err := net.DialTimeout("tcp", d.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	isAcceptErr := containsAll("out of file descriptors", "too many open files")
	first := d.waitLogFunc("an accept error", isAcceptErr)
	t0 := time.Now()
	cpu0, err := procCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(first, "level=error") || !strings.Contains(first, "listener=listen") {
		t.Errorf("accept error not logged at error level, naming the listener: %s", first)
	}
	// The connections past the limit are closed at accept: their clients
	// read EOF at once; the others wait for their requests' heads.
	deadline := time.Now().Add(3 * time.Second)
	closed := make(chan bool, len(conns))
	for _, c := range conns {
		go func() {
			c.SetReadDeadline(deadline)
			_, err := c.Read(make([]byte, 1))
			closed <- errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
		}()
	}
	shed := 0
	for range conns {
		if <-closed {
			shed++
		}
	}
	if shed < len(conns)-8 {
		t.Errorf("%d of %d connections closed at accept, want all but the few the limit left room for", shed, len(conns))
	}
	cpu1, err := procCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(t0)
	used := time.Duration(cpu1-cpu0) * time.Second / clockTicks
	t.Logf("CPU %s over %s of accept errors", used, wall.Round(time.Millisecond))
	if used > wall/2 {
		t.Errorf("dispatcher used %s of CPU in %s of accept errors: spinning", used, wall)
	}
	errLines := 0
	for _, l := range d.log.Lines() {
		if isAcceptErr(l) {
			errLines++
		}
	}
	if errLines != 1 {
		t.Errorf("%d accept error lines within %s, want one", errLines, wall)
	}
	if d.exited() {
		t.Fatalf("dispatcher exited: %v", d.state)
	}

	closeAll()
	// Still under the low limit: the descriptors of the closed connections
	// come back and the next accept works. (Until they are back, a new
	// connection may be shed.)
	if !poll(logWait, func() bool { return fdCount(pid) < int(low.Cur)-1 }) {
		t.Fatalf("dispatcher holds %d open files after its clients closed, limit %d", fdCount(pid), low.Cur)
	}
	resp, body, err := faultTry(d, "/", 10*time.Second)
	if err != nil || resp.StatusCode != http.StatusOK || body != "hello world\n" {
		t.Fatalf("GET / after the connections closed: %v %v %q", err, resp, body)
	}
	var n int
	if !poll(logWait, func() bool { n = fdCount(pid); return n <= n0 }) {
		t.Errorf("dispatcher holds %d open files after the episode, %d before", n, n0)
	}
	restore()
	faultStop(t, d)
	faultNoneLeft(t, d, w)
}

// faultStopped waits until pid is stopped (state T).
func faultStopped(t *testing.T, pid int) {
	t.Helper()
	var state byte
	if !poll(goneWait, func() bool {
		s, _, ok := procStat(pid)
		state = s
		return !ok || s == 'T'
	}) || state != 'T' {
		t.Fatalf("worker %d not stopped after SIGSTOP (state %c)", pid, state)
	}
}

// A worker stopped (SIGSTOP) in the middle of a request: the client gets
// 504 at --timeout, the stopped worker is killed (SIGKILL works on a stopped
// process), reaped and replaced.
func TestFaultSIGSTOPMidRequest(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	w := faultCopy(t, "hang")
	// --sandbox=off: SIGSTOP goes to the pid the dispatcher knows, which
	// in a sandbox is its init, not the worker.
	d := startDispatcher(t, "--workers", w, "--pool-size", "1", "--timeout", timeout.String(), "--sandbox=off")
	worker := d.workers[0]

	const id = "e2e-fault-sigstop-1"
	type answer struct {
		status  int
		err     error
		elapsed time.Duration
	}
	ch := make(chan answer, 1)
	start := time.Now()
	go func() {
		req, _ := http.NewRequest(http.MethodGet, d.url+"/ctx", nil)
		req.Header.Set("X-Request-Id", id)
		resp, err := d.client.Do(req)
		a := answer{err: err, elapsed: time.Since(start)}
		if err == nil {
			a.status = resp.StatusCode
			resp.Body.Close()
		}
		ch <- a
	}()
	d.waitLog("hang: waiting for cancellation of " + id)
	if err := syscall.Kill(worker, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	faultStopped(t, worker)
	if since := time.Since(start); since >= timeout {
		t.Logf("worker stopped only %s after the request began (timeout %s): machine slow", since, timeout)
	}

	var a answer
	select {
	case a = <-ch:
	case <-time.After(timeout + exitWait):
		t.Fatalf("no answer %s after the request began", timeout+exitWait)
	}
	if a.err != nil || a.status != http.StatusGatewayTimeout {
		t.Fatalf("GET /ctx to a stopped worker: %d %v, want 504", a.status, a.err)
	}
	if a.elapsed < timeout-50*time.Millisecond || a.elapsed > timeout+3*time.Second {
		t.Errorf("504 after %s, want about %s", a.elapsed, timeout)
	}
	t.Logf("504 after %s", a.elapsed.Round(time.Millisecond))
	p := strconv.Itoa(worker)
	d.waitLog("request timed out; worker killed", "pid="+p)
	line := d.waitLog("worker killed; replacing it", "pid="+p)
	if !strings.Contains(line, "killed by signal") {
		t.Errorf("stopped worker not ended by a signal: %s", line)
	}
	faultReaped(t, worker)

	resp, body := d.get("/")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "ok ") || strings.TrimSpace(body[3:]) == p {
		t.Errorf("GET / after the timeout: %d %q, want 200 from a new worker", resp.StatusCode, body)
	}
	faultStop(t, d)
	faultNoneLeft(t, d, w)
}

// A worker stopped (SIGSTOP) while idle: its health ping goes unanswered,
// it is quarantined, killed, reaped and replaced before any request meets
// it.
func TestFaultSIGSTOPIdle(t *testing.T) {
	t.Parallel()
	w := faultCopy(t, "hang")
	// --sandbox=off: as in TestFaultSIGSTOPMidRequest.
	d := startDispatcher(t, "--sandbox=off", "--workers", w, "--pool-size", "1",
		"--ping-interval", "200ms", "--ping-timeout", "300ms")
	worker := d.workers[0]
	p := strconv.Itoa(worker)
	if _, body := d.get("/"); body != "ok "+p+"\n" {
		t.Fatalf("GET /: %q, want ok %s", body, p)
	}
	if err := syscall.Kill(worker, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	faultStopped(t, worker)
	line := d.waitLog("worker quarantined", "pid="+p)
	if !strings.Contains(line, "health ping") {
		t.Errorf("quarantine line does not give the reason: %s", line)
	}
	d.waitLog("worker killed; replacing it", "pid="+p)
	faultReaped(t, worker)
	resp, body := d.get("/")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "ok ") || strings.TrimSpace(body[3:]) == p {
		t.Errorf("GET / after the quarantine: %d %q, want 200 from a new worker", resp.StatusCode, body)
	}
	faultStop(t, d)
	faultNoneLeft(t, d, w)
}

// Workers stopped (SIGSTOP) when the dispatcher shuts down: they cannot
// exit when their slots close, so they are killed after --stop-timeout; the shutdown is
// bounded and leaves nothing behind.
func TestFaultSIGSTOPAtShutdown(t *testing.T) {
	t.Parallel()
	w := faultCopy(t, "hello")
	d := startDispatcher(t, "--workers", w, "--pool-size", "2")
	faultExpect(t, d, "/", http.StatusOK, "hello world\n")
	for _, pid := range d.workers {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		faultStopped(t, pid)
	}
	start := time.Now()
	faultStop(t, d)
	t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	d.waitLog("level=warning", "2 worker(s) killed after the stop timeout")
	faultNoneLeft(t, d, w)
}
