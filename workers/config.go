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
	"golang.org/x/sys/unix"
)

// Defaults for Config fields left at their zero value.
const (
	DefaultQuarantineGrace = time.Second
	DefaultPingInterval    = 10 * time.Second
	DefaultPingTimeout     = 2 * time.Second
	DefaultRSSInterval     = 5 * time.Second
	DefaultTimeout         = 30 * time.Second
	DefaultStartTimeout    = 10 * time.Second
	DefaultStopTimeout     = 5 * time.Second
	DefaultCancelGrace     = 5 * time.Second
	// DefaultPipeline lets 32 concurrent requests on 2 single-slot
	// workers all be queued in a worker: at 8, half of them waited in the
	// dispatcher, which cost 3 us of dispatcher CPU per hello request and
	// 10-20% of the throughput (bench/README.md). A slot that finished
	// nothing for 10 ms gets no more (pipelineStall), which bounds what
	// waits behind a slow request.
	DefaultPipeline = 16
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
	// Mode is how workers are run: a fixed pool (the default), on demand,
	// or a fresh worker per request.
	Mode Mode
	// Size is the number of worker processes kept running in ModePool. If
	// zero, runtime.NumCPU().
	Size int
	// MaxWorkers caps the workers running at once (busy, idle or starting)
	// in ModeOnDemand and ModeOneShot. If zero, runtime.NumCPU(), and twice
	// that in ModeOneShot: a oneshot worker spends much of its short life
	// starting, and with only as many workers as CPUs the CPUs wait on the
	// starts (hello, 2 CPUs, 8 clients: 655-681 req/s with 2, 744-795 with
	// 4; bench/results/2026-11-30-session5.md).
	MaxWorkers int
	// IdleTimeout is how long a worker may stay idle in ModeOnDemand before
	// it is stopped. If zero, DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Spares is the number of started, unused workers ModeOneShot keeps
	// ready (within MaxWorkers). If zero, runtime.NumCPU(); negative means
	// none (every request waits for a spawn).
	Spares int
	// Queue bounds the requests waiting for a worker; past it a request is
	// refused at once with an *OverloadError. If zero,
	// DefaultQueuePerWorker per worker (Size, or MaxWorkers).
	Queue int
	// QueueTimeout bounds the wait for a worker; past it the request is
	// refused with an *OverloadError. If zero, DefaultQueueTimeout.
	QueueTimeout time.Duration
	// Concurrency is the number of requests one worker serves at once. If
	// zero, 1.
	Concurrency int
	// Pipeline is how many requests may be outstanding on one slot: when
	// every slot is busy, a request whose body is complete is queued in a
	// busy worker (the worker runs them one after the other) instead of
	// waiting in the dispatcher, which saves the worker a wake-up per
	// request under load. 1 disables pipelining. If zero, DefaultPipeline.
	Pipeline int
	// MaxRequests recycles a worker after it served that many requests,
	// plus up to 10% of random jitter (0: never). It finishes what it has and
	// stops once its replacement runs.
	MaxRequests int
	// MaxRSS recycles a worker whose resident memory exceeds it, in bytes,
	// checked every RSSInterval (0: never).
	MaxRSS int64
	// RSSInterval is how often MaxRSS is checked. If zero,
	// DefaultRSSInterval.
	RSSInterval time.Duration
	// PingInterval is how long a slot may stay idle before a health ping
	// checks it; a worker that does not answer within PingTimeout is
	// quarantined. If zero, DefaultPingInterval; negative disables pings.
	PingInterval time.Duration
	// PingTimeout bounds a health ping. If zero, DefaultPingTimeout.
	PingTimeout time.Duration
	// QuarantineGrace is how long a quarantined worker (hung, timed out or
	// unhealthy) has to dump its goroutines after SIGQUIT before it is
	// killed. If zero, DefaultQuarantineGrace.
	QuarantineGrace time.Duration
	// Breaker says when the binary counts as broken: its starts are then
	// stopped and the requests that find no worker refused for a while.
	// Zero fields take the defaults documented on BreakerConfig.
	Breaker BreakerConfig
	// Timeout bounds a request from the moment a worker takes it until its
	// response head arrives, and then each wait for the next chunk of a
	// streamed response body (a stream lives as long as it makes progress);
	// past it the worker is quarantined and killed with its process group.
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
	// SocketDir is where go-plugin makes a directory for each worker (for
	// a control socket the sdk no longer creates). If empty,
	// DefaultSocketDir().
	SocketDir string
	// Sandbox, if set, confines each worker (identity, limits, namespaces,
	// a cell whose processes all die with it); see workers/sandbox. If nil,
	// workers run as the dispatcher's own children, contained by their
	// process group only.
	Sandbox Sandbox
	// Reaper, if set, is this process's Reaper: every worker starts through
	// it, and each worker's exit sweeps the stray processes it adopted
	// (escaped descendants of workers, where no cell holds them).
	Reaper *Reaper
	// Start, if set, starts worker processes in place of the default: the
	// binary at Path, confined by Sandbox, through go-plugin's handshake.
	// Tests run workers in memory with it.
	Start func(StartSpec) (Process, error)
	// LogLines and LogBytes bound each worker's output (stdout and stderr
	// together) that reaches the log, per second; past either, its lines
	// are dropped, counted (Observer.LogDropped) and reported in one
	// warning per second. If zero, launch.DefaultLogLines and
	// launch.DefaultLogBytes; if negative, no bound.
	LogLines, LogBytes int
	// Observer, if set, receives the pool's events (metrics).
	Observer Observer
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
	if c.MaxWorkers == 0 {
		c.MaxWorkers = runtime.NumCPU()
		if c.Mode == ModeOneShot {
			c.MaxWorkers *= 2
		}
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Spares == 0 {
		c.Spares = runtime.NumCPU()
	}
	if c.Spares < 0 {
		c.Spares = 0
	}
	if c.QueueTimeout == 0 {
		c.QueueTimeout = DefaultQueueTimeout
	}
	if c.RSSInterval == 0 {
		c.RSSInterval = DefaultRSSInterval
	}
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = DefaultPingTimeout
	}
	if c.QuarantineGrace == 0 {
		c.QuarantineGrace = DefaultQuarantineGrace
	}
	c.Breaker = c.Breaker.withDefaults()
	if c.Mode == ModeOneShot {
		// One request per process: nothing to pipeline or share.
		if c.Concurrency > 1 {
			return c, fmt.Errorf("workers: Concurrency %d with ModeOneShot: a oneshot worker serves one request", c.Concurrency)
		}
		if c.Pipeline > 1 {
			return c, fmt.Errorf("workers: Pipeline %d with ModeOneShot: a oneshot worker serves one request", c.Pipeline)
		}
		c.Concurrency, c.Pipeline = 1, 1
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
		c.SocketDir = DefaultSocketDir()
	}
	if c.Logger == nil {
		c.Logger = logrus.NewEntry(logrus.StandardLogger())
	}
	c.Backoff = c.Backoff.withDefaults()
	if c.Queue == 0 {
		n := c.Size
		if c.Mode != ModePool {
			n = c.MaxWorkers
		}
		c.Queue = DefaultQueuePerWorker * max(n, 1)
	}
	switch {
	case c.Size < 0:
		return c, fmt.Errorf("workers: Size %d is negative", c.Size)
	case c.Mode < ModePool || c.Mode > ModeOneShot:
		return c, fmt.Errorf("workers: unknown %v", c.Mode)
	case c.MaxWorkers < 0:
		return c, fmt.Errorf("workers: MaxWorkers %d is negative", c.MaxWorkers)
	case c.Queue < 0:
		return c, fmt.Errorf("workers: Queue %d is negative", c.Queue)
	case c.MaxRequests < 0 || c.MaxRSS < 0:
		return c, errors.New("workers: MaxRequests and MaxRSS must not be negative")
	case c.RSSInterval < 0 || c.PingTimeout < 0 || c.QuarantineGrace < 0:
		return c, errors.New("workers: intervals and timeouts must not be negative")
	case c.IdleTimeout < 0 || c.QueueTimeout < 0:
		return c, errors.New("workers: timeouts must not be negative")
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

// command builds the exec.Cmd of one worker and, with a Sandbox, its Cell
// (nil without one). socketDir is the pool's socket directory.
func (c *Config) command(socketDir string) (*exec.Cmd, Cell, error) {
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append([]string(nil), c.Env...)
	if !slices.ContainsFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") }) {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(min(c.Concurrency, runtime.NumCPU())))
	}
	cmd.Dir = c.Dir
	if c.Sandbox == nil {
		return cmd, nil, nil
	}
	cell, err := c.Sandbox.Prepare(cmd, socketDir)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox %q: %w", c.Path, err)
	}
	return cmd, cell, nil
}

// SetEnv returns env with KEY=value set, replacing any earlier KEY.
func SetEnv(env []string, key, value string) []string {
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, key+"=") })
	return append(env, key+"="+value)
}

// CheckEnvKey reports whether key can name an environment variable: not
// empty, no '=' and no NUL.
func CheckEnvKey(key string) error {
	switch {
	case key == "":
		return errors.New("empty variable name")
	case strings.ContainsAny(key, "=\x00"):
		return fmt.Errorf("variable name %q contains '=' or NUL", key)
	}
	return nil
}

// DefaultSocketDir is where workers' socket directories go by default:
// $TMPDIR if it is set; else a memory file system, $XDG_RUNTIME_DIR or
// /dev/shm, if there is a writable one; else /tmp. Every worker start
// makes and removes a directory there: on a disk file system (ext4) that
// was a tenth of the dispatcher's CPU in oneshot mode.
func DefaultSocketDir() string {
	if d := os.Getenv("TMPDIR"); d != "" {
		return d
	}
	for _, d := range []string{os.Getenv("XDG_RUNTIME_DIR"), "/dev/shm"} {
		var st unix.Statfs_t
		if d != "" && unix.Statfs(d, &st) == nil && st.Type == unix.TMPFS_MAGIC && unix.Access(d, unix.W_OK|unix.X_OK) == nil {
			return d
		}
	}
	return os.TempDir()
}
