// Package sdktest tests worker binaries the way they run in production, in
// the spirit of net/http/httptest. Build compiles a worker's main package
// once per test binary; Start runs it in a pool of real worker processes
// behind a real dispatcher on a loopback port and returns its base URL:
//
//	func TestHello(t *testing.T) {
//		srv := sdktest.Start(t, sdktest.Build(t, "."))
//		resp, err := http.Get(srv.URL + "/")
//		...
//	}
//
// Every request takes the production path: the dispatcher's HTTP front
// (request IDs, hop-by-hop headers, status mapping, access log), the worker
// pool (timeouts, crash detection, restarts), msgpack frames over inherited
// socketpairs, and the sdk in the child. So a test sees what a client will:
// a crash is a 502, a handler that outlives Options.Timeout a 504, a header
// with CR or LF a 502, and the handler's log lines reach Server.Log at their
// level with the request ID.
//
// The package assembles the dispatcher's own packages (workers.Pool and
// dispatcher.Server) with settings fit for tests; it owns nothing of the
// protocol or of process policy. Like cmd/dispatcher it sits at the top of
// the import graph: nothing but tests imports it.
package sdktest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/childproc/dispatcher/dispatcher"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
)

// DefaultStartTimeout is the start and handshake limit of each worker when
// Options.StartTimeout is zero: more than a dispatcher's default, because a
// test machine running the race detector and other test binaries at once
// can be slow to start a process.
const DefaultStartTimeout = 30 * time.Second

// LogWait bounds Server.WaitLog.
const LogWait = 15 * time.Second

// closeTimeout bounds the graceful part of Server.Close: in-flight requests
// and workers that do not finish within it are cut and killed.
const closeTimeout = 10 * time.Second

// Options configures the dispatcher Start runs. The zero value means one
// worker serving one request at a time with the dispatcher's defaults.
type Options struct {
	// Size is the number of worker processes. If zero, 1.
	Size int
	// Concurrency is the number of requests one worker serves at once
	// (1-1024). If zero, 1.
	Concurrency int
	// Pipeline is how many requests may be outstanding on one busy slot,
	// counting the running one, as the dispatcher's --pipeline flag says
	// (1-64; 1 disables pipelining). If zero, workers.DefaultPipeline, the
	// dispatcher's default.
	Pipeline int
	// Timeout bounds each request from the moment a worker takes it; past
	// it the client gets a 504 and the worker is killed and replaced. If
	// zero, workers.DefaultTimeout.
	Timeout time.Duration
	// StartTimeout bounds each worker's start and handshake. If zero,
	// DefaultStartTimeout.
	StartTimeout time.Duration
	// Env holds "KEY=value" entries added to the environment of the
	// workers, as the dispatcher's --env flag does. Workers otherwise get
	// the dispatcher's minimal environment (workers.MinimalEnv), never the
	// test process's own.
	Env []string
	// Args are passed to the worker binary, as the arguments after "--" on
	// the dispatcher's command line are.
	Args []string
	// Dir is the workers' working directory. If empty, the test's.
	Dir string
	// LogOutput, if set, also receives the dispatcher's log as text lines
	// as they are written (os.Stderr to watch a test live). The log is
	// always kept in memory (Server.Log), and Start prints it with tb.Log
	// when the test fails.
	LogOutput io.Writer
}

// Server is a dispatcher serving a worker binary on a loopback port.
type Server struct {
	// URL is the base URL, "http://127.0.0.1:port", without a trailing
	// slash.
	URL string

	pool    *workers.Pool
	hs      *http.Server
	served  chan error
	sockets string
	logs    *capture

	closeOnce sync.Once
	closeErr  error
}

// Start starts binary (see Build) under a dispatcher configured by opts (at
// most one Options) and returns it once every worker has completed its
// handshake. The dispatcher is closed when the test ends, after which its
// log is printed if the test failed. A worker that does not start fails the
// test with the reason and the worker's last stderr lines.
func Start(tb testing.TB, binary string, opts ...Options) *Server {
	tb.Helper()
	if len(opts) > 1 {
		tb.Fatalf("sdktest.Start: %d Options given, want at most one", len(opts))
	}
	var o Options
	if len(opts) == 1 {
		o = opts[0]
	}
	s, err := NewServer(binary, o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("sdktest: closing the dispatcher: %v", err)
		}
		if tb.Failed() {
			tb.Logf("dispatcher log:\n%s", s.logs.String())
		}
	})
	return s
}

// NewServer is Start for code without a testing.TB (a TestMain, an
// example): it returns the Server or why it could not start, and the caller
// must Close it.
func NewServer(binary string, opts Options) (*Server, error) {
	if opts.Size == 0 {
		opts.Size = 1
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	logs := newCapture()
	logger := logrus.New()
	logger.SetLevel(logrus.DebugLevel)
	logger.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "15:04:05.000", DisableColors: true})
	logger.SetOutput(io.Discard)
	if opts.LogOutput != nil {
		logger.SetOutput(opts.LogOutput)
	}
	logger.AddHook(logs)
	log := logrus.NewEntry(logger)

	// A unix socket path holds at most 107 bytes: keep the directory
	// short, whatever TMPDIR or the test's name.
	sockets, err := os.MkdirTemp("", "st")
	if err != nil {
		return nil, fmt.Errorf("sdktest: %w", err)
	}
	pool, err := workers.NewPool(workers.Config{
		Path:         binary,
		Args:         opts.Args,
		Env:          append(workers.MinimalEnv(), opts.Env...),
		Dir:          opts.Dir,
		Size:         opts.Size,
		Concurrency:  opts.Concurrency,
		Pipeline:     opts.Pipeline,
		Timeout:      opts.Timeout,
		StartTimeout: opts.StartTimeout,
		SocketDir:    sockets,
		Logger:       log,
	})
	if err != nil {
		os.RemoveAll(sockets)
		return nil, fmt.Errorf("sdktest: %w", err)
	}
	if err := pool.Start(context.Background()); err != nil {
		os.RemoveAll(sockets)
		return nil, fmt.Errorf("sdktest: %w", err)
	}
	srv, err := dispatcher.New(dispatcher.Config{Invoker: pool, Logger: log, AccessLog: true})
	if err != nil {
		_ = pool.Close(context.Background())
		os.RemoveAll(sockets)
		return nil, fmt.Errorf("sdktest: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = pool.Close(context.Background())
		os.RemoveAll(sockets)
		return nil, fmt.Errorf("sdktest: %w", err)
	}
	s := &Server{
		URL:     "http://" + ln.Addr().String(),
		pool:    pool,
		hs:      &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second},
		served:  make(chan error, 1),
		sockets: sockets,
		logs:    logs,
	}
	go func() { s.served <- s.hs.Serve(ln) }()
	return s, nil
}

// Close stops accepting requests, lets those in flight finish (cutting them
// after 10 s), stops the workers and removes their socket directory. Later
// calls return the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		var errs []error
		if err := s.hs.Shutdown(ctx); err != nil {
			_ = s.hs.Close()
			errs = append(errs, fmt.Errorf("in-flight requests did not finish: %w", err))
		}
		if err := <-s.served; !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, fmt.Errorf("serve: %w", err))
		}
		if err := s.pool.Close(ctx); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(s.sockets); err != nil {
			errs = append(errs, err)
		}
		// Connections the default client keeps to this server are useless
		// now, as httptest.Server.Close does.
		if t, ok := http.DefaultTransport.(interface{ CloseIdleConnections() }); ok {
			t.CloseIdleConnections()
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Workers returns the process ids of the live workers. After a crash, the
// replacement shows up here once it has completed its handshake.
func (s *Server) Workers() []int { return s.pool.Workers() }

// Entry is one entry of the dispatcher's log: its own events, one access
// log entry per request (message "request", fields method, path, status,
// bytes, duration_ms, pid, req_id), and each line the workers write.
//
// A line a worker logs through sdk.Logger keeps its level and message; its
// request ID is in field "req_id" and its other fields are prefixed with
// "child.". Other worker output lines arrive at info level (error level for
// a Go panic). Worker lines also have fields "worker" (the binary's base
// name), "pid" and "stream" ("stderr" or "stdout").
type Entry struct {
	Time    time.Time
	Level   logrus.Level
	Message string
	Fields  logrus.Fields
}

// String formats e as one text line: time, level, message and fields.
func (e Entry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-5.5s %s", e.Time.Format("15:04:05.000"), strings.ToUpper(e.Level.String()), e.Message)
	for _, k := range sortedKeys(e.Fields) {
		fmt.Fprintf(&b, " %s=%v", k, e.Fields[k])
	}
	return b.String()
}

// Log returns the entries logged so far, oldest first.
func (s *Server) Log() []Entry { return s.logs.entries() }

// WaitLog returns the first entry, logged before or after the call, for
// which match returns true. Worker output reaches the log asynchronously,
// possibly after the response that caused it: WaitLog waits for it, up to
// LogWait, then fails the test.
func (s *Server) WaitLog(tb testing.TB, match func(Entry) bool) Entry {
	tb.Helper()
	e, ok := s.logs.wait(LogWait, match)
	if !ok {
		tb.Fatalf("sdktest: no matching log entry within %s; log:\n%s", LogWait, s.logs.String())
	}
	return e
}
