package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/childproc/dispatcher/dispatcher"
	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
)

// UsageError is a problem with the command line or with what it names; the
// process exits with status 2.
type UsageError struct {
	Msg     string
	Printed bool // already reported (by the flag package)
}

func (e *UsageError) Error() string { return e.Msg }

func usageErrorf(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// Main is the dispatcher command. Its fields let tests capture its output.
type Main struct {
	Stderr io.Writer
	// CaptureStderr makes Run point os.Stderr at a pipe whose lines become
	// log entries while it runs, so that libraries writing there directly
	// (yamux, under go-plugin) do not break the log format. Only for the
	// real process: it changes a global.
	CaptureStderr bool
	// Ready, if set, is called with the listening address once the
	// dispatcher serves requests.
	Ready func(addr net.Addr)
}

// NewMain returns a Main writing to the process's stderr.
func NewMain() *Main { return &Main{Stderr: os.Stderr} }

type options struct {
	workers         string
	workerArgs      []string
	listen          string
	poolSize        int
	concurrency     int
	pipeline        int
	timeout         time.Duration
	startTimeout    time.Duration
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
	accessLog       bool
	isolation       isolationFlags // flags_isolation.go
	http            httpFlags      // flags_http.go
	modes           modeFlags      // flags_modes.go
}

func (m *Main) parse(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("dispatcher", flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	fs.StringVar(&o.workers, "workers", "", "worker `binary` built with the sdk (required); arguments for it follow --")
	fs.StringVar(&o.listen, "listen", ":8080", "`address` to serve HTTP on")
	fs.IntVar(&o.poolSize, "pool-size", runtime.NumCPU(), "worker processes kept running")
	fs.IntVar(&o.concurrency, "concurrency", 1, "requests one worker serves at once")
	fs.IntVar(&o.pipeline, "pipeline", workers.DefaultPipeline, "requests that may be queued on one busy worker slot, counting the running one (1 disables pipelining)")
	fs.DurationVar(&o.timeout, "timeout", workers.DefaultTimeout, "per-request limit from the moment a worker takes it; past it: 504 and the worker is killed")
	fs.DurationVar(&o.startTimeout, "start-timeout", workers.DefaultStartTimeout, "limit for a worker to start and complete the handshake")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGINT/SIGTERM, how long in-flight requests may take to finish")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.accessLog, "access-log", true, "log one line per request")
	o.isolation.register(fs)
	o.http.register(fs)
	o.modes.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: dispatcher --workers BINARY [flags] [-- worker args...]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, &UsageError{Msg: err.Error(), Printed: true}
	}
	o.workerArgs = fs.Args()
	if o.workers == "" {
		fs.Usage()
		return nil, usageErrorf("--workers is required")
	}
	path, err := checkExecutable(o.workers)
	if err != nil {
		return nil, err
	}
	o.workers = path
	switch {
	case o.poolSize < 1:
		return nil, usageErrorf("--pool-size %d: must be at least 1", o.poolSize)
	case o.concurrency < 1 || o.concurrency > 1024:
		return nil, usageErrorf("--concurrency %d: must be 1-1024", o.concurrency)
	case o.pipeline < 1 || o.pipeline > ipc.MaxDepth:
		return nil, usageErrorf("--pipeline %d: must be 1-%d", o.pipeline, ipc.MaxDepth)
	case o.timeout <= 0:
		return nil, usageErrorf("--timeout %s: must be positive", o.timeout)
	case o.startTimeout <= 0:
		return nil, usageErrorf("--start-timeout %s: must be positive", o.startTimeout)
	case o.shutdownTimeout < 0:
		return nil, usageErrorf("--shutdown-timeout %s: must not be negative", o.shutdownTimeout)
	case o.logFormat != "text" && o.logFormat != "json":
		return nil, usageErrorf("--log-format %q: must be text or json", o.logFormat)
	}
	if _, err := logrus.ParseLevel(o.logLevel); err != nil {
		return nil, usageErrorf("--log-level %q: must be debug, info, warn or error", o.logLevel)
	}
	if err := o.isolation.check(o.concurrency); err != nil {
		return nil, err
	}
	if err := o.http.check(); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if err := o.modes.check(o.concurrency, o.pipeline, set); err != nil {
		return nil, err
	}
	return o, nil
}

// checkExecutable resolves path and checks that it is an executable file.
func checkExecutable(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", usageErrorf("--workers %q: %v", path, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", usageErrorf("--workers %q: no such file", path)
	case err != nil:
		return "", usageErrorf("--workers %q: %v", path, err)
	case fi.IsDir():
		return "", usageErrorf("--workers %q: is a directory", path)
	case fi.Mode()&0o111 == 0:
		return "", usageErrorf("--workers %q: is not executable", path)
	}
	return abs, nil
}

func (m *Main) logger(o *options) *logrus.Logger {
	l := logrus.New()
	l.Out = m.Stderr
	if o.logFormat == "json" {
		l.Formatter = &logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano}
	} else {
		l.Formatter = &logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "15:04:05.000"}
	}
	l.Level, _ = logrus.ParseLevel(o.logLevel)
	return l
}

// Run parses args, starts the workers and serves until ctx is done, then
// shuts down in order: stop accepting, let in-flight requests finish, stop
// the workers.
func (m *Main) Run(ctx context.Context, args []string) error {
	o, err := m.parse(args)
	if err != nil {
		return err
	}
	logger := m.logger(o)
	log := logrus.NewEntry(logger)
	if m.CaptureStderr {
		restore, err := captureStderr(log.WithField("component", "stderr"))
		if err != nil {
			return err
		}
		defer restore()
	}

	iso, err := o.isolation.setup(o.workers, log)
	if err != nil {
		return err
	}
	defer iso.close()
	pool, err := workers.NewPool(o.modes.apply(workers.Config{
		Env:          iso.env,
		Sandbox:      iso.sandbox,
		Path:         o.workers,
		Args:         o.workerArgs,
		Size:         o.poolSize,
		Concurrency:  o.concurrency,
		Pipeline:     o.pipeline,
		Timeout:      o.timeout,
		StartTimeout: o.startTimeout,
		Logger:       log,
	}))
	if err != nil {
		return usageErrorf("%v", err)
	}
	t0 := time.Now()
	if err := pool.Start(ctx); err != nil {
		var se *ipc.StartError
		switch {
		case ctx.Err() != nil:
			log.Info("stopped during startup")
			return nil
		case errors.As(err, &se):
			return usageErrorf("%v", err)
		}
		return err
	}
	srv, err := dispatcher.New(o.http.config(dispatcher.Config{Invoker: pool, Logger: log, AccessLog: o.accessLog}))
	if err != nil {
		_ = pool.Close(context.Background())
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		_ = pool.Close(context.Background())
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	errWriter := logger.WriterLevel(logrus.WarnLevel)
	defer errWriter.Close()
	hs := o.http.server(srv, stdlog.New(errWriter, "", 0))
	served := make(chan error, 1)
	go func() { served <- o.http.serve(hs, ln) }()
	log.WithFields(logrus.Fields{
		"addr": ln.Addr().String(), "workers": strings.Trim(fmt.Sprint(pool.Workers()), "[]"),
		"binary": o.workers, "startup_ms": time.Since(t0).Milliseconds(),
	}).Info("dispatcher listening")
	if m.Ready != nil {
		m.Ready(ln.Addr())
	}

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining in-flight requests")
	case serveErr = <-served:
		log.WithError(serveErr).Error("HTTP server failed; shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.WithError(err).Warn("in-flight requests did not finish within --shutdown-timeout; closing their connections")
		_ = hs.Close()
	}
	if err := pool.Close(context.Background()); err != nil {
		log.WithError(err).Warn("stopping workers")
	}
	log.Info("stopped")
	return serveErr
}

// captureStderr points os.Stderr at a pipe and logs each line written to it
// until restore is called. yamux (under go-plugin) prints there when a
// worker's control connection breaks, which is expected when a worker dies
// and already logged as such: those lines go to debug level, others to warn.
func captureStderr(log *logrus.Entry) (restore func(), err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	orig := os.Stderr
	os.Stderr = w
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 4096), 64<<10)
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "yamux:") {
				log.Debug(line)
			} else {
				log.Warn(line)
			}
		}
		_, _ = io.Copy(io.Discard, r) // a line over 64 KiB ends the scan
	}()
	return func() {
		os.Stderr = orig
		w.Close()
		<-done
		r.Close()
	}, nil
}
