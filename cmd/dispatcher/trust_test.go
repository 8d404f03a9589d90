package main

// End-to-end tests of the dispatcher's trust boundary (issue 18): a hostile
// worker attacks the dispatcher and its own cell, and reports what it got.

import (
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// attackLines returns the lines of a /attacks report that start with one of
// prefixes.
func attackLines(body string, prefixes ...string) []string {
	var got []string
	for l := range strings.SplitSeq(body, "\n") {
		if slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(l, p) }) {
			got = append(got, l)
		}
	}
	return got
}

// requireFailed fails the test for every report line in lines that does not
// say the attack failed, and if there are fewer than min of them.
func requireFailed(t *testing.T, body string, min int, prefixes ...string) {
	t.Helper()
	lines := attackLines(body, prefixes...)
	if len(lines) < min {
		t.Errorf("the worker tried %d of %v, want at least %d (the test proves nothing):\n%s", len(lines), prefixes, min, body)
	}
	for _, l := range lines {
		if !strings.Contains(l, ": error: ") {
			t.Errorf("attack succeeded: %s", l)
		}
	}
}

// A dispatcher running as root without --user runs its workers as nobody:
// a worker can neither leave its cell through an ancestor's cgroup.procs,
// nor signal, trace or read the dispatcher, which then shuts down cleanly
// on SIGTERM.
func TestRootDefaultUserContainsWorker(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("the default user applies to a dispatcher running as root; this test runs as uid " + strconv.Itoa(os.Geteuid()))
	}
	// --sandbox=off: the subject is the user of a directly started worker
	// (in a sandbox, it is root of its user namespace, nobody outside:
	// workers/sandbox's TestSandboxAttacks).
	d := startDispatcher(t, "--workers", bin(t, "hostile"), "--pool-size", "1", "--sandbox=off")
	d.waitLog("workers run as an unprivileged user", "65534")
	resp, body := d.get("/whoami")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "\nuid=65534\n") {
		t.Fatalf("GET /whoami: %d, want uid=65534:\n%s", resp.StatusCode, body)
	}
	before := attackLines(body, "cgroup=")
	resp, body = d.get("/attacks")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /attacks: %d %s", resp.StatusCode, body)
	}
	t.Logf("the worker's report:\n%s", body)
	requireFailed(t, body, 1, "join ")
	requireFailed(t, body, 4, "kill ", "ptrace ", "environ ", "mem ")
	if now := attackLines(body, "cgroup now="); len(before) != 1 || len(now) != 1 || strings.TrimPrefix(now[0], "cgroup now=") != strings.TrimPrefix(before[0], "cgroup=") {
		t.Errorf("the worker's cgroups changed: before %v, after %v", before, now)
	}
	if resp, body := d.get("/whoami"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /whoami after the attacks: %d %s", resp.StatusCode, body)
	}
	if _, ok := d.log.wait(0, containsAll("shutting down")); ok {
		t.Errorf("the worker's SIGTERM reached the dispatcher:\n%s", d.log)
	}
	t0 := time.Now()
	d.signal(syscall.SIGTERM)
	if st := d.waitExit(exitWait); st.ExitCode() != 0 {
		t.Errorf("exit status %d after SIGTERM", st.ExitCode())
	}
	t.Logf("stopped %s after SIGTERM", time.Since(t0).Round(time.Millisecond))
}

// --user root is allowed, and said to be dangerous.
func TestUserRootWarns(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("--user root needs root")
	}
	d := startDispatcher(t, "--workers", bin(t, "hostile"), "--pool-size", "1", "--user", "root")
	d.waitLog("level=warning", "workers run as root")
	if resp, body := d.get("/whoami"); resp.StatusCode != http.StatusOK || !strings.Contains(body, "\nuid=0\n") {
		t.Fatalf("GET /whoami: %d, want uid=0:\n%s", resp.StatusCode, body)
	}
	if _, ok := d.log.wait(0, containsAll("workers run as an unprivileged user")); ok {
		t.Errorf("--user root still defaulted:\n%s", d.log)
	}
}

// A worker binary its default user cannot execute stops the dispatcher at
// once with status 2 and a message naming the binary and the user.
func TestDefaultUserCannotExecute(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("the default user applies to a dispatcher running as root")
	}
	private := t.TempDir() // mode 0700, root's
	w := private + "/hello"
	if err := faultCopyFile(bin(t, "hello"), w); err != nil {
		t.Fatal(err)
	}
	// --sandbox=off: a sandbox gets the binary from the dispatcher, which
	// may reach it.
	code, stderr, _ := run(t, "--workers", w, "--listen", "127.0.0.1:0", "--sandbox=off")
	if code != 2 {
		t.Errorf("exit status %d, want 2; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{w, "nobody (65534:", "--user"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not name %q:\n%s", want, stderr)
		}
	}
}

// A dispatcher running as an unprivileged user, its workers as the same
// one: they cannot trace it or read its environment or memory, without
// the sandbox because it is not dumpable, at default flags because the
// sandbox hides it as well. Not dumpable in every case (its /proc files
// are root's), so no other process of that user reads it either; it still
// maps its sandboxes' user namespaces.
func TestSameUserWorkerCannotTraceDispatcher(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to start the dispatcher as another user")
	}
	for _, tc := range []struct {
		name, confined string
		args           []string
	}{
		{"sandbox off", "no_new_privs; started directly", []string{"--sandbox=off"}},
		{"defaults", "sandbox: root in it is uid 65534 outside", nil},
		// Required: the sandbox, not the default tasks limit, which an
		// unprivileged user may have no cgroup for.
		{"sandbox required", "sandbox: root in it is uid 65534 outside", []string{"--sandbox=required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Each case's own: the cases' dispatchers run side by side as
			// the same user, and a dumpable one's environment would be
			// theirs to read.
			secret := "hunter2-" + strings.ReplaceAll(tc.name, " ", "-")
			d := launchAsNobody(t, "hostile", []string{"DISPATCHER_E2E_SECRET=" + secret}, tc.args...)
			d.awaitListening(true)
			d.waitLog("workers confined", tc.confined)
			var st syscall.Stat_t
			if err := syscall.Stat("/proc/"+strconv.Itoa(d.cmd.Process.Pid)+"/environ", &st); err != nil || st.Uid != 0 {
				t.Errorf("the dispatcher's /proc/PID/environ belongs to uid %d (%v): it is dumpable", st.Uid, err)
			}
			resp, body := d.get("/whoami")
			if resp.StatusCode != http.StatusOK || !strings.Contains(body, "\nuid=") {
				t.Fatalf("GET /whoami: %d:\n%s", resp.StatusCode, body)
			}
			resp, body = d.get("/attacks?sig=0&pid=" + strconv.Itoa(d.cmd.Process.Pid))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /attacks: %d %s", resp.StatusCode, body)
			}
			t.Logf("the worker's report:\n%s", body)
			requireFailed(t, body, 3, "ptrace ", "environ ", "mem ")
			if _, body := d.get("/snoop?name=DISPATCHER_E2E_SECRET"); strings.Contains(body, secret) {
				t.Errorf("the worker read the dispatcher's environment:\n%s", body)
			}
			if resp, body := d.get("/whoami"); resp.StatusCode != http.StatusOK {
				t.Errorf("GET /whoami after the attacks: %d %s", resp.StatusCode, body)
			}
		})
	}
}

// A worker whose handshake names a file outside its socket directory (a
// root-only file in a root-only directory) is refused like a non-worker:
// status 2, one line saying why, and the file is still there.
func TestForgedHandshakeRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir() // mode 0700
	victim := dir + "/victim"
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stderr, tmp := run(t, "--workers", bin(t, "hostile"), "--listen", "127.0.0.1:0", "--env", "HOSTILE_HANDSHAKE=path:"+victim)
	if code != 2 {
		t.Errorf("exit status %d, want 2; stderr:\n%s", code, stderr)
	}
	if n := strings.Count(stderr, "handshake refused"); n != 1 || !strings.Contains(stderr, victim) {
		t.Errorf("want one line refusing the handshake naming %s, got %d:\n%s", victim, n, stderr)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "precious\n" {
		t.Errorf("the victim did not survive: %q, %v", b, err)
	}
	if names := dirEntries(t, tmp); len(names) > 0 {
		t.Errorf("left in TMPDIR: %v", names)
	}
}

// Descriptors the dispatcher inherited (a secret file open for reading, a
// root-only log open for appending) never reach a worker, at default flags
// or with --sandbox: the worker holds only its slot sockets above standard
// error (and the Go runtime's own), and the files are untouched.
func TestInheritedDescriptors(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the files are root's, the dispatcher's workers nobody's")
	}
	dir := t.TempDir() // mode 0700
	secretPath, logPath := dir+"/secret", dir+"/root.log"
	if err := os.WriteFile(secretPath, []byte("top secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Checked once the parallel subtests are done.
	t.Cleanup(func() {
		if b, err := os.ReadFile(logPath); err != nil || len(b) > 0 {
			t.Errorf("the root-only log: %q, %v", b, err)
		}
	})
	secret, err := os.Open(secretPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { secret.Close() })
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"default", nil},
		{"sandbox", []string{"--sandbox"}},
		{"concurrency", []string{"--concurrency", "3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if slices.Contains(tc.args, "--sandbox") {
				if _, err := os.Stat("/proc/self/ns/cgroup"); err != nil {
					t.Skip("no namespaces here")
				}
			}
			argv := append([]string{bin(t, "dispatcher"), "--workers", bin(t, "hostile"), "--pool-size", "1",
				"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, tc.args...)
			d := launchProcWith(t, shortTempDir(t), argv, func(cmd *exec.Cmd) {
				// Descriptors 3 to 8, above where the slots go.
				cmd.ExtraFiles = []*os.File{secret, logf, secret, logf, secret, logf}
			})
			d.awaitListening(true)
			resp, body := d.get("/inherited")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /inherited: %d %s", resp.StatusCode, body)
			}
			t.Logf("the worker's report:\n%s", body)
			slots := 0
			for _, l := range attackLines(body, "fd ") {
				switch {
				case strings.HasSuffix(l, " slot"):
					slots++
				case strings.HasSuffix(l, " runtime"): // epoll, eventfd, cgroup CPU limit
				default:
					t.Errorf("the worker holds a descriptor it was not given: %s", l)
				}
			}
			want := 1
			if slices.Contains(tc.args, "--concurrency") {
				want = 3
			}
			if slots != want {
				t.Errorf("%d slot sockets, want %d", slots, want)
			}
			if strings.Contains(body, "top secret") {
				t.Errorf("the worker read the secret")
			}
		})
	}
}

// A dispatcher running as nobody starts beside a root dispatcher whose
// workers run as nobody too: it must not take the root one's cgroups for
// those of a dead dispatcher (its pid only answers EPERM) and kill their
// workers while sweeping stale ones at start.
func TestAnotherUsersDispatcherSparesWorkers(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to start the dispatcher as another user")
	}
	root := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "2")
	other := launchAsNobody(t, "hello", nil)
	// Its sandbox is set up, stale cgroups swept (and emptied), before it
	// listens.
	other.awaitListening(true)
	for _, pid := range root.workers {
		if state, _, ok := procStat(pid); !ok || state == 'Z' || state == 'X' {
			t.Errorf("worker %d of the root dispatcher died when another user's dispatcher started", pid)
		}
	}
	if resp, body := root.get("/"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET / of the root dispatcher: %d %s", resp.StatusCode, body)
	}
}

// launchAsNobody starts a dispatcher as uid 65534, serving the test worker
// named worker in a pool of one, with env added to its environment and
// args to its flags. The caller awaits its listening line.
func launchAsNobody(t *testing.T, worker string, env []string, args ...string) *dproc {
	t.Helper()
	tmp := shortTempDir(t)
	if err := os.Chown(tmp, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{bin(t, "dispatcher"), "--workers", bin(t, worker), "--pool-size", "1",
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, args...)
	return launchProcWith(t, tmp, argv, func(cmd *exec.Cmd) {
		cmd.Env = append(cmd.Env, env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	})
}
