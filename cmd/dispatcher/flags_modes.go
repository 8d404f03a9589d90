package main

// Flags of the serverless modes and of admission control (README,
// "Modes").

import (
	"flag"
	"math"
	"runtime"
	"time"

	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/childproc/dispatcher/workers"
)

type modeFlags struct {
	mode         string
	maxWorkers   int
	idleTimeout  time.Duration
	spares       int
	queue        int
	queueTimeout time.Duration

	maxRequests        int
	maxRSS             byteSize
	pingInterval       time.Duration
	pingTimeout        time.Duration
	breakerStarts      int
	breakerCrashRatio  float64
	breakerMinRequests int
	breakerWindow      time.Duration
	logLines           int
	logBytes           byteSize

	parsed workers.Mode
}

func (f *modeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.mode, "mode", "pool", "how workers run: pool (--pool-size kept running), ondemand (started by load, stopped when idle) or oneshot (a fresh worker per request)")
	fs.IntVar(&f.maxWorkers, "max-workers", runtime.NumCPU(), "ondemand and oneshot: most workers running at once (oneshot, unless set: twice the CPUs)")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", workers.DefaultIdleTimeout, "ondemand: stop a worker idle for this long")
	fs.IntVar(&f.spares, "spares", runtime.NumCPU(), "oneshot: started, unused workers kept ready (within --max-workers; 0: none)")
	fs.IntVar(&f.queue, "queue", 0, "most requests waiting for a worker; more get 503 (0: 100 per worker)")
	fs.DurationVar(&f.queueTimeout, "queue-timeout", workers.DefaultQueueTimeout, "longest wait for a worker; past it: 503")
	fs.IntVar(&f.maxRequests, "max-requests", 0, "recycle a worker after this many requests, plus up to 10% jitter (0: never)")
	fs.Var(&f.maxRSS, "max-rss", "recycle a worker whose resident memory (with its descendants') exceeds `SIZE`, e.g. 256M (0: never)")
	fs.DurationVar(&f.pingInterval, "ping-interval", workers.DefaultPingInterval, "health-ping a worker slot idle for this long (0: never)")
	fs.DurationVar(&f.pingTimeout, "ping-timeout", workers.DefaultPingTimeout, "a worker that does not answer a health ping within this is quarantined")
	fs.IntVar(&f.breakerStarts, "breaker-start-failures", 5, "failed starts of workers, or deaths before their first request, within --breaker-window that quarantine the worker binary (0: never)")
	fs.Float64Var(&f.breakerCrashRatio, "breaker-crash-ratio", 0.5, "quarantine the worker binary when more than this share of the requests within --breaker-window killed their worker (0: never); a crash now and then among healthy requests never does")
	fs.IntVar(&f.breakerMinRequests, "breaker-min-requests", 20, "requests within --breaker-window before --breaker-crash-ratio applies")
	fs.DurationVar(&f.breakerWindow, "breaker-window", 30*time.Second, "window in which --breaker-start-failures and --breaker-crash-ratio count")
	fs.IntVar(&f.logLines, "worker-log-lines", launch.DefaultLogLines, "most lines of one worker's output (stdout and stderr) logged per second; past it they are dropped unread, counted, and summed up in one warning per second (0: no limit)")
	f.logBytes = launch.DefaultLogBytes
	fs.Var(&f.logBytes, "worker-log-bytes", "most bytes of one worker's output lines logged per second (`SIZE`; 0: no limit); past it, as --worker-log-lines")

}

// check validates the flags; errors name the flag. concurrency and pipeline
// are the values of --concurrency and --pipeline, and set tells which flags
// were given.
func (f *modeFlags) check(concurrency, pipeline int, set map[string]bool) error {
	m, err := workers.ParseMode(f.mode)
	if err != nil {
		return usageErrorf("--mode %q: must be pool, ondemand or oneshot", f.mode)
	}
	f.parsed = m
	if m == workers.ModeOneShot && !set["max-workers"] {
		f.maxWorkers = 0 // workers.Config's default for the mode
	}
	switch {
	case f.maxWorkers < 1 && set["max-workers"]:
		return usageErrorf("--max-workers %d: must be at least 1", f.maxWorkers)
	case f.idleTimeout <= 0:
		return usageErrorf("--idle-timeout %s: must be positive", f.idleTimeout)
	case f.spares < 0:
		return usageErrorf("--spares %d: must not be negative", f.spares)
	case f.queue < 0:
		return usageErrorf("--queue %d: must not be negative", f.queue)
	case f.queueTimeout <= 0:
		return usageErrorf("--queue-timeout %s: must be positive", f.queueTimeout)
	case f.maxRequests < 0:
		return usageErrorf("--max-requests %d: must not be negative", f.maxRequests)
	case f.pingInterval < 0:
		return usageErrorf("--ping-interval %s: must not be negative", f.pingInterval)
	case f.pingTimeout <= 0:
		return usageErrorf("--ping-timeout %s: must be positive", f.pingTimeout)
	case f.breakerStarts < 0:
		return usageErrorf("--breaker-start-failures %d: must not be negative", f.breakerStarts)
	case f.breakerCrashRatio < 0 || f.breakerCrashRatio >= 1:
		return usageErrorf("--breaker-crash-ratio %g: must be at least 0 and below 1", f.breakerCrashRatio)
	case f.breakerMinRequests < 1:
		return usageErrorf("--breaker-min-requests %d: must be at least 1", f.breakerMinRequests)
	case f.breakerWindow <= 0:
		return usageErrorf("--breaker-window %s: must be positive", f.breakerWindow)
	case f.logLines < 0:
		return usageErrorf("--worker-log-lines %d: must not be negative (0: no limit)", f.logLines)
	case f.logBytes > math.MaxInt32:
		return usageErrorf("--worker-log-bytes %s: at most 2G (0: no limit)", f.logBytes.String())
	case m == workers.ModeOneShot && concurrency > 1:
		return usageErrorf("--concurrency %d: a oneshot worker serves one request", concurrency)
	case m == workers.ModeOneShot && set["pipeline"] && pipeline > 1:
		return usageErrorf("--pipeline %d: a oneshot worker serves one request", pipeline)
	case m != workers.ModePool && set["pool-size"]:
		return usageErrorf("--pool-size: only for --mode pool (use --max-workers)")
	}
	return nil
}

// apply sets the mode fields of cfg.
func (f *modeFlags) apply(cfg workers.Config) workers.Config {
	cfg.Mode = f.parsed
	cfg.MaxWorkers = f.maxWorkers
	cfg.IdleTimeout = f.idleTimeout
	cfg.Spares = f.spares
	if f.spares == 0 {
		cfg.Spares = -1 // workers.Config: zero means the default
	}
	cfg.Queue = f.queue
	cfg.MaxRequests = f.maxRequests
	cfg.MaxRSS = int64(f.maxRSS)
	cfg.PingInterval = f.pingInterval
	if f.pingInterval == 0 {
		cfg.PingInterval = -1 // workers.Config: zero means the default
	}
	cfg.PingTimeout = f.pingTimeout
	cfg.Breaker.StartFailures = f.breakerStarts
	if f.breakerStarts == 0 {
		cfg.Breaker.StartFailures = -1 // workers.BreakerConfig: zero means the default
	}
	cfg.Breaker.CrashRatio = f.breakerCrashRatio
	if f.breakerCrashRatio == 0 {
		cfg.Breaker.CrashRatio = -1
	}
	cfg.Breaker.MinRequests = f.breakerMinRequests
	cfg.Breaker.Window = f.breakerWindow
	cfg.QueueTimeout = f.queueTimeout
	cfg.LogLines, cfg.LogBytes = f.logLines, int(f.logBytes)
	if f.logLines == 0 {
		cfg.LogLines = -1 // workers.Config: zero means the default
	}
	if f.logBytes == 0 {
		cfg.LogBytes = -1
	}
	if cfg.Mode == workers.ModeOneShot {
		cfg.Pipeline = 1
	}
	return cfg
}
