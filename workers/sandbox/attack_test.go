package sandbox_test

// The attacks of issue 19 against the default sandbox, as root and, in
// TestSandboxAttacksUnprivileged, as an ordinary user: device nodes, a
// host unix socket, a vsock port (refused by the filter), /etc/shadow, the working directory,
// filling /tmp, a fork bomb.

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/childproc/dispatcher/internal/testbin"
	"github.com/childproc/dispatcher/workers"
	"github.com/childproc/dispatcher/workers/sandbox"
	"golang.org/x/sys/unix"
)

// envUnprivileged marks the run of this test binary as nobody: TestMain
// waits on stdin until the parent has put it in its cgroups.
const envUnprivileged = "SANDBOX_TEST_UNPRIVILEGED"

// sandboxed are the Options the dispatcher gives by default (its
// --pids-limit), with a small /tmp.
var sandboxed = sandbox.Options{Namespaces: true, PidsLimit: sandbox.DefaultPidsLimit, TmpSize: 8 << 20}

func TestSandboxAttacks(t *testing.T) {
	// A 0600 socket of a "host service", in a directory anyone may
	// enter: without a sandbox the worker would find it by name.
	dir, err := os.MkdirTemp("", "sbt-host")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "host.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(sock, 0o600); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	e := start(t, sandboxed, workers.Config{})
	// Root in the sandbox, nobody outside (the default of a root
	// dispatcher, and this run's own uid unprivileged), no capabilities.
	w := e.whoami()
	if w["uid"] != "0" || w["nonewprivs"] != "1" || w["seccomp"] != "2" {
		t.Errorf("in the sandbox: uid %s no_new_privs %s seccomp %s", w["uid"], w["nonewprivs"], w["seccomp"])
	}
	for _, set := range []string{"capeff", "capprm", "capinh", "capamb", "capbnd"} {
		if w[set] != "0000000000000000" {
			t.Errorf("in the sandbox: %s %q, want no capability", set, w[set])
		}
	}
	for _, pid := range e.pool.Workers() {
		if uid := outerUID(t, pid); uid != "65534" {
			t.Errorf("sandbox %d runs as uid %s outside, want 65534", pid, uid)
		}
	}
	for path, want := range map[string]string{
		"/open?path=/dev/loop-control": "no such file",
		"/open?path=/dev/kvm":          "no such file",
		"/open?path=/dev/userfaultfd":  "no such file",
		"/open?path=/dev/console":      "no such file",
		"/open?path=/dev/vsock":        "no such file",
		"/open?path=/dev/tty1":         "no such file",
		"/open?path=/dev/null":         "rw: ok", // the harmless ones are there
		"/open?path=/dev/urandom":      "rw: ok",
		"/open?path=/dev/ptmx":         "rw: ok", // its own devpts
		"/read?path=/etc/shadow":       "no such file",
		"/read?path=/etc/passwd":       "no such file",
		"/unix?path=" + sock:           "no such file",
		"/write?path=/pwned":           "read-only file system",
		"/write?path=/dev/shm/mine":    "write: ok",
	} {
		if body := e.must(path); !strings.Contains(body, want) {
			t.Errorf("GET %s: want %q in\n%s", path, want, body)
		}
	}

	// The vsock port space is the host's: a bind must be refused, or
	// leave the port free for the host.
	port := 20000 + rand.IntN(40000)
	vs := e.must(fmt.Sprintf("/vsock?port=%d", port))
	if fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		err = unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: uint32(port)})
		unix.Close(fd)
		if err != nil {
			t.Errorf("the host cannot bind vsock port %d after the worker's attempt (%q): %v", port, vs, err)
		}
	}
	if !strings.Contains(vs, "vsock: error") {
		t.Errorf("GET /vsock: %q, want the bind refused", vs)
	}

	// The working directory is /, and / holds only the sandbox's own.
	cwd := e.must("/cwd")
	if !strings.Contains(cwd, "cwd=/ ok") {
		t.Errorf("GET /cwd:\n%s", cwd)
	}
	for line := range strings.SplitSeq(cwd, "\n") {
		names, ok := strings.CutPrefix(line, "ls /=")
		if !ok {
			continue
		}
		names, _, _ = strings.Cut(names, " ")
		for n := range strings.SplitSeq(names, ",") {
			switch n {
			case "dev", "proc", "tmp", "etc", "usr", "lib", "lib64", strings.Split(e.worker, "/")[1]:
			default:
				t.Errorf("the sandbox's root holds %q: %s", n, line)
			}
		}
	}

	// /tmp stops at its size.
	fill := e.must("/fill?path=/tmp/big&mb=64")
	var wrote int
	if _, err := fmt.Sscanf(fill, "fill: wrote %d bytes:", &wrote); err != nil || wrote > 8<<20 || !strings.Contains(fill, "no space left on device") {
		t.Errorf("filling an 8 MiB /tmp: %s", fill)
	}
	e.healthy()

	// A fork bomb at the default limit: the worker's request fails (its
	// runtime cannot start a thread, or the handler gets EAGAIN), the
	// cell is killed, and the pool serves again.
	status, body, err := e.get("/bomb?token=" + e.token)
	var exit *workers.ExitError
	switch {
	case errors.As(err, &exit): // the 502
	case err == nil && status == 200 && strings.Contains(body, "resource temporarily unavailable"):
	default:
		t.Errorf("GET /bomb: %d %v %q", status, err, body)
	}
	waitFor(t, "the pool to serve again", func() bool {
		status, _, err := e.get("/whoami")
		return err == nil && status == 200
	})
}

// TestSandboxAttacksUnprivileged runs TestSandboxAttacks in this test
// binary started again as nobody, with a cgroup delegated to it (as
// systemd does for a user's service), so that nothing skips.
func TestSandboxAttacksUnprivileged(t *testing.T) {
	if os.Getenv(envUnprivileged) != "" {
		t.Skip("this is the unprivileged run")
	}
	requireRoot(t)
	// A copy of this binary that nobody may execute.
	dir, err := os.MkdirTemp("", "sbt-unpriv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "sandbox.test")
	if err := os.WriteFile(exe, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cgroups := delegate(t, 65534)

	cmd := exec.Command(exe, "-test.run", "^TestSandboxAttacks$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), envUnprivileged+"=1", "CI=1", testbin.EnvDir+"="+filepath.Dir(bins["hostile"]))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	go_, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, cg := range cgroups {
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), fmt.Appendf(nil, "%d", cmd.Process.Pid), 0); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal(err)
		}
	}
	fmt.Fprintln(go_, "go")
	go_.Close()
	err = cmd.Wait()
	if err != nil || strings.Contains(out.String(), "--- SKIP") || !strings.Contains(out.String(), "--- PASS: TestSandboxAttacks ") {
		t.Errorf("as nobody: %v\n%s", err, out.String())
	}
}

// delegate makes a cgroup owned by uid in the v2 hierarchy and in the v1
// pids one (where the machine has them), and removes them at the end.
func delegate(t *testing.T, uid int) []string {
	t.Helper()
	var dirs []string
	for _, base := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
			continue
		}
		if base == "/sys/fs/cgroup" && len(dirs) > 0 {
			break // a hybrid machine: done
		}
		d := filepath.Join(base, fmt.Sprintf("sbt-unpriv-%d", os.Getpid()))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { removeTree(d) })
		entries, _ := os.ReadDir(d)
		for _, e := range append(entries, nil) {
			p := d
			if e != nil {
				p = filepath.Join(d, e.Name())
			}
			if err := os.Chown(p, uid, uid); err != nil {
				t.Fatal(err)
			}
		}
		dirs = append(dirs, d)
	}
	if len(dirs) == 0 {
		t.Fatal("no cgroup hierarchy to delegate")
	}
	return dirs
}

// removeTree removes a cgroup and the ones below it, deepest first.
func removeTree(dir string) {
	var all []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			all = append(all, p)
		}
		return nil
	})
	for i := len(all) - 1; i >= 0; i-- {
		os.Remove(all[i])
	}
}

// waitForParent is TestMain's part of the unprivileged run.
func waitForParent() {
	if os.Getenv(envUnprivileged) != "" {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
}
