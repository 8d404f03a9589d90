// Package deploy_test checks the deployment files in this directory against
// the dispatcher they deploy: the Kubernetes manifests (probe paths and
// ports, the Service's target, the termination timeline, the resources of
// the pool, a security context the flags can run in), the systemd unit (its
// stop timeline and the sandboxing directives that the flags rule out, and
// `systemd-analyze verify`), and that every flag they pass is one that
// `dispatcher --help` lists.
package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Budgets the checks assume, mirrored in the comments of the files they
// check.
const (
	// workerStopGrace is how long stopping the workers may take after the
	// drain: a graceful quit, then a kill (workers.DefaultStopTimeout).
	workerStopGrace = 5 * time.Second
	// dispatcherMemory is the dispatcher's own share of a pod's memory.
	dispatcherMemory = 64 << 20
	// workerMemory is the per-worker estimate when neither --max-rss nor
	// --memory-limit bounds a worker.
	workerMemory = 64 << 20
	// The defaults of --timeout and --queue-timeout.
	defaultTimeout      = 30 * time.Second
	defaultQueueTimeout = 10 * time.Second
)

// boolFlags are the dispatcher's flags that take no value ("--sandbox", or
// "--sandbox=false"); every other flag takes the next argument.
// TestFlagsExist checks this list against `dispatcher --help` for the flags
// the deployment files use.
var boolFlags = map[string]bool{"sandbox": true, "allow-network": true, "h2c": true, "access-log": true, "watch": true}

// Capabilities (without CAP_) the dispatcher, running as root, uses for a
// flag; found by running it with a reduced bounding set.
var (
	sandboxCaps = []string{"SYS_ADMIN", "SETPCAP"} // namespaces, mounts, sethostname; the workers' bounding set
	netnsCaps   = []string{"NET_ADMIN"}            // --sandbox without --allow-network: the loopback device
	userCaps    = []string{"SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE", "KILL"}
	// cgroupLimitFlags need a writable cgroup file system.
	cgroupLimitFlags = []string{"memory-limit", "pids-limit", "cpu-limit"}
)

// requiredCaps returns the capabilities cl needs, or nil if it needs no root.
func requiredCaps(cl cmdline) []string {
	var caps []string
	if cl.on("sandbox") {
		caps = append(caps, sandboxCaps...)
		if !cl.on("allow-network") {
			caps = append(caps, netnsCaps...)
		}
	}
	if cl.has("user") {
		caps = append(caps, userCaps...)
	}
	return caps
}

// cmdline is a dispatcher command line: its flags, up to a "--" after which
// the arguments are the worker's.
type cmdline struct {
	flags  map[string]string // the last value of each
	names  []string          // in order, repeats included
	errors []string
}

func parseCmdline(args []string) cmdline {
	return parseCmdlineWith(args, func(name string) bool { return boolFlags[name] })
}

// parseCmdlineWith parses args, knowing which flags are booleans.
func parseCmdlineWith(args []string, isBool func(string) bool) cmdline {
	cl := cmdline{flags: map[string]string{}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			cl.errors = append(cl.errors, fmt.Sprintf("argument %q is not a flag", a))
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasValue {
			if isBool(name) {
				value = "true"
			} else if i+1 < len(args) {
				i++
				value = args[i]
			} else {
				cl.errors = append(cl.errors, fmt.Sprintf("--%s has no value", name))
			}
		}
		cl.flags[name] = value
		cl.names = append(cl.names, name)
	}
	return cl
}

func (cl cmdline) has(name string) bool { _, ok := cl.flags[name]; return ok }

func (cl cmdline) on(name string) bool {
	v, ok := cl.flags[name]
	b, err := strconv.ParseBool(v)
	return ok && err == nil && b
}

// duration returns the value of a duration flag, or def.
func (cl cmdline) duration(name string, def time.Duration) (time.Duration, error) {
	v, ok := cl.flags[name]
	if !ok {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("--%s %q: %v", name, v, err)
	}
	return d, nil
}

// port returns the port of an address flag.
func (cl cmdline) port(name string) (host string, port int, err error) {
	v, ok := cl.flags[name]
	if !ok {
		return "", 0, fmt.Errorf("--%s is not set", name)
	}
	host, p, err := net.SplitHostPort(v)
	if err != nil {
		return "", 0, fmt.Errorf("--%s %q: %v", name, v, err)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("--%s %q: want a numeric port", name, v)
	}
	return host, port, nil
}

// poolSize is the most workers the command line runs at once (not counting
// a replacement starting for a recycled one).
func (cl cmdline) poolSize() (int, error) {
	name := "pool-size"
	if m := cl.flags["mode"]; m == "ondemand" || m == "oneshot" {
		name = "max-workers"
	}
	v, ok := cl.flags[name]
	if !ok {
		return 0, fmt.Errorf("--%s is not set (its default is the machine's CPU count, unknown here)", name)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("--%s %q: want a positive number", name, v)
	}
	return n, nil
}

// parseSize parses the dispatcher's SIZE: a number with an optional binary
// unit (K, M, G, T; KiB and KB mean the same).
func parseSize(s string) (int64, error) {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.ToUpper(s[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: bad number", s)
	}
	shift := map[string]uint{"": 0, "B": 0, "K": 10, "M": 20, "G": 30, "T": 40}
	u := strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	sh, ok := shift[u]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit", s)
	}
	return int64(f * float64(uint64(1)<<sh)), nil
}

// Every flag the deployment files pass, against `dispatcher --help`.

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// dispatcherBinary builds ./cmd/dispatcher once per test process.
func dispatcherBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		root, err := filepath.Abs("..")
		if err != nil {
			build.err = err
			return
		}
		// Read the command's sources, so that `go test` caching sees a
		// change to its flags as a reason to run again.
		srcs, _ := filepath.Glob(filepath.Join(root, "cmd", "dispatcher", "*.go"))
		for _, s := range append(srcs, filepath.Join(root, "go.mod")) {
			_, _ = os.ReadFile(s)
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			build.err = fmt.Errorf("no go tool in PATH: %v", err)
			return
		}
		if build.dir, err = os.MkdirTemp("", "deploy-test-"); err != nil {
			build.err = err
			return
		}
		build.bin = filepath.Join(build.dir, "dispatcher")
		cmd := exec.Command(goTool, "build", "-o", build.bin, "./cmd/dispatcher")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/dispatcher: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

// helpFlags parses the flag list of `dispatcher --help`: the flag package's
// "  -name type" lines (or "  --name TYPE"), where a boolean flag has no
// type. It returns whether each flag takes a value.
func helpFlags(help string) map[string]bool {
	re := regexp.MustCompile(`(?m)^ {1,4}--?([a-z0-9][a-z0-9-]*)([ =]\S.*)?$`)
	flags := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(help, -1) {
		flags[m[1]] = strings.TrimSpace(m[2]) != ""
	}
	return flags
}

// deployedCmdlines returns every dispatcher command line in the deployment
// files, by where it comes from.
func deployedCmdlines(t *testing.T) map[string][]string {
	t.Helper()
	out := kubernetesArgs(t)
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CMD (\[.*\])\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("Dockerfile: no CMD [...]")
	}
	var cmd []string
	if err := json.Unmarshal(m[1], &cmd); err != nil {
		t.Fatalf("Dockerfile CMD: %v", err)
	}
	out["Dockerfile CMD"] = cmd
	for _, cfg := range systemdConfigs {
		args, err := loadUnit(t, cfg.dropIns).execStart()
		if err != nil {
			t.Fatalf("%s: %v", cfg.name, err)
		}
		out[cfg.name] = args[1:]
	}
	return out
}

func TestFlagsExist(t *testing.T) {
	cmdlines := deployedCmdlines(t)
	bin := dispatcherBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	help, err := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("dispatcher --help: %v\n%s", err, help)
	}
	known := helpFlags(string(help))
	if len(known) < 10 || !known["workers"] || !known["listen"] || known["sandbox"] {
		t.Fatalf("could not read the flags of dispatcher --help (found %v):\n%s", known, help)
	}
	checkFlags(t, cmdlines, known)
}

// checkFlags checks cmdlines against the flags of --help (name: whether it
// takes a value).
func checkFlags(t *testing.T, cmdlines map[string][]string, known map[string]bool) {
	t.Helper()
	for _, w := range slices.Sorted(maps.Keys(cmdlines)) {
		args := cmdlines[w]
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			args = args[1:] // a command's binary
		}
		cl := parseCmdlineWith(args, func(name string) bool {
			takesValue, ok := known[name]
			return ok && !takesValue
		})
		for _, e := range cl.errors {
			t.Errorf("%s: %s", w, e)
		}
		seen := map[string]bool{}
		for _, name := range cl.names {
			takesValue, ok := known[name]
			switch {
			case seen[name]:
			case !ok:
				t.Errorf("%s passes --%s, which `dispatcher --help` does not list", w, name)
			case takesValue == boolFlags[name]:
				t.Errorf("%s passes --%s: boolFlags in deploy_test.go says it takes %s value, --help the opposite",
					w, name, map[bool]string{true: "no", false: "a"}[boolFlags[name]])
			}
			seen[name] = true
		}
	}
}
