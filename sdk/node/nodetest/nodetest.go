// Package nodetest prepares tests that run Node.js workers under a real
// dispatcher: it finds node (a test is skipped, saying so, only where node
// is absent), installs a package's npm dependencies from its lockfile when
// they are missing or older than it, and gives the environment in which a
// worker script's "#!/usr/bin/env node" line finds node.
//
// It owns nothing of the sdk or the protocol; like sdktest, only tests
// import it.
package nodetest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// MinMajor is the oldest Node.js major version the sdk supports.
const MinMajor = 20

// minimalPath is the PATH a dispatcher gives its workers
// (workers.MinimalEnv).
const minimalPath = "/usr/local/bin:/usr/bin:/bin"

var (
	findOnce sync.Once
	nodePath string
	findErr  error
	absent   bool
)

// Node returns the path of the node binary in PATH. Without one, the test
// is skipped with a message saying so; a node older than MinMajor fails
// it.
func Node(tb testing.TB) string {
	tb.Helper()
	findOnce.Do(find)
	if absent {
		tb.Skipf("nodetest: node is not installed (not found in PATH): the Node.js sdk's tests need Node.js %d or later", MinMajor)
	}
	if findErr != nil {
		tb.Fatal(findErr)
	}
	return nodePath
}

func find() {
	p, err := exec.LookPath("node")
	if err != nil {
		absent = true
		return
	}
	out, err := exec.Command(p, "--version").Output()
	if err != nil {
		findErr = fmt.Errorf("nodetest: %s --version: %v", p, err)
		return
	}
	v := strings.TrimSpace(string(out))
	major, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(v, "v"), ".", 2)[0])
	if err != nil || major < MinMajor {
		findErr = fmt.Errorf("nodetest: %s is Node.js %s; the sdk needs %d or later", p, v, MinMajor)
		return
	}
	nodePath = p
}

// Env returns the environment entries (for sdktest.Options.Env) with which
// a worker started by a dispatcher finds the node that Node found: none
// if it is in the dispatcher's minimal PATH.
func Env(tb testing.TB) []string {
	tb.Helper()
	dir := filepath.Dir(Node(tb))
	for _, d := range filepath.SplitList(minimalPath) {
		if d == dir {
			return nil
		}
	}
	return []string{"PATH=" + dir + ":" + minimalPath}
}

// SDKDir returns the directory of the Node.js sdk package (sdk/node).
func SDKDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// Install runs `npm ci` in dir, the directory of a package.json and its
// package-lock.json, unless its node_modules is at least as new as the
// lockfile. Test binaries running at once install a directory one at a
// time. A failure fails the test with npm's output.
func Install(tb testing.TB, dir string) {
	tb.Helper()
	Node(tb)
	abs, err := filepath.Abs(dir)
	if err != nil {
		tb.Fatal(err)
	}
	sum := sha256.Sum256([]byte(abs))
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "nodetest-"+hex.EncodeToString(sum[:8])+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		tb.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	want, err := os.Stat(filepath.Join(abs, "package-lock.json"))
	if err != nil {
		tb.Fatalf("nodetest: %v", err)
	}
	if got, err := os.Stat(filepath.Join(abs, "node_modules", ".package-lock.json")); err == nil && !got.ModTime().Before(want.ModTime()) {
		return
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		tb.Fatalf("nodetest: npm is not installed, and %s has no node_modules: %v", abs, err)
	}
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = abs
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("nodetest: npm ci in %s: %v\n%s", abs, err, out)
	}
}
