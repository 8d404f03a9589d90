package workers

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/sirupsen/logrus"
)

// Defaults for Config fields left at their zero value.
const (
	DefaultTimeout      = 30 * time.Second
	DefaultStartTimeout = 10 * time.Second
	DefaultStopTimeout  = 5 * time.Second
	DefaultCancelGrace  = 5 * time.Second
	DefaultPipeline     = 4
)

// Config describes one function: a worker binary and how many of its
// processes to run. The zero value of every field but Path means the default
// it documents.
type Config struct {
	// Path is the worker executable. Required.
	Path string
	// Args are extra arguments passed to the worker.
	Args []string
	// Env is the worker's whole environment ("KEY=value"). Nothing of the
	// dispatcher's own environment is inherited. If nil, MinimalEnv(). Unless
	// it sets GOMAXPROCS, GOMAXPROCS=min(Concurrency, CPUs) is added: a Go
	// worker serving one request at a time runs twice as fast on one P
	// (no cross-thread hand-offs between its slot reader and the handler).
	Env []string
	// Dir is the worker's working directory. If empty, the dispatcher's.
	Dir string
	// Size is the number of worker processes kept running. If zero,
	// runtime.NumCPU().
	Size int
	// Concurrency is the number of requests one worker serves at once. If
	// zero, 1.
	Concurrency int
	// Pipeline is how many requests may be outstanding on one slot: when
	// every slot is busy, a request whose body is complete is queued in a
	// busy worker (the worker runs them one after the other) instead of
	// waiting in the dispatcher, which saves the worker a wake-up per
	// request under load. 1 disables pipelining. If zero, DefaultPipeline.
	Pipeline int
	// Timeout bounds a request from the moment a worker takes it until its
	// response is complete; past it the worker's process group is killed.
	// If zero, DefaultTimeout.
	Timeout time.Duration
	// StartTimeout bounds a worker's start and handshake. If zero,
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// StopTimeout bounds a graceful stop of a worker before it is killed. If
	// zero, DefaultStopTimeout.
	StopTimeout time.Duration
	// CancelGrace is how long a handler may take to return after its client
	// went away before its worker is killed. If zero, DefaultCancelGrace.
	CancelGrace time.Duration
	// MaxFrame bounds every frame read from a worker. If zero,
	// ipc.DefaultMaxFrame.
	MaxFrame int
	// Backoff spaces restarts of workers that keep dying. Zero fields take
	// the defaults documented on Backoff.
	Backoff Backoff
	// SocketDir is where per-worker control socket directories are made. If
	// empty, os.TempDir().
	SocketDir string
	// Sandbox, if set, adjusts each worker's command (identity, limits,
	// namespaces) before it starts. An error fails that start.
	Sandbox func(*exec.Cmd) error
	// Logger receives pool events and worker output. If nil, logrus's
	// standard logger.
	Logger *logrus.Entry
}

// MinimalEnv is the environment workers get by default: a fixed PATH, and
// LANG and TZ if the dispatcher has them.
func MinimalEnv() []string {
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	for _, k := range []string{"LANG", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// withDefaults returns a copy of c with defaults filled in, or an error
// naming the first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.Path == "" {
		return c, errors.New("workers: Config.Path is required")
	}
	if c.Env == nil {
		c.Env = MinimalEnv()
	}
	if c.Size == 0 {
		c.Size = runtime.NumCPU()
	}
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	if c.Pipeline == 0 {
		c.Pipeline = DefaultPipeline
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.CancelGrace == 0 {
		c.CancelGrace = DefaultCancelGrace
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = ipc.DefaultMaxFrame
	}
	if c.SocketDir == "" {
		c.SocketDir = os.TempDir()
	}
	if c.Logger == nil {
		c.Logger = logrus.NewEntry(logrus.StandardLogger())
	}
	c.Backoff = c.Backoff.withDefaults()
	switch {
	case c.Size < 0:
		return c, fmt.Errorf("workers: Size %d is negative", c.Size)
	case c.Concurrency < 0 || c.Concurrency > 1024:
		return c, fmt.Errorf("workers: Concurrency %d outside 1-1024", c.Concurrency)
	case c.Pipeline < 1 || c.Pipeline > ipc.MaxDepth:
		return c, fmt.Errorf("workers: Pipeline %d outside 1-%d", c.Pipeline, ipc.MaxDepth)
	case c.Timeout < 0 || c.StartTimeout < 0 || c.StopTimeout < 0 || c.CancelGrace < 0:
		return c, errors.New("workers: timeouts must not be negative")
	case c.MaxFrame < ipc.MinMaxFrame:
		return c, fmt.Errorf("workers: MaxFrame %d below the minimum %d", c.MaxFrame, ipc.MinMaxFrame)
	}
	return c, nil
}

// command builds the exec.Cmd of one worker.
func (c *Config) command() (*exec.Cmd, error) {
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append([]string(nil), c.Env...)
	if !slices.ContainsFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") }) {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(min(c.Concurrency, runtime.NumCPU())))
	}
	cmd.Dir = c.Dir
	if c.Sandbox != nil {
		if err := c.Sandbox(cmd); err != nil {
			return nil, fmt.Errorf("sandbox %q: %w", c.Path, err)
		}
	}
	return cmd, nil
}
