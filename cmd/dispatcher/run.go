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
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/admin"
	"github.com/childproc/dispatcher/dispatcher"
	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/childproc/dispatcher/workers"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// UsageError is a problem with the command line or with what it names; the
// process exits with status 2.
type UsageError struct {
	Msg string
}

func (e *UsageError) Error() string { return e.Msg }

func usageErrorf(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// defaultAdminListen is the admin listener's address unless --admin-listen
// says otherwise: loopback only, on a port next to the public default that
// no well-known server takes (9090, the previous default, is Prometheus's
// own).
const defaultAdminListen = "127.0.0.1:8079"

// Main is the dispatcher command. Its fields let tests capture its output.
type Main struct {
	Stdout io.Writer // --help and --version
	Stderr io.Writer
	// CaptureStderr makes Run point os.Stderr at a pipe whose lines become
	// log entries while it runs, so that libraries writing there directly
	// (yamux, under go-plugin) do not break the log format. Only for the
	// real process: it changes a global.
	CaptureStderr bool
	// Ready, if set, is called with the listening address once the
	// dispatcher serves requests.
	Ready func(addr net.Addr)
	// Reload, if set, makes Run reload its configuration (re-reading the
	// config file) at each value: new workers are started, traffic moves to
	// them, and the old ones finish what they have and stop.
	Reload <-chan struct{}
	// Reaper, if set, is the process's workers.Reaper: workers start
	// through it, and what escapes them is killed when they exit. Only for
	// the real process: it changes the whole process.
	Reaper *workers.Reaper

	warned sync.Map // warnings logged once per process
}

// NewMain returns a Main writing to the process's stderr.
func NewMain() *Main { return &Main{Stdout: os.Stdout, Stderr: os.Stderr} }

type options struct {
	workers         string
	workerArgs      []string
	listen          string
	adminListen     string
	adminPprof      bool
	adminShowQuery  bool
	config          string
	checkConfig     string
	watch           bool
	poolSize        int
	concurrency     int
	pipeline        int
	timeout         time.Duration
	startTimeout    time.Duration
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
	accessLog       bool
	accessLogQuery  bool
	accessLogFlush  time.Duration
	version         bool
	isolation       isolationFlags // flags_isolation.go
	http            httpFlags      // flags_http.go
	modes           modeFlags      // flags_modes.go

	// A function's name and route (host, path prefix): from the config
	// file, or the binary's name and / for --workers.
	name, host, route string
	stripPrefix       bool // the config's strip-prefix: the handler sees the path without route
	// values are the flags' values for this function, by name, from which
	// a reload tells whether its workers must be replaced.
	values map[string]string
	// functions are the functions to serve, each with its own options (the
	// global ones are those of the top-level options).
	functions []*options
}

// newFlagSet returns the dispatcher's flags, bound to o. Each flag has its
// place in --help in flagGroups (flags.go).
func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("dispatcher", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parseArgs reports errors; printHelp the flags
	fs.StringVar(&o.workers, "workers", "", "worker `BINARY` built with the sdk (required unless --config); arguments for it follow --")
	fs.StringVar(&o.config, "config", "", "YAML `FILE` declaring the functions to serve, their routes and settings (see examples/dispatcher.yaml)")
	fs.StringVar(&o.checkConfig, "check-config", "", "validate the config `FILE`, start each function's worker binary once through its handshake, and exit")
	fs.BoolVar(&o.watch, "watch", false, "reload when the config file, a worker binary or an --env-file changes (as on SIGHUP)")
	fs.StringVar(&o.listen, "listen", ":8080", "`ADDRESS` to serve HTTP on, host:port (no host: every interface)")
	fs.StringVar(&o.adminListen, "admin-listen", defaultAdminListen, "`ADDRESS` of the admin endpoints (/metrics, /healthz, /readyz, /status): host:port, or unix:PATH for a socket of mode 0600; empty: none")
	fs.BoolVar(&o.adminShowQuery, "admin-show-query", false, "show the query strings of requests in flight on /status (left out by default: they may hold tokens)")
	fs.BoolVar(&o.adminPprof, "admin-pprof", false, "also serve Go's runtime profiles of the dispatcher under /debug/pprof/ on the admin listener")
	fs.IntVar(&o.poolSize, "pool-size", runtime.NumCPU(), "worker processes kept running (--mode pool)")
	fs.IntVar(&o.concurrency, "concurrency", 1, "requests one worker serves at once (1-1024)")
	fs.IntVar(&o.pipeline, "pipeline", workers.DefaultPipeline, "requests that may be queued on one busy worker slot, counting the running one (1-64; 1 disables pipelining)")
	fs.DurationVar(&o.timeout, "timeout", workers.DefaultTimeout, "per-request limit from the moment a worker takes it, and for each chunk of a streamed response; past it: 504 and the worker is killed")
	fs.DurationVar(&o.startTimeout, "start-timeout", workers.DefaultStartTimeout, "limit for a worker to start and complete the handshake")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGINT/SIGTERM, how long in-flight requests may take to finish (and, on reload, the old workers)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.accessLog, "access-log", true, "log one line per request")
	fs.BoolVar(&o.accessLogQuery, "access-log-query", true, "log each request's query string (false leaves it out: it may hold tokens)")
	fs.DurationVar(&o.accessLogFlush, "access-log-flush", dispatcher.DefaultFlushInterval, "longest an access-log line waits in memory to be written with others (0: written at once)")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	o.isolation.register(fs)
	o.http.register(fs)
	o.modes.register(fs)
	addHints(fs)
	return fs
}

// commandLineOnly are the flags a config file may not set.
var commandLineOnly = map[string]bool{"config": true, "check-config": true, "version": true}

func (m *Main) parse(args []string) (*options, error) {
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, synopsis)
	}
	o := &options{}
	fs := newFlagSet(o)
	rest, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(m.Stdout, fs)
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if o.version {
		return o, nil
	}
	if o.checkConfig != "" {
		if o.config != "" && o.config != o.checkConfig {
			return nil, usageErrorf("--check-config %q and --config %q: give one file", o.checkConfig, o.config)
		}
		o.config = o.checkConfig
	}
	if o.config != "" {
		return m.parseConfig(o, args, rest)
	}
	o.workerArgs = rest
	if o.workers == "" {
		return nil, usageErrorf("--workers BINARY or --config FILE is required%s", seeHelp)
	}
	if err := o.checkGlobal(); err != nil {
		return nil, err
	}
	if err := o.checkFunction(setFlags(fs)); err != nil {
		return nil, err
	}
	o.values = flagValues(fs)
	o.name, o.route = filepath.Base(o.workers), "/"
	o.functions = []*options{o}
	return o, nil
}

// parseConfig reads the config file o names. The command line's flags
// override the file's top level, and a function's settings override both.
func (m *Main) parseConfig(o *options, args, rest []string) (*options, error) {
	if o.workers != "" {
		return nil, usageErrorf("--workers and --config: use one (the file names each function's binary)")
	}
	if len(rest) > 0 {
		return nil, usageErrorf("worker arguments after -- go with --workers; in --config %s give each function its args", o.config)
	}
	cf, err := loadConfig(o.config)
	if err != nil {
		return nil, err
	}
	layered := func(fn *configFunction) (*options, map[string]bool, error) {
		fo := &options{}
		fs := newFlagSet(fo)
		if err := cf.apply(fs, cf.top, ""); err != nil {
			return nil, nil, err
		}
		if _, err := parseArgs(fs, args); err != nil {
			return nil, nil, err
		}
		if fn != nil {
			if err := cf.apply(fs, fn.settings, fmt.Sprintf("functions[%d].", fn.index)); err != nil {
				return nil, nil, err
			}
		}
		fo.values = flagValues(fs)
		return fo, setFlags(fs), nil
	}
	g, _, err := layered(nil)
	if err != nil {
		return nil, err
	}
	g.config, g.checkConfig = o.config, o.checkConfig
	if err := g.checkGlobal(); err != nil {
		return nil, cf.locate(err, nil)
	}
	routes := map[string]string{}
	for i := range cf.functions {
		f := &cf.functions[i]
		fo, set, err := layered(f)
		if err != nil {
			return nil, err
		}
		fo.name, fo.host, fo.route, fo.stripPrefix, fo.workerArgs = f.name, f.host, f.route, f.stripPrefix, f.args
		if err := fo.checkFunction(set); err != nil {
			return nil, cf.locate(err, f)
		}
		key := f.host + " " + strings.TrimSuffix(f.route, "/")
		if other, ok := routes[key]; ok {
			return nil, configError(cf.path, f.line, "functions[%d] (%s): route %s%s is already %s's", i, f.name, f.host, f.route, other)
		}
		routes[key] = f.name
		g.functions = append(g.functions, fo)
	}
	return g, nil
}

// flagValues returns the value of every flag of fs, by name.
func flagValues(fs *flag.FlagSet) map[string]string {
	v := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { v[f.Name] = f.Value.String() })
	return v
}

// setFlags returns the names of the flags fs was given.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// checkGlobal validates the settings of the dispatcher as a whole.
func (o *options) checkGlobal() error {
	switch {
	case o.shutdownTimeout < 0:
		return usageErrorf("--shutdown-timeout %s: must not be negative", o.shutdownTimeout)
	case o.accessLogFlush < 0:
		return usageErrorf("--access-log-flush %s: must not be negative", o.accessLogFlush)
	case o.logFormat != "text" && o.logFormat != "json":
		return usageErrorf("--log-format %q: must be text or json", o.logFormat)
	case o.watch && o.config == "" && o.workers == "":
		return usageErrorf("--watch: needs --config or --workers")
	}
	if _, err := logrus.ParseLevel(o.logLevel); err != nil {
		return usageErrorf("--log-level %q: must be debug, info, warn or error", o.logLevel)
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		port := "8080"
		if isNumber(o.listen) {
			port = o.listen
		}
		return usageErrorf("--listen %q: want host:port, such as :%s (every interface) or 127.0.0.1:%s", o.listen, port, port)
	}
	if path, ok := strings.CutPrefix(o.adminListen, unixPrefix); ok {
		if path == "" || len(path) > len(unix.RawSockaddrUnix{}.Path)-1 {
			return usageErrorf("--admin-listen %q: want unix:PATH, a path of 1-107 bytes", o.adminListen)
		}
	} else if o.adminListen != "" {
		if _, _, err := net.SplitHostPort(o.adminListen); err != nil {
			return usageErrorf("--admin-listen %q: want host:port or unix:PATH", o.adminListen)
		}
		if _, port, _ := net.SplitHostPort(o.adminListen); o.adminListen == o.listen && port != "0" {
			return usageErrorf("--admin-listen %q: must not be the public --listen address", o.adminListen)
		}
	}
	return o.http.check()
}

// checkFunction validates the settings of one function.
func (o *options) checkFunction(set map[string]bool) error {
	path, err := checkExecutable(o.workers)
	if err != nil {
		return err
	}
	o.workers = path
	switch {
	case o.poolSize < 1:
		return usageErrorf("--pool-size %d: must be at least 1", o.poolSize)
	case o.concurrency < 1 || o.concurrency > 1024:
		return usageErrorf("--concurrency %d: must be 1-1024", o.concurrency)
	case o.pipeline < 1 || o.pipeline > ipc.MaxDepth:
		return usageErrorf("--pipeline %d: must be 1-%d", o.pipeline, ipc.MaxDepth)
	case o.timeout <= 0:
		return usageErrorf("--timeout %s: must be positive", o.timeout)
	case o.startTimeout <= 0:
		return usageErrorf("--start-timeout %s: must be positive", o.startTimeout)
	}
	if err := o.isolation.check(o.concurrency); err != nil {
		return err
	}
	if err := o.http.check(); err != nil {
		return err
	}
	return o.modes.check(o.concurrency, o.pipeline, set)
}

// checkExecutable resolves path and checks that it is an executable file.
func checkExecutable(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", usageErrorf("--workers %q: %v", path, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist) && isNumber(path):
		return "", usageErrorf("--workers %q: no such file (--workers is the worker binary; the number of workers is --pool-size)", path)
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

func isNumber(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}

// logTimeFormat is the text log's timestamp: RFC 3339 in milliseconds.
const logTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// logger returns the dispatcher's logger. Unless it writes to a terminal,
// its output is a LogWriter, which the caller must close: logging never
// waits on the destination, and access-log lines are written in batches.
func (m *Main) logger(o *options) (*logrus.Logger, *dispatcher.LogWriter) {
	l := logrus.New()
	l.Out = m.Stderr
	var lw *dispatcher.LogWriter
	if !isTerminal(m.Stderr) {
		flush := o.accessLogFlush
		if flush == 0 {
			flush = -1 // LogWriter: no buffering
		}
		lw = dispatcher.NewLogWriter(m.Stderr, dispatcher.LogWriterConfig{FlushInterval: flush, Dropped: func(n int) {
			l.WithField("dropped", n).Warn("log lines dropped: the log destination did not take them in time")
		}})
		l.Out = lw
	}
	if o.logFormat == "json" {
		l.Formatter = &logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano}
	} else {
		l.Formatter = &dispatcher.TextFormatter{TextFormatter: logrus.TextFormatter{FullTimestamp: true, TimestampFormat: logTimeFormat}}
	}
	l.Level, _ = logrus.ParseLevel(o.logLevel)
	return l, lw
}

// isTerminal reports whether w is a terminal (logrus then colours the
// text log).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// logCloseTimeout bounds the wait for the log destination at exit.
const logCloseTimeout = 5 * time.Second

// Run parses args, starts the workers and serves until ctx is done, then
// shuts down in order: stop accepting, let in-flight requests finish, stop
// the workers. A value on Main.Reload reloads (SIGHUP).
func (m *Main) Run(ctx context.Context, args []string) error {
	o, err := m.parse(args)
	if err != nil {
		return err
	}
	if o.version {
		fmt.Fprintln(m.Stdout, "dispatcher", readBuild())
		return nil
	}
	logger, lw := m.logger(o)
	if lw != nil {
		defer func() {
			// Whatever the destination has not taken within this is lost.
			ctx, cancel := context.WithTimeout(context.Background(), logCloseTimeout)
			defer cancel()
			_ = lw.Close(ctx)
		}()
	}
	log := logrus.NewEntry(logger)
	if o.checkConfig != "" {
		// The file is valid; now each worker binary, started as it
		// would be served.
		logger.Level = min(logger.Level, logrus.WarnLevel)
		if err := checkWorkers(ctx, o, log); err != nil {
			var se *launch.StartError
			if errors.As(err, &se) || errors.As(err, new(*UsageError)) {
				return usageErrorf("%s: %v", o.checkConfig, strings.ReplaceAll(err.Error(), "\n", "; "))
			}
			return fmt.Errorf("%s: %w", o.checkConfig, err)
		}
		fmt.Fprintf(m.Stderr, "%s: OK, %d function(s); each worker binary started and completed its handshake\n", o.checkConfig, len(o.functions))
		return nil
	}
	if m.CaptureStderr {
		restore, err := captureStderr(log.WithField("component", "stderr"))
		if err != nil {
			return err
		}
		defer restore()
	}

	logWorkerUsers(o.functions, log)
	t0 := time.Now()
	svc := newService(m, args, o, log)
	if lw != nil {
		svc.metrics.Registry().MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dispatcher_log_lines_dropped_total",
			Help: "Log lines dropped because the log destination did not take them in time.",
		}, func() float64 { return float64(lw.Dropped()) }))
	}
	if err := svc.start(ctx); err != nil {
		var se *launch.StartError
		switch {
		case ctx.Err() != nil:
			log.Info("stopped during startup")
			return nil
		case errors.As(err, &se) && errors.Is(err, launch.ErrStartTimeout):
			return usageErrorf("%v; a worker that is only slow to start needs a longer --start-timeout", err)
		case errors.As(err, &se):
			return usageErrorf("%v", err)
		}
		return err
	}
	defer svc.close(context.Background()) // a failure before serving
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return listenError("listen", o.listen, err)
	}
	errWriter := logger.WriterLevel(logrus.WarnLevel)
	defer errWriter.Close()
	errLog := stdlog.New(errWriter, "", 0)
	hs := o.http.server(svc.router, errLog)
	front := dispatcher.GuardFraming(hs, newShedListener(ln, "listen", log)) // RFC 9112 §6.1: close after Content-Length with Transfer-Encoding
	// Watching starts before serving: a change made once the dispatcher
	// answers is never missed.
	stopWatch := svc.watch(o)
	defer stopWatch()
	served := make(chan error, 2)
	go func() { served <- o.http.serve(hs, front) }()
	fields := logrus.Fields{"addr": ln.Addr().String(), "startup_ms": time.Since(t0).Milliseconds()}
	if o.config == "" {
		fields["workers"] = strings.Trim(fmt.Sprint(svc.functions()[0].Pool.Workers()), "[]")
		fields["binary"] = o.workers
	} else {
		fields["config"] = o.config
		fields["functions"] = len(o.functions)
	}
	var adminSrv *http.Server
	if o.adminListen != "" {
		aln, err := listenAdmin(o.adminListen)
		if err != nil {
			_ = hs.Close()
			return err
		}
		var lim admin.Limits // the defaults: a connection cap and timeouts
		adminSrv = svc.admin.HTTPServer(lim, errLog)
		capped := lim.Listener(newShedListener(aln, "admin-listen", log))
		go func() {
			if err := adminSrv.Serve(capped); !errors.Is(err, http.ErrServerClosed) {
				served <- fmt.Errorf("admin server: %w", err)
			}
		}()
		fields["admin"] = aln.Addr().String()
	}
	log.WithFields(fields).Info("dispatcher listening")
	if m.Ready != nil {
		m.Ready(ln.Addr())
	}

	var serveErr error
loop:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down: draining in-flight requests")
			break loop
		case <-m.Reload:
			_ = svc.reload(ctx)
		case serveErr = <-served:
			log.WithError(serveErr).Error("HTTP server failed; shutting down")
			break loop
		}
	}
	svc.admin.SetDraining()
	stopWatch()
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.WithError(err).Warn("in-flight requests did not finish within --shutdown-timeout; closing their connections")
		_ = hs.Close()
	}
	svc.close(sctx)
	if adminSrv != nil {
		_ = adminSrv.Close() // removes a unix socket
	}
	log.Info("stopped")
	return serveErr
}

// listenError explains a failure to listen on the address of --flag; an
// address in use says which flag to change.
func listenError(flag, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("--%s %s: the address is in use, by another dispatcher or another server: give this one another with --%s (port 0 picks a free one)", flag, addr, flag)
	}
	return fmt.Errorf("--%s %s: %w", flag, addr, err)
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
