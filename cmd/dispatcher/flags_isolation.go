package main

// Flags that confine the workers (README, "Security model").

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/childproc/dispatcher/workers"
	"github.com/childproc/dispatcher/workers/sandbox"
	"github.com/sirupsen/logrus"
)

// Workers that need more than the default confinement start through this
// binary in shim mode: package workers/sandbox/shim, linked through
// sandbox, confines the process from its init and starts the worker.

// minNoFile is the fewest open files a worker gets on top of its slots:
// stdio, the Go runtime's poller, go-plugin's socket and pipes.
const minNoFile = 32

type isolationFlags struct {
	env          []string // KEY=VALUE, in order
	envFiles     []string // --env-file paths, in order
	fileEnv      []string // KEY=VALUE read from envFiles by check
	passEnv      []string
	user         string
	memoryLimit  int64
	pidsLimit    int64
	cpuLimit     float64
	pidsSet      bool // --pids-limit given (else DefaultPidsLimit in the sandbox)
	nofile       uint64
	sandbox      sandboxMode
	binds        []sandbox.Bind
	tmpSize      int64
	allowNetwork bool
	checksum     string
}

// sandboxMode is --sandbox: off, on (where the machine can set it up, the
// default) or required. A bare --sandbox is on.
type sandboxMode string

const (
	sandboxOn       sandboxMode = "on"
	sandboxOff      sandboxMode = "off"
	sandboxRequired sandboxMode = "required"
)

func (m *sandboxMode) String() string {
	if m == nil || *m == "" {
		return string(sandboxOn)
	}
	return string(*m)
}

func (m *sandboxMode) Set(s string) error {
	switch strings.ToLower(s) {
	case "on", "true", "yes", "1":
		*m = sandboxOn
	case "off", "false", "no", "0":
		*m = sandboxOff
	case "required":
		*m = sandboxRequired
	default:
		return errors.New("want off, on or required")
	}
	return nil
}

func (m *sandboxMode) IsBoolFlag() bool { return true }

func (m *sandboxMode) Get() any { return m.String() }

func (f *isolationFlags) register(fs *flag.FlagSet) {
	fs.Func("env", "set `KEY=VALUE` in the workers' environment (repeatable)", func(s string) error {
		k, _, ok := strings.Cut(s, "=")
		if !ok {
			return errors.New("want KEY=VALUE")
		}
		if err := workers.CheckEnvKey(k); err != nil {
			return err
		}
		f.env = append(f.env, s)
		return nil
	})
	fs.Func("env-file", "set the workers' variables from `FILE`: KEY=VALUE lines, # comments (repeatable; read at start and at each reload; values stay off the command line)", func(s string) error {
		f.envFiles = append(f.envFiles, s)
		return nil
	})
	fs.Func("pass-env", "pass the dispatcher's variable `KEY` to the workers (repeatable)", func(s string) error {
		if err := workers.CheckEnvKey(s); err != nil {
			return err
		}
		f.passEnv = append(f.passEnv, s)
		return nil
	})
	fs.StringVar(&f.user, "user", "", "run workers as `USER[:GROUP]` (names or numbers; the dispatcher must run as root; default: nobody when it runs as root, else its own user; root only if named)")
	fs.Func("memory-limit", "memory cap of each worker and its descendants, e.g. 256M or 1G (`SIZE`; cgroup; default none)", func(s string) error {
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		f.memoryLimit = n
		return nil
	})
	fs.Func("pids-limit", fmt.Sprintf("cap on the tasks (processes and threads) of each worker and its descendants (cgroup; 0: none; default %d in the sandbox, else none)", sandbox.DefaultPidsLimit), func(s string) error {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return errors.New("want a number of tasks")
		}
		f.pidsLimit, f.pidsSet = n, true
		return nil
	})
	fs.Float64Var(&f.cpuLimit, "cpu-limit", 0, "CPU cap of each worker and its descendants, in `CPUS` (0.5: half a core; cgroup; 0: none)")
	fs.Uint64Var(&f.nofile, "nofile", 0, "open files limit of each worker process (RLIMIT_NOFILE; 0: inherited)")
	f.sandbox = sandboxOn
	fs.Var(&f.sandbox, "sandbox", "run each worker in a sandbox: a user namespace (root in it is an unprivileged user outside), its own PID, mount, IPC, UTS, cgroup and network namespaces, a minimal read-only root, a private /tmp, no capabilities, a seccomp filter. --sandbox=on (the default): where the machine can set it up, else the dispatcher says why and runs without it; --sandbox=required: refuse to start without it; --sandbox=off")
	fs.Func("sandbox-bind", "bind `SRC[:DST]` read-only into the sandbox, a file or a directory (repeatable)", func(s string) error {
		b, err := sandbox.ParseBind(s)
		if err != nil {
			return err
		}
		f.binds = append(f.binds, b)
		return nil
	})
	f.tmpSize = sandbox.DefaultTmpSize
	fs.Func("tmp-size", fmt.Sprintf("size of the sandbox's private /tmp and /dev/shm, charged to the worker's memory (`SIZE`; default %dM)", sandbox.DefaultTmpSize>>20), func(s string) error {
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		f.tmpSize = n
		return nil
	})
	fs.BoolVar(&f.allowNetwork, "allow-network", false, "in the sandbox, keep the host's network")
	fs.StringVar(&f.checksum, "checksum", "", "refuse to run a worker binary whose digest is not `sha256:HEX`")
}

// check validates the values that need no look at the machine.
func (f *isolationFlags) check(concurrency int) error {
	switch {
	case f.pidsLimit < 0:
		return usageErrorf("--pids-limit %d: must not be negative", f.pidsLimit)
	case f.cpuLimit < 0 || math.IsNaN(f.cpuLimit) || math.IsInf(f.cpuLimit, 0) || f.cpuLimit > 4096:
		return usageErrorf("--cpu-limit %v: must be a number of CPUs between 0 and 4096", f.cpuLimit)
	case f.cpuLimit > 0 && f.cpuLimit < 0.01:
		return usageErrorf("--cpu-limit %v: must be at least 0.01", f.cpuLimit)
	case f.nofile > 0 && f.nofile < uint64(minNoFile+concurrency):
		return usageErrorf("--nofile %d: must be at least %d (%d + --concurrency)", f.nofile, minNoFile+concurrency, minNoFile)
	case f.allowNetwork && f.sandbox == sandboxOff:
		return usageErrorf("--allow-network: only meaningful with the sandbox (not with --sandbox=off)")
	case len(f.binds) > 0 && f.sandbox == sandboxOff:
		return usageErrorf("--sandbox-bind: only meaningful with the sandbox (not with --sandbox=off)")
	case strings.HasPrefix(f.user, ":") || strings.HasSuffix(f.user, ":"):
		return usageErrorf("--user %q: want USER[:GROUP]", f.user)
	}
	f.fileEnv = nil
	for _, path := range f.envFiles {
		env, err := readEnvFile(path)
		if err != nil {
			return err
		}
		f.fileEnv = append(f.fileEnv, env...)
	}
	if f.checksum != "" {
		if err := sandbox.ParseChecksum(f.checksum); err != nil {
			return usageErrorf("--checksum %q: %v", f.checksum, err)
		}
	}
	return nil
}

// parseSize reads a --memory-limit: a SIZE as parseByteSize reads it, at
// least 1M.
func parseSize(s string) (int64, error) {
	n, err := parseByteSize(s) // the syntax of every SIZE flag
	if err != nil || n <= 0 {
		return 0, errors.New("want a positive size such as 268435456, 512K, 256M or 1G")
	}
	if n < 1<<20 {
		return 0, errors.New("must be at least 1M")
	}
	return n, nil
}

// isolation is what setup made: the workers' environment and sandbox.
type isolation struct {
	env     []string
	sandbox workers.Sandbox
	close   func()
}

// setup builds the workers' environment and sandbox. A combination the
// machine cannot honour is a usage error naming the flag and what is
// missing.
func (f *isolationFlags) setup(path string, log *logrus.Entry, warned *sync.Map) (*isolation, error) {
	// Each fallback is logged once per process, not per function or reload.
	warnOnce := func(log *logrus.Entry, msg string) {
		if _, dup := warned.LoadOrStore(msg, true); !dup {
			log.Warn(msg)
		}
	}
	env := workers.MinimalEnv()
	for _, k := range f.passEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = workers.SetEnv(env, k, v)
		} else {
			log.WithField("variable", k).Warn("--pass-env: the dispatcher has no such variable")
		}
	}
	for _, kv := range append(f.fileEnv, f.env...) { // --env overrides the files
		k, v, _ := strings.Cut(kv, "=")
		env = workers.SetEnv(env, k, v)
	}
	userSpec, defaulted := f.workerUser()
	// Without the sandbox the worker's user must reach the binary; in it,
	// the dispatcher hands the binary in.
	checkUser := func() error {
		if userSpec == "" {
			return nil
		}
		return checkUserCanExecute(path, userSpec, defaulted)
	}
	opts := sandbox.Options{
		User:        userSpec,
		MemoryLimit: f.memoryLimit,
		PidsLimit:   f.pidsLimit,
		CPULimit:    f.cpuLimit,
		NoFile:      f.nofile,
		Checksum:    f.checksum,
	}
	if f.sandbox != sandboxOff {
		opts.Namespaces, opts.AllowNetwork, opts.Binds, opts.TmpSize = true, f.allowNetwork, f.binds, f.tmpSize
		if !f.pidsSet {
			opts.PidsLimit = sandbox.DefaultPidsLimit
		}
	} else if err := checkUser(); err != nil {
		return nil, err
	}
	sb, err := sandbox.New(path, opts)
	// On by default: where the machine cannot set the sandbox up (or the
	// default tasks limit), the workers run without it, and the log says
	// why, once.
	var ue *sandbox.UnsupportedError
	// The default tasks limit is dropped the same way under
	// --sandbox=required, which asks for the sandbox, not for the limit.
	for f.sandbox != sandboxOff && errors.As(err, &ue) {
		switch {
		case ue.Option == "PidsLimit" && !f.pidsSet && opts.PidsLimit > 0:
			opts.PidsLimit = 0
			warnOnce(log, "workers' sandbox: no default limit on tasks: "+ue.Missing)
		case ue.Option == "Namespaces" && f.sandbox == sandboxOn:
			opts.Namespaces, opts.AllowNetwork, opts.Binds, opts.TmpSize = false, false, nil, 0
			if !f.pidsSet {
				opts.PidsLimit = 0
			}
			warnOnce(log, "workers' sandbox: it cannot be set up on this machine, so workers run without it (see the \"workers confined\" line; --sandbox=required refuses to start instead): "+ue.Missing)
			if err := checkUser(); err != nil {
				return nil, err
			}
		default:
			ue = nil
		}
		if ue == nil {
			break
		}
		sb, err = sandbox.New(path, opts)
	}
	if err != nil {
		var ce *sandbox.ChecksumError
		switch {
		case errors.As(err, &ue):
			return nil, usageErrorf("%s: this machine cannot honour it: %s", flagOf(ue.Option), ue.Missing)
		case errors.As(err, &ce):
			return nil, usageErrorf("--checksum: %v", ce)
		}
		return nil, fmt.Errorf("workers' sandbox: %w", err)
	}
	for _, w := range sb.Warnings() {
		log.Warn("workers' sandbox: " + w)
	}
	log.WithField("confinement", strings.Join(sb.Notes(), "; ")).Info("workers confined")
	return &isolation{env: env, sandbox: sb, close: func() {
		if err := sb.Close(); err != nil {
			log.WithError(err).Warn("removing the workers' sandbox")
		}
	}}, nil
}

func flagOf(option string) string {
	switch option {
	case "User":
		return "--user"
	case "MemoryLimit":
		return "--memory-limit"
	case "PidsLimit":
		return "--pids-limit"
	case "CPULimit":
		return "--cpu-limit"
	case "NoFile":
		return "--nofile"
	case "Namespaces":
		return "--sandbox"
	case "Binds":
		return "--sandbox-bind"
	}
	return option
}
