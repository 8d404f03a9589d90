package sandbox_test

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/internal/testbin"
	"github.com/childproc/dispatcher/sdk/node/nodetest"
	"github.com/childproc/dispatcher/workers"
	"github.com/childproc/dispatcher/workers/sandbox"
)

// checkSyscalls checks what the seccomp filter left the hostile worker of
// each system call it tried (GET /syscalls).
func checkSyscalls(t *testing.T, e *env, network bool) {
	t.Helper()
	const (
		enosys   = "function not implemented" // not in the allow list
		eperm    = "operation not permitted"  // arguments refused
		noFamily = "address family not supported"
	)
	want := map[string]string{
		"mount": enosys, "chroot": enosys, "unshare": enosys, "keyctl": enosys, "bpf": enosys,
		"init_module": enosys, "perf_event_open": enosys, "io_uring_setup": enosys, "userfaultfd": enosys,
		"ptrace": enosys, "open_tree_attr": enosys, "unassigned": enosys,
		"personality":      eperm,
		"socket AF_VSOCK":  noFamily,
		"socket AF_PACKET": noFamily,
		"socket AF_UNIX":   "ok",
		// Never more than a Unix socket pair.
		"socketpair AF_INET": noFamily,
		// The network's, with the network only.
		"socket AF_INET":          noFamily,
		"socket AF_INET6":         noFamily,
		"socket AF_NETLINK route": noFamily,
		"socket AF_NETLINK audit": noFamily,
	}
	if runtime.GOARCH == "amd64" {
		want["modify_ldt"] = enosys
	}
	if network {
		want["socket AF_INET"] = "ok"
		want["socket AF_INET6"] = "ok"
		want["socket AF_NETLINK route"] = "ok"
		want["socket AF_NETLINK audit"] = "protocol not supported"
		if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
			want["socket AF_INET6"] = noFamily // the host has no IPv6
		}
	}
	body := e.must("/syscalls")
	seen := 0
	for line := range strings.SplitSeq(strings.TrimSpace(body), "\n") {
		name, got, _ := strings.Cut(line, ": ")
		w, ok := want[name]
		if !ok {
			t.Errorf("/syscalls: unexpected line %q", line)
			continue
		}
		seen++
		if !strings.Contains(got, w) {
			t.Errorf("%s: %s, want %q", name, got, w)
		}
	}
	if seen != len(want) {
		t.Errorf("/syscalls reported %d of the %d calls expected:\n%s", seen, len(want), body)
	}
}

// Real workers serve requests under the seccomp filter: Go built without
// cgo (the runtime's own system calls), Go with cgo (glibc, its dynamic
// loader and threads), and Node.js (libuv, V8), an example and the sdk's
// test handlers.
func TestSeccompWorkers(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	build := func(t *testing.T, cgo string) string {
		t.Helper()
		if cgo == "1" {
			if _, err := exec.LookPath("gcc"); err != nil {
				t.Skip("no C compiler for a cgo build")
			}
		}
		out := filepath.Join(dir, "hello-cgo"+cgo)
		cmd := exec.Command("go", "build", "-o", out, testbin.Module+"/testdata/workers/hello")
		cmd.Dir = testbin.Root()
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, b)
		}
		f, err := elf.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		dynamic := false
		for _, p := range f.Progs {
			dynamic = dynamic || p.Type == elf.PT_INTERP
		}
		if dynamic != (cgo == "1") {
			t.Fatalf("CGO_ENABLED=%s built a binary that is dynamic=%v", cgo, dynamic)
		}
		return out
	}
	// node runs script, with the npm packages of the sdk and of pkgs.
	node := func(t *testing.T, script string, pkgs ...string) workers.Config {
		t.Helper()
		for _, dir := range append([]string{nodetest.SDKDir()}, pkgs...) {
			nodetest.Install(t, dir)
		}
		return workers.Config{Path: nodetest.Node(t), Args: []string{script}, Env: append(workers.MinimalEnv(), nodetest.Env(t)...)}
	}
	root := testbin.Root()
	for _, tc := range []struct {
		name string
		cfg  func(t *testing.T) workers.Config
		get  map[string]string // path: what the answer holds
	}{
		{"go static", func(t *testing.T) workers.Config { return workers.Config{Path: build(t, "0")} },
			map[string]string{"/": "hello world"}},
		{"go cgo", func(t *testing.T) workers.Config { return workers.Config{Path: build(t, "1")} },
			map[string]string{"/": "hello world"}},
		{"node example", func(t *testing.T) workers.Config {
			return node(t, filepath.Join(root, "examples", "node-hello", "server.js"), filepath.Join(root, "examples", "node-hello"))
		}, map[string]string{"/": "hello world"}},
		{"node sdk handlers", func(t *testing.T) workers.Config {
			return node(t, filepath.Join(nodetest.SDKDir(), "test", "fixtures", "handlers.js"))
		}, map[string]string{"/info": "", "/big": "", "/stream": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg(t)
			cfg.Size = 2
			for _, network := range []bool{false, true} {
				e := start(t, sandbox.Options{Namespaces: true, AllowNetwork: network}, cfg)
				for range 3 {
					for path, want := range tc.get {
						if body := e.must(path); !strings.Contains(body, want) {
							t.Errorf("network=%v GET %s: %q, want %q in it", network, path, body, want)
						}
					}
				}
			}
		})
	}
}
