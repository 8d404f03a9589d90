package sdktest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// builds remembers, for the life of the process, the binary built from each
// package: a test binary builds a worker once however many tests use it.
var builds = struct {
	mu sync.Mutex
	m  map[string]*build
}{m: make(map[string]*build)}

type build struct {
	done chan struct{} // closed once path and err are set
	path string
	err  error
}

// Build returns the path of the worker binary built from the main package
// pkg, building it with `go build` the first time this test binary asks for
// it. pkg is what `go build` accepts, resolved from the test's working
// directory (its package directory): "." for the package under test, a
// relative path such as "./cmd/handler", or an import path. A build failure
// fails the test with the compiler's output.
func Build(tb testing.TB, pkg string) string {
	tb.Helper()
	path, err := Binary(pkg)
	if err != nil {
		tb.Fatal(err)
	}
	return path
}

// Binary is Build for code without a testing.TB (a TestMain, an example):
// it returns the binary's path or the build error.
//
// Binaries are kept in a directory of the user's cache directory (or of the
// temporary directory), one per package and working directory, and each
// process builds its own copy once before using it: a later run never uses a
// stale binary, and concurrent test binaries never see a half-written one.
func Binary(pkg string) (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	key := wd + "\x00" + pkg
	builds.mu.Lock()
	b, ok := builds.m[key]
	if !ok {
		b = &build{done: make(chan struct{})}
		builds.m[key] = b
	}
	builds.mu.Unlock()
	if !ok {
		b.path, b.err = goBuild(wd, pkg)
		close(b.done)
	}
	<-b.done
	return b.path, b.err
}

// goBuild builds pkg into a fresh directory, then moves the binary to its
// place in the cache with a rename, which never disturbs a process running
// the previous file.
func goBuild(wd, pkg string) (string, error) {
	goTool, err := goCommand()
	if err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	sum := sha256.Sum256([]byte(wd + "\x00" + pkg))
	dir := filepath.Join(cacheDir(), hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command(goTool, "build", "-o", tmp+string(os.PathSeparator), pkg)
	cmd.Dir = wd
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("sdktest: go build %s (in %s): %v\n%s", pkg, wd, err, strings.TrimSpace(string(out)))
	}
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	if len(entries) != 1 || !entries[0].Type().IsRegular() {
		return "", fmt.Errorf("sdktest: go build %s produced no single binary: is it one main package?", pkg)
	}
	path := filepath.Join(dir, entries[0].Name())
	if err := os.Rename(filepath.Join(tmp, entries[0].Name()), path); err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	return path, nil
}

func cacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "dispatcher-sdktest")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("dispatcher-sdktest-%d", os.Getuid()))
}

// goCommand finds the go tool: on PATH, else in $GOROOT/bin.
func goCommand() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("the go command is neither on PATH nor in $GOROOT/bin")
}
