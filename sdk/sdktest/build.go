package sdktest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// builds remembers, for the life of the process, the binary built from each
// package: a test binary builds a worker once however many tests use it.
var builds = struct {
	mu sync.Mutex
	m  map[string]*built
}{m: make(map[string]*built)}

type built struct {
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
	return buildOnce(wd+"\x00"+pkg, func() (string, error) { return goBuild(wd, pkg, nil) })
}

// buildOnce returns what build returned the first time this process asked
// for key, calling it then; concurrent callers wait for that first call.
func buildOnce(key string, build func() (string, error)) (string, error) {
	builds.mu.Lock()
	b, ok := builds.m[key]
	if !ok {
		b = &built{done: make(chan struct{})}
		builds.m[key] = b
	}
	builds.mu.Unlock()
	if !ok {
		b.path, b.err = build()
		close(b.done)
	}
	<-b.done
	return b.path, b.err
}

// Dispatcher returns the path of the dispatcher binary that Start runs:
// $SDKTEST_DISPATCHER if set, else the command cmd/dispatcher of the module
// that provides this package, built the first time this test binary asks
// for it. That module is the one the test's go.mod requires, at its
// version, or the directory a replace directive or go.work gives for it.
// The build happens in that module, with its own go.sum: its dependencies
// (go-plugin, gRPC) come from the module cache or proxy without entering
// the test's module.
func Dispatcher() (string, error) {
	if p := os.Getenv("SDKTEST_DISPATCHER"); p != "" {
		return p, nil
	}
	return buildOnce(dispatcherKey, buildDispatcher)
}

// dispatcherKey is the dispatcher's entry in builds (no package directory
// has a NUL in its name).
const dispatcherKey = "\x00dispatcher"

// modulePath is the path of the module holding this package.
var modulePath = strings.TrimSuffix(reflect.TypeFor[Options]().PkgPath(), "/sdk/sdktest")

func buildDispatcher() (string, error) {
	goTool, err := goCommand()
	if err != nil {
		return "", fmt.Errorf("sdktest: build the dispatcher: %w; or %w", err, errNoDispatcher)
	}
	cmd := exec.Command(goTool, "list", "-m", "-f", "{{.Dir}}", modulePath)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		return "", fmt.Errorf("sdktest: find the source of %s (go list -m: %v %s); or %w", modulePath, err, strings.TrimSpace(stderr.String()), errNoDispatcher)
	}
	// The module is the main one of this build, whatever the test's
	// workspace or flags; its directory may be read-only (the module
	// cache), so go.mod is never updated.
	env := append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")

	// go run keeps the executables it builds in the build cache, and -exec
	// echo names the one it would run: a later test binary, or one running
	// beside this one, reuses it unless a source changed. The lock makes
	// concurrent test binaries build it once. Its first build runs from a
	// temporary directory, removed at once: the second names the cached one.
	unlock, err := lockFile(filepath.Join(cacheDir(), "dispatcher.lock"))
	if err != nil {
		return "", fmt.Errorf("sdktest: build the dispatcher: %w", err)
	}
	defer unlock()
	for range 2 {
		cmd := exec.Command(goTool, "run", "-exec", "echo", "./cmd/dispatcher")
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("sdktest: build the dispatcher (go run ./cmd/dispatcher in %s): %v\n%s", dir, err, strings.TrimSpace(string(out)))
		}
		if path := strings.TrimSpace(string(out)); filepath.IsAbs(path) {
			if _, err := os.Stat(path); err == nil {
				return path, nil
			}
		}
	}
	return goBuild(dir, "./cmd/dispatcher", env)
}

// lockFile takes an exclusive lock on the file at path, made if need be,
// and returns its release.
func lockFile(path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// goBuild builds pkg from wd, in environment env (nil: this process's), into a
// fresh directory, then moves the binary to its place in the cache with a
// rename, which never disturbs a process running the previous file.
func goBuild(wd, pkg string, env []string) (string, error) {
	goTool, err := goCommand()
	if err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	sum := sha256.Sum256([]byte(wd + "\x00" + pkg))
	dir := filepath.Join(cacheDir(), hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	if err := checkOwnDir(cacheDir()); err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", fmt.Errorf("sdktest: build %q: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command(goTool, "build", "-o", tmp+string(os.PathSeparator), pkg)
	cmd.Dir = wd
	cmd.Env = env
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
	if os.Geteuid() == 0 {
		// A dispatcher running as root runs the workers as nobody, who
		// cannot reach root's home.
		return filepath.Join(os.TempDir(), "dispatcher-sdktest-0")
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "dispatcher-sdktest")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("dispatcher-sdktest-%d", os.Getuid()))
}

// checkOwnDir refuses a cache directory that another user made or may
// write (in a shared temporary directory, someone may have made it first).
func checkOwnDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is not a directory of this user's that only it may write: remove it", dir)
	}
	return nil
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

// TempDir returns a new directory, removed when the test ends, that the
// workers may read and write whoever they run as (a dispatcher running as
// root runs them as nobody, and tb.TempDir is private to the test's user):
// mode 1777, below a directory others may search.
func TempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "sdktest-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil {
		tb.Fatal(err)
	}
	return dir
}
