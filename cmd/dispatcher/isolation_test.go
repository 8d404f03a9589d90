package main

// End-to-end tests of the isolation flags (flags_isolation.go) through the
// real dispatcher binary and the hostile test worker.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/childproc/dispatcher/workers/sandbox"
	"github.com/childproc/dispatcher/workers/sandbox/shim"
)

func TestIsolationUsageErrors(t *testing.T) {
	t.Parallel()
	hostile := bin(t, "hostile")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"env without =", []string{"--env", "FOO"}, "-env"},
		{"env empty key", []string{"--env", "=x"}, "-env"},
		{"pass-env with =", []string{"--pass-env", "A=B"}, "-pass-env"},
		{"memory not a size", []string{"--memory-limit", "lots"}, "-memory-limit"},
		{"memory zero", []string{"--memory-limit", "0"}, "-memory-limit"},
		{"memory tiny", []string{"--memory-limit", "4K"}, "-memory-limit"},
		{"pids negative", []string{"--pids-limit", "-1"}, "--pids-limit"},
		{"cpu negative", []string{"--cpu-limit", "-0.5"}, "--cpu-limit"},
		{"cpu NaN", []string{"--cpu-limit", "NaN"}, "--cpu-limit"},
		{"cpu too small", []string{"--cpu-limit", "0.001"}, "--cpu-limit"},
		{"nofile too low", []string{"--nofile", "8"}, "--nofile"},
		{"network without sandbox", []string{"--allow-network", "--sandbox=off"}, "--allow-network"},
		{"bind without sandbox", []string{"--sandbox-bind", "/etc", "--sandbox=off"}, "--sandbox-bind"},
		{"bind relative", []string{"--sandbox-bind", "etc"}, "-sandbox-bind"},
		{"bind missing", []string{"--sandbox-bind", "/no/such/path"}, "--sandbox-bind"},
		{"sandbox mode", []string{"--sandbox=maybe"}, "-sandbox"},
		{"tmp size", []string{"--tmp-size", "1K"}, "-tmp-size"},
		{"checksum syntax", []string{"--checksum", "md5:abcd"}, "--checksum"},
		{"checksum mismatch", []string{"--checksum", "sha256:" + strings.Repeat("0", 64)}, "not the expected sha256:" + strings.Repeat("0", 64)},
		{"unknown user", []string{"--user", "no-such-user-xyz"}, "--user"},
		{"user syntax", []string{"--user", "nobody:"}, "--user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"--workers", hostile, "--listen", "127.0.0.1:0"}, tc.args...)
			code, stderr, tmp := run(t, args...)
			if code != 2 {
				t.Errorf("exit status %d, want 2; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr does not name %q:\n%s", tc.want, stderr)
			}
			if names := dirEntries(t, tmp); len(names) > 0 {
				t.Errorf("TMPDIR not empty after a usage error: %v", names)
			}
		})
	}
}

// A secret in the dispatcher's environment reaches a worker only when passed
// on purpose; --env sets variables.
func TestEnvFlags(t *testing.T) { // not parallel: t.Setenv
	t.Setenv("DISPATCHER_E2E_SECRET", "hunter2") // inherited by the dispatcher
	t.Setenv("DISPATCHER_E2E_PASSED", "shared")
	d := startDispatcher(t, "--workers", bin(t, "hostile"), "--pool-size", "1",
		"--env", "GREETING=hello=world", "--pass-env", "DISPATCHER_E2E_PASSED", "--pass-env", "DISPATCHER_E2E_UNSET")
	d.waitLog("--pass-env", "DISPATCHER_E2E_UNSET")
	resp, body := d.get("/whoami")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /whoami: %d %s", resp.StatusCode, body)
	}
	for _, want := range []string{"env GREETING=hello=world\n", "env DISPATCHER_E2E_PASSED=shared\n", "nonewprivs=1\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("worker lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "hunter2") || strings.Contains(body, "DISPATCHER_E2E_UNSET") {
		t.Errorf("the worker got what it was not given:\n%s", body)
	}
	d.waitLog("workers confined", "no_new_privs")
}

func TestChecksumFlag(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(bin(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "1", "--checksum", "sha256:"+hex.EncodeToString(sum[:]))
	if resp, body := d.get("/"); resp.StatusCode != http.StatusOK || body != "hello world\n" {
		t.Errorf("GET /: %d %q", resp.StatusCode, body)
	}
}

// The whole sandbox through the command line: a memory bomb costs its
// request a 502 and a log line saying "out of memory"; the next request is
// served; a dispatcher killed with SIGKILL takes its sandboxed workers with
// it.
func TestSandboxFlags(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 && os.Getenv("CI") == "" {
		t.Skip("--sandbox needs root")
	}
	opts := sandbox.Options{Namespaces: true, MemoryLimit: 64 << 20, PidsLimit: 256, NoFile: 128}
	probe, err := sandbox.New(bin(t, "hostile"), opts) // this test binary is a shim too
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run this test, but: %v", err)
		}
		t.Skipf("this machine lacks what the test needs: %v", err)
	}
	probe.Close()
	args := []string{"--workers", bin(t, "hostile"), "--pool-size", "2", "--sandbox=required", "--memory-limit", "64M", "--pids-limit", "256", "--nofile", "128"}
	d := startDispatcher(t, args...)
	resp, body := d.get("/whoami")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "hostname=sandbox") || !strings.Contains(body, "seccomp=2") {
		t.Fatalf("GET /whoami: %d\n%s", resp.StatusCode, body)
	}
	resp, body = d.get("/alloc?mb=512")
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Dispatcher-Error") != "true" {
		t.Errorf("memory bomb: %d %q, want a dispatcher 502", resp.StatusCode, body)
	}
	d.waitLog("worker failed during the request", "out of memory")
	d.waitLog("worker killed: out of memory")
	if resp, body := d.get("/whoami"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /whoami after the bomb: %d %s", resp.StatusCode, body)
	}

	d.signal(syscall.SIGKILL)
	d.waitExit(exitWait)
	for _, pid := range d.workers { // each its sandbox's init
		if !waitGone(pid, goneWait) {
			t.Errorf("worker %d outlived the dispatcher's SIGKILL", pid)
		}
	}
	// Its cgroups stayed behind: the next sandbox sweeps them.
	dead := "dispatcher-" + strconv.Itoa(d.cmd.Process.Pid) + "-"
	if left := cgroupsNamed(dead); len(left) == 0 {
		t.Errorf("no cgroup %s* found after the SIGKILL: the test proves nothing", dead)
	}
	next, err := sandbox.New(bin(t, "hostile"), opts)
	if err != nil {
		t.Fatal(err)
	}
	next.Close()
	if left := cgroupsNamed(dead); len(left) > 0 {
		t.Errorf("cgroups of the killed dispatcher not swept: %v", left)
	}
}

// cgroupsNamed lists the cgroup directories (at most four levels down)
// whose name starts with prefix.
func cgroupsNamed(prefix string) []string {
	var found []string
	_ = filepath.WalkDir("/sys/fs/cgroup", func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return nil
		}
		if strings.HasPrefix(e.Name(), prefix) {
			found = append(found, p)
			return filepath.SkipDir
		}
		if strings.Count(p, "/") > 7 {
			return filepath.SkipDir
		}
		return nil
	})
	return found
}

// The dispatcher in shim mode runs the shim from package shim's init, before
// the heavy packages initialise: each sandboxed start pays for the runtime
// and little else. GODEBUG=inittrace=1 lists each package initialised.
func TestShimRunsBeforeHeavyInits(t *testing.T) {
	cmd := exec.Command(bin(t, "dispatcher"), shim.Arg)
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != shim.Failed || !strings.Contains(string(out), "no instructions") {
		t.Fatalf("dispatcher %s without instructions: %v, want exit status %d saying so:\n%s", shim.Arg, err, shim.Failed, out)
	}
	inits := 0
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "init" {
			continue
		}
		inits++
		// The costly initialisers (leaves of the same modules with
		// standard library imports only may run first: microseconds).
		switch f[1] {
		case "google.golang.org/protobuf/reflect/protodesc", "google.golang.org/protobuf/types/descriptorpb",
			"google.golang.org/grpc", "github.com/prometheus/client_golang/prometheus", "github.com/prometheus/procfs",
			"github.com/hashicorp/go-plugin", "github.com/childproc/dispatcher/ipc":
			t.Errorf("%s initialised before the shim ran", f[1])
		}
	}
	if inits == 0 {
		t.Fatalf("no init trace in the output:\n%s", out)
	}
}
