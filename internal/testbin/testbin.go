// Package testbin builds the project's test worker binaries (and other main
// packages) once per test binary, for use from TestMain.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Module is this module's import path.
const Module = "github.com/childproc/dispatcher"

// Root returns the module's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Build compiles the given packages (import paths relative to the module,
// such as "testdata/workers/hello" or "cmd/dispatcher") into dir with a
// single go build, and returns the binary of each by its base name.
func Build(dir string, pkgs ...string) (map[string]string, error) {
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	bins := make(map[string]string, len(pkgs))
	for _, p := range pkgs {
		args = append(args, Module+"/"+p)
		bins[filepath.Base(p)] = filepath.Join(dir, filepath.Base(p))
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = Root()
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bins, nil
}

// Workers lists every test worker under testdata/workers.
func Workers() []string {
	entries, err := os.ReadDir(filepath.Join(Root(), "testdata", "workers"))
	if err != nil {
		panic(err)
	}
	var pkgs []string
	for _, e := range entries {
		if e.IsDir() {
			pkgs = append(pkgs, "testdata/workers/"+e.Name())
		}
	}
	return pkgs
}

// Run is the body of a TestMain: it builds pkgs into a temporary directory,
// stores their paths in *bins, runs the tests, removes the directory and
// returns the exit code for os.Exit.
//
// The fuzzing engine runs the test binary again as worker processes, each
// running TestMain: they inherit the directory through EnvDir and use its
// binaries instead of building them again (seconds per process, which a
// short fuzz run would otherwise spend building).
func Run(m *testing.M, bins *map[string]string, pkgs ...string) int {
	if dir := os.Getenv(EnvDir); dir != "" {
		if b, ok := built(dir, pkgs); ok {
			*bins = b
			return m.Run()
		}
	}
	dir, err := os.MkdirTemp("", "testbin-")
	if err == nil {
		// Searchable: workers may run as another user (a sandbox's root
		// is nobody outside).
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Executable by every user: a dispatcher running as root runs its
	// workers as nobody.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if *bins, err = Build(dir, pkgs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv(EnvDir, dir)
	return m.Run()
}

// EnvDir names the directory of the binaries a test process built, for the
// processes it starts (fuzz workers) to reuse.
const EnvDir = "TESTBIN_DIR"

// built returns the binaries of pkgs in dir if all of them are there.
func built(dir string, pkgs []string) (map[string]string, bool) {
	bins := make(map[string]string, len(pkgs))
	for _, p := range pkgs {
		path := filepath.Join(dir, filepath.Base(p))
		if fi, err := os.Stat(path); err != nil || fi.IsDir() {
			return nil, false
		}
		bins[filepath.Base(p)] = path
	}
	return bins, true
}
