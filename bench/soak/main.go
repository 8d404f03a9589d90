// Command soak is the dispatcher's chaos soak: it runs the dispatcher in
// each mode (pool, ondemand, oneshot) against the chaos worker
// (testdata/workers/chaos), whose requests fail on purpose in every way a
// handler can fail, drives a bounded loopback load, and reports whether the
// dispatcher kept its promises:
//
//   - every healthy request succeeds, with the right body;
//   - every faulty request gets the status documented for its fault (a
//     crash, a memory limit, a malformed frame: 502; a hang past
//     --timeout: 504; a handler panic: 500 from the worker; a worker that
//     dies between two requests: its 200, and the next request, which it
//     never read, retried transparently), no later than --timeout + 1s
//     after the worker took it;
//   - at the end the configured number of workers is alive, there is no
//     zombie, and once the dispatcher stopped nothing it started is left:
//     no process, socket, temporary file or cgroup cell.
//
// It also prints the dispatcher's resident memory (peak and final),
// goroutines (from the admin listener's /metrics, when the dispatcher has
// --admin-listen) and open descriptors before and after the load, and the
// restarts, quarantines and breaker transitions of its log.
//
// A last phase opens the circuit breaker on purpose and checks that it
// refuses requests with 503 and Retry-After, then closes again.
//
//	go run ./bench/soak                       # 3 modes x 20s, then the breaker phase
//	go run ./bench/soak -duration 10m -modes pool
//
// It exits 0 if every check passed, 1 if one failed, 2 for bad flags, and
// 130 when interrupted (after stopping everything it started).
//
// Why one request per worker process at a time (--concurrency 1
// --pipeline 1, the -worker-concurrency and -pipeline defaults): there is
// one worker binary per dispatcher, so healthy and faulty requests share
// its processes, and a fault ends the process it runs in with whatever
// else that process was doing. With --concurrency > 1 a healthy request
// running in another slot of the same process dies with it (502), and the
// malformed fault writes on every slot. With --pipeline > 1 a healthy
// request may be queued in the worker behind a faulty one: behind a
// protocol violation the dispatcher cannot trust the stream and answers
// 502; behind a worker that died with several requests queued, only the
// last one sent can be proven unread, and the others were delivered and
// may have started: 502, by design (the dispatcher retries a queued
// request only when it knows the worker never started it). With one
// request per process, a fault costs its own request only, and every
// healthy request must succeed: one that lands on a worker which died
// without reading it is retried by the dispatcher on another.
//
// Why the time bound counts from the moment the worker took the request
// (the chaos worker logs it): before that, the request waits for a free
// worker, which admission control bounds (--queue-timeout, then 503), and
// in oneshot mode every request waits for a fresh worker. The table also
// gives the latencies seen by the clients, queueing included. Why --timeout
// 2s: a worker running into its memory limit takes up to about a second to
// be killed on a loaded two-core machine; with 1s, some would be answered
// 504 instead of 502.
//
// The mixed phases run at the default breaker settings: a steady 10% of
// requests that kill their worker must never open it. The breaker has its
// own phase, for a binary that crashes on every request.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/internal/procstatus"
)

type config struct {
	duration      time.Duration
	requests      int
	clients       int
	oneshotCl     int
	faultFrac     float64
	faults        []kind
	modes         []string
	workers       int
	spares        int
	timeout       time.Duration
	memoryLimit   string
	breaker       bool
	dispatcherBin string
	chaosBin      string
	concurrency   int
	pipeline      int
	settle        time.Duration
	seed          uint64
	logDir        string
	maxUpload     int
	extra         []string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var faults, modes, extra string
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "load per mode")
	fs.IntVar(&c.requests, "requests", 0, "stop each mode's load after this many requests (0: no limit; -duration still applies)")
	fs.IntVar(&c.clients, "concurrency", 16, "concurrent clients (closed loops) in pool and ondemand modes")
	fs.IntVar(&c.oneshotCl, "oneshot-concurrency", 4, "concurrent clients in oneshot mode, where every request waits for a fresh worker: more clients only lengthen the queue")
	fs.Float64Var(&c.faultFrac, "faults", 0.10, "fraction of requests that are faulty")
	fs.StringVar(&faults, "kinds", "crash,hang,oom,malformed,exit-after,panic", "faults to inject, comma-separated")
	fs.StringVar(&modes, "modes", "pool,ondemand,oneshot", "modes to run, comma-separated")
	fs.IntVar(&c.workers, "workers", 0, "--pool-size (pool), --max-workers (ondemand), busy workers besides the spares (oneshot) (0: -concurrency)")
	fs.IntVar(&c.spares, "spares", 4, "oneshot: --spares (--max-workers is -workers plus this)")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Second, "the dispatcher's --timeout (a hang lasts that long; the oom fault must be killed within it)")
	fs.StringVar(&c.memoryLimit, "memory-limit", "64M", "the dispatcher's --memory-limit, which the oom fault runs into (\"\": none; if the machine cannot honour it, the oom fault falls back to a bounded allocation and an exit)")
	fs.BoolVar(&c.breaker, "breaker", true, "run the circuit breaker phase")
	fs.StringVar(&c.dispatcherBin, "dispatcher", "", "dispatcher binary (default: built from ./cmd/dispatcher)")
	fs.StringVar(&c.chaosBin, "chaos", "", "chaos worker binary (default: built from ./testdata/workers/chaos)")
	fs.IntVar(&c.concurrency, "worker-concurrency", 1, "the dispatcher's --concurrency (above 1, healthy requests sharing a process with a fault may fail by design)")
	fs.IntVar(&c.pipeline, "pipeline", 1, "the dispatcher's --pipeline (above 1, healthy requests queued behind some faults may fail by design)")
	fs.DurationVar(&c.settle, "settle", 20*time.Second, "how long the workers may take to settle after the load (restart backoff included)")
	fs.Uint64Var(&c.seed, "seed", 0, "random seed of the request mix (0: from the clock; the report prints the one used)")
	fs.StringVar(&c.logDir, "logs", "", "keep the dispatchers' logs in this directory (default: kept in a temporary directory only if a check fails)")
	fs.IntVar(&c.maxUpload, "max-upload", 512<<10, "largest request body of a healthy POST, in bytes (one in four healthy requests is a POST, half of them chunked; a body over 64 KiB, or chunked, is streamed to the worker; 0: no POST)")
	fs.StringVar(&extra, "flags", "", "extra dispatcher flags, space-separated")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./bench/soak [flags]\n\nRuns the dispatcher in each mode against the chaos worker and checks it (see the package doc).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.workers == 0 {
		c.workers = c.clients
	}
	if c.seed == 0 {
		c.seed = uint64(time.Now().UnixNano())
	}
	for _, name := range splitList(faults) {
		k, ok := kindByName(name)
		if !ok || name == "healthy" {
			return nil, fmt.Errorf("-kinds: unknown fault %q", name)
		}
		c.faults = append(c.faults, k)
	}
	for _, m := range splitList(modes) {
		if m != "pool" && m != "ondemand" && m != "oneshot" {
			return nil, fmt.Errorf("-modes: unknown mode %q", m)
		}
		c.modes = append(c.modes, m)
	}
	c.extra = strings.Fields(extra)
	switch {
	case c.duration <= 0:
		return nil, errors.New("-duration must be positive")
	case c.requests < 0:
		return nil, errors.New("-requests must not be negative")
	case c.clients < 1 || c.oneshotCl < 1:
		return nil, errors.New("-concurrency and -oneshot-concurrency must be at least 1")
	case c.faultFrac < 0 || c.faultFrac > 1:
		return nil, errors.New("-faults must be between 0 and 1")
	case c.faultFrac > 0 && len(c.faults) == 0:
		return nil, errors.New("-kinds is empty")
	case len(c.modes) == 0 && !c.breaker:
		return nil, errors.New("nothing to run: -modes is empty and -breaker=false")
	case c.workers < 1:
		return nil, errors.New("-workers must be at least 1")
	case c.spares < 0:
		return nil, errors.New("-spares must not be negative")
	case c.timeout <= 0:
		return nil, errors.New("-timeout must be positive")
	case c.concurrency < 1 || c.pipeline < 1:
		return nil, errors.New("-worker-concurrency and -pipeline must be at least 1")
	case c.settle <= 0:
		return nil, errors.New("-settle must be positive")
	case c.maxUpload < 0:
		return nil, errors.New("-max-upload must not be negative")
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func main() { os.Exit(run()) }

func run() int {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	// The first SIGINT or SIGTERM stops the soak in order (the dispatcher
	// stopped, orphans killed, temporary files removed); a second one ends
	// it at once (the dispatcher dies with it: Pdeathsig).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "soak: interrupted: stopping what it started (again to stop at once)")
		cancel()
		signal.Reset(os.Interrupt, syscall.SIGTERM)
	}()
	s := &soak{cfg: cfg, known: map[int]bool{}}
	if err := becomeSubreaper(); err != nil {
		s.progress("cannot become a child subreaper (%v): processes that outlive a dispatcher are found by their binary only", err)
	}
	code := s.main(ctx)
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "soak: interrupted; everything it started is stopped")
		return 130
	}
	return code
}

type soak struct {
	cfg       *config
	work      string // temporary directory: binaries, logs, the dispatchers' TMPDIRs
	logDir    string
	hasAdmin  bool // the dispatcher has --admin-listen
	memLimit  string
	memNote   string // how the oom fault runs
	chaosReal string // the chaos binary's resolved path (/proc/PID/exe)

	mu    sync.Mutex
	known map[int]bool // the soak's own children (dispatchers), not orphans
}

func (s *soak) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak: "+format+"\n", args...)
}

func (s *soak) main(ctx context.Context) int {
	var err error
	if s.work, err = os.MkdirTemp("", "soak-"); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	// Searchable by others: a root dispatcher's workers run as nobody and
	// must reach their socket directories in the TMPDIRs made here.
	if err := os.Chmod(s.work, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	keep := false
	defer func() {
		if keep {
			os.RemoveAll(filepath.Join(s.work, "bin"))
			fmt.Fprintf(os.Stderr, "soak: the dispatchers' logs are in %s\n", s.logDir)
		} else {
			os.RemoveAll(s.work)
		}
	}()
	s.logDir = s.work
	if s.cfg.logDir != "" {
		if err := os.MkdirAll(s.cfg.logDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			return 1
		}
		s.logDir = s.cfg.logDir
	}
	if err := s.binaries(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	if s.hasAdmin, err = helpMentions(s.cfg.dispatcherBin, "admin-listen"); err != nil {
		fmt.Fprintln(os.Stderr, "soak: dispatcher --help:", err)
		return 1
	}
	s.memLimit = s.cfg.memoryLimit
	if s.memLimit == "" || s.memLimit == "0" {
		s.memLimit = ""
		s.memNote = "no --memory-limit asked: bounded allocation, then exit"
	}

	fmt.Printf("chaos soak: %s per mode, %.0f%% faults (%s), --timeout %s, seed %d\n",
		s.cfg.duration, 100*s.cfg.faultFrac, kindNames(s.cfg.faults), s.cfg.timeout, s.cfg.seed)
	var results []*result
	for _, mode := range s.cfg.modes {
		if ctx.Err() != nil {
			break
		}
		r := s.runMode(ctx, mode)
		if ctx.Err() != nil {
			break // an interrupted phase proves nothing
		}
		r.print(os.Stdout)
		results = append(results, r)
	}
	if s.cfg.breaker && ctx.Err() == nil {
		r := s.runBreaker(ctx)
		if ctx.Err() == nil {
			r.print(os.Stdout)
			results = append(results, r)
		}
	}
	if ctx.Err() != nil {
		fmt.Println("\nSOAK INTERRUPTED")
		return 1
	}
	fmt.Println("\n=== summary")
	pass := true
	for _, r := range results {
		status := "PASS"
		if len(r.failures) > 0 {
			status = fmt.Sprintf("FAIL (%d checks)", len(r.failures))
			pass = false
		}
		fmt.Printf("  %-9s %s\n", r.name, status)
	}
	if pass {
		fmt.Println("SOAK PASS")
		return 0
	}
	fmt.Println("SOAK FAIL")
	keep = s.cfg.logDir == ""
	return 1
}

func kindNames(ks []kind) string {
	var n []string
	for _, k := range ks {
		n = append(n, k.name)
	}
	return strings.Join(n, ", ")
}

// binaries builds the dispatcher and the chaos worker unless given.
func (s *soak) binaries(ctx context.Context) error {
	var pkgs []string
	if s.cfg.dispatcherBin == "" {
		pkgs = append(pkgs, "./cmd/dispatcher")
	}
	if s.cfg.chaosBin == "" {
		pkgs = append(pkgs, "./testdata/workers/chaos")
	}
	if len(pkgs) > 0 {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		bin := filepath.Join(s.work, "bin")
		s.progress("building %s", strings.Join(pkgs, " "))
		cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", bin + "/"}, pkgs...)...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
		if s.cfg.dispatcherBin == "" {
			s.cfg.dispatcherBin = filepath.Join(bin, "dispatcher")
		}
		if s.cfg.chaosBin == "" {
			s.cfg.chaosBin = filepath.Join(bin, "chaos")
		}
	}
	for _, p := range []*string{&s.cfg.dispatcherBin, &s.cfg.chaosBin} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return err
		}
		*p = abs
	}
	real, err := filepath.EvalSymlinks(s.cfg.chaosBin)
	if err != nil {
		return err
	}
	s.chaosReal = real
	return nil
}

// moduleRoot returns the directory of this module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	b, err := os.ReadFile(gomod)
	if gomod == "" || gomod == os.DevNull || err != nil || !strings.Contains(string(b), "module github.com/childproc/dispatcher\n") {
		return "", errors.New("run the soak from the dispatcher's repository, or give -dispatcher and -chaos")
	}
	return filepath.Dir(gomod), nil
}

// result is one phase's report.
type result struct {
	name     string
	header   []string
	table    []string
	lines    []string
	failures []string
}

func (r *result) fail(format string, args ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

func (r *result) add(format string, args ...any) {
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "\n=== %s\n", r.name)
	for _, l := range r.header {
		fmt.Fprintf(w, "  %s\n", l)
	}
	for _, l := range r.table {
		fmt.Fprintf(w, "  %s\n", l)
	}
	for _, l := range r.lines {
		fmt.Fprintf(w, "  %s\n", l)
	}
	if len(r.failures) == 0 {
		fmt.Fprintln(w, "  result: PASS")
		return
	}
	fmt.Fprintln(w, "  result: FAIL")
	for _, f := range r.failures {
		fmt.Fprintf(w, "    - %s\n", strings.ReplaceAll(f, "\n", "\n      "))
	}
}

// session is one dispatcher run and what the soak watches of it.
type session struct {
	s      *soak
	d      *dispatcher
	r      *result
	tmpdir string

	sampled  chan struct{}
	mu       sync.Mutex
	rssPeak  int64
	seen     map[int]uint64 // every child seen: pid -> start time
	maxAlive int
}

// start starts a dispatcher with args, falling back to no --memory-limit
// if the machine cannot honour it.
func (s *soak) start(ctx context.Context, r *result, name string, args []string, memLimit bool) (*session, error) {
	for attempt := 0; ; attempt++ {
		tmp := filepath.Join(s.work, fmt.Sprintf("%s-tmp%d", name, attempt))
		if err := os.Mkdir(tmp, 0o755); err != nil {
			return nil, err
		}
		a := append(slices.Clone(args), s.cfg.extra...)
		if memLimit && s.memLimit != "" {
			// The worker cannot read its cgroup in the sandbox: tell it.
			a = append(a, "--memory-limit", s.memLimit, "--env", "CHAOS_MEMORY_LIMIT="+s.memLimit)
		}
		admin := ""
		if s.hasAdmin {
			var err error
			if admin, err = freeLoopbackAddr(); err != nil {
				return nil, err
			}
		}
		logPath := filepath.Join(s.logDir, fmt.Sprintf("%s.log", name))
		if attempt > 0 {
			logPath = filepath.Join(s.logDir, fmt.Sprintf("%s.%d.log", name, attempt))
		}
		d, err := startDispatcher(ctx, s.cfg.dispatcherBin, a, tmp, logPath, admin)
		if d != nil {
			s.mu.Lock()
			s.known[d.pid] = true
			s.mu.Unlock()
		}
		var se *startError
		if memLimit && s.memLimit != "" && errors.As(err, &se) && se.status == 2 && strings.Contains(se.tail, "memory-limit") {
			// Not honoured here (no memory controller, or not root): the
			// oom fault falls back to a bounded allocation and an exit.
			why := firstLine(se.tail)
			if _, after, ok := strings.Cut(why, "cannot honour it: "); ok {
				why, _, _ = strings.Cut(after, ":")
			}
			s.memNote = "fallback: bounded allocation, then exit (--memory-limit refused: " + why + ")"
			s.progress("--memory-limit %s refused by this machine; the oom fault falls back to a bounded allocation", s.memLimit)
			s.memLimit = ""
			if left, _ := dirEntries(tmp); len(left) > 0 {
				r.fail("the refused start left in TMPDIR: %s", strings.Join(left, ", "))
			}
			continue
		}
		if err != nil {
			if d != nil {
				d.kill()
			}
			return nil, err
		}
		if memLimit && s.memLimit != "" && s.memNote == "" {
			s.memNote = "cgroup: --memory-limit " + s.memLimit + " (the kernel kills the worker)"
		}
		ss := &session{s: s, d: d, r: r, tmpdir: tmp, sampled: make(chan struct{}), seen: map[int]uint64{}}
		go ss.sample()
		return ss, nil
	}
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// sample records the dispatcher's resident memory and its children every
// 200ms until the dispatcher exits. (Children too short-lived to be seen
// are still caught if they outlive it: as orphans of the soak, or by
// their binary.)
func (ss *session) sample() {
	defer close(ss.sampled)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if rss, err := procstatus.Bytes(ss.d.pid, "VmRSS"); err == nil {
			ss.mu.Lock()
			ss.rssPeak = max(ss.rssPeak, rss)
			ss.mu.Unlock()
		}
		kids := childrenOf(ss.d.pid)
		ss.mu.Lock()
		n := 0
		for _, k := range kids {
			ss.seen[k.pid] = k.startTime
			if k.state != 'Z' {
				n++
			}
		}
		ss.maxAlive = max(ss.maxAlive, n)
		ss.mu.Unlock()
		select {
		case <-ss.d.exited:
			return
		case <-t.C:
		}
	}
}

// children counts the dispatcher's live children and zombies now.
func (ss *session) children() (alive, zombies int) {
	for _, k := range childrenOf(ss.d.pid) {
		ss.mu.Lock()
		ss.seen[k.pid] = k.startTime
		ss.mu.Unlock()
		if k.state == 'Z' {
			zombies++
		} else {
			alive++
		}
	}
	return alive, zombies
}

// settle waits until the children are as wanted (and no zombie is left),
// at most the -settle time. It returns the last counts.
func (ss *session) settle(ctx context.Context, ok func(alive int) bool) (alive, zombies int, settled bool) {
	deadline := time.Now().Add(ss.s.cfg.settle)
	for {
		alive, zombies = ss.children()
		if ok(alive) && zombies == 0 {
			return alive, zombies, true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return alive, zombies, false
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// abandon stops the dispatcher if it still runs (a phase that ended
// early, or an interruption) and kills whatever of it outlived it.
func (ss *session) abandon() {
	if ss.d.running() {
		ss.d.stop(10 * time.Second)
	}
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	reapOrphans(ss.s.known)
}

// quiet waits (at most 5s) until the dispatcher holds no client
// connection, on its listener or its admin listener, so that its open
// descriptors and goroutines are its own.
func (ss *session) quiet(ctx context.Context) {
	var ports []int
	for _, a := range []string{ss.d.addr, ss.d.admin} {
		if _, port, err := net.SplitHostPort(a); err == nil {
			p, _ := strconv.Atoi(port)
			ports = append(ports, p)
		}
	}
	busy := func() bool {
		for _, p := range ports {
			if tcpConns(p) > 0 {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(5 * time.Second)
	for busy() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond) // polling, bounded by the deadline
	}
}

// steady measures the dispatcher's open descriptors and goroutines once
// two readings 200ms apart agree (at most 5s: the last reading then), so
// that a worker being started or a connection being closed does not count.
func (ss *session) steady(ctx context.Context) (fds, goroutines int) {
	read := func() (int, int) {
		ss.quiet(ctx)
		f, _ := openFDs(ss.d.pid)
		g := ss.d.goroutines()
		return f, g
	}
	fds, goroutines = read()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond) // polling, bounded by the deadline
		f, g := read()
		if f == fds && g == goroutines {
			break
		}
		fds, goroutines = f, g
	}
	return fds, goroutines
}

// finish stops the dispatcher and checks that it left nothing behind.
func (ss *session) finish() {
	r, d := ss.r, ss.d
	hwm, _ := procstatus.Bytes(d.pid, "VmHWM")
	took, killed := d.stop(30 * time.Second)
	<-ss.sampled
	ss.mu.Lock()
	ss.rssPeak = max(ss.rssPeak, hwm)
	seen := clone(ss.seen)
	ss.mu.Unlock()
	stopLine := fmt.Sprintf("stop: SIGTERM -> %s in %s", d.exitDesc(), took.Round(time.Millisecond))
	if killed {
		r.fail("the dispatcher did not stop within 30s of SIGTERM: killed")
	} else if d.state.ExitCode() != 0 {
		r.fail("the dispatcher exited with %s after SIGTERM; last log lines:\n%s", d.exitDesc(), d.lastLines())
	}
	r.add("%s", stopLine)

	// What outlived it: former children (by pid and start time), orphans
	// reparented to the soak, anything running the chaos binary. Workers
	// killed with the dispatcher may take a moment to go: poll.
	var left, orphans, running []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		left = left[:0]
		for pid, st := range seen {
			if p, ok := alive(pid, st); ok {
				left = append(left, fmt.Sprintf("pid %d (%s, state %c, parent %d)", pid, p.comm, p.state, p.ppid))
			}
		}
		running = running[:0]
		for _, p := range processesRunning(ss.s.chaosReal) {
			running = append(running, fmt.Sprintf("pid %d (state %c, parent %d)", p.pid, p.state, p.ppid))
		}
		if len(left) == 0 && len(running) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling, bounded by the deadline
	}
	ss.s.mu.Lock()
	orphans = reapOrphans(ss.s.known)
	ss.s.mu.Unlock()
	tmpLeft, err := dirEntries(ss.tmpdir)
	if err != nil {
		r.fail("reading the dispatcher's TMPDIR: %v", err)
	}
	cells := leftoverCells(d.pid)
	r.add("after exit: %d of %d former children alive, %d processes running the worker binary, %d orphans, %d sockets/temp files in its TMPDIR, %d cgroup cells",
		len(left), len(seen), len(running), len(orphans), len(tmpLeft), len(cells))
	if len(left) > 0 {
		r.fail("former children still alive after the dispatcher exited: %s", strings.Join(left, ", "))
	}
	if len(running) > 0 {
		r.fail("processes still running the worker binary: %s", strings.Join(running, ", "))
	}
	if len(orphans) > 0 {
		r.fail("orphans of the dispatcher (reparented to the soak, now killed): %s", strings.Join(orphans, ", "))
	}
	if len(tmpLeft) > 0 {
		r.fail("left in the dispatcher's TMPDIR: %s", strings.Join(tmpLeft, ", "))
	}
	if len(cells) > 0 {
		r.fail("cgroup cells left: %s", strings.Join(cells, ", "))
	}
}

// events describes the dispatcher's log events.
func (ss *session) events() *events {
	ev := ss.d.ev.snapshot()
	r := ss.r
	var killed []string
	for reason, n := range ev.killed {
		killed = append(killed, fmt.Sprintf("%d %s", n, reason))
	}
	slices.Sort(killed)
	kdesc := ""
	if len(killed) > 0 {
		kdesc = " (" + strings.Join(killed, ", ") + ")"
	}
	sum := 0
	for _, n := range ev.killed {
		sum += n
	}
	r.add("restarts: %d: %d exited on their own, %d killed%s, %d out of memory", ss.d.ev.restarts(), ev.exited, sum, kdesc, ev.oomKilled)
	r.add("quarantines: %d; breaker: %d opened, %d probes, %d closed; failed starts: %d; refused (overload): %d",
		ev.quarantined, ev.breakerOpen, ev.breakerProbe, ev.breakerClosed, ev.startFailed, ev.refused)
	if len(ev.otherErrors) > 0 {
		var o []string
		for m, n := range ev.otherErrors {
			o = append(o, fmt.Sprintf("%dx %q", n, m))
		}
		slices.Sort(o)
		r.add("other error lines in the log: %s", strings.Join(o, "; "))
	}
	if len(ev.nonJSON) > 0 {
		r.add("lines that are not JSON in the log: %d, first: %q", len(ev.nonJSON), ev.nonJSON[0])
	}
	return ev
}

// modeArgs returns the dispatcher flags of a mode.
func (s *soak) modeArgs(mode string) (args []string, want func(int) bool, wantDesc string) {
	c := s.cfg
	args = []string{"--workers", c.chaosBin, "--mode", mode, "--timeout", c.timeout.String(),
		"--concurrency", strconv.Itoa(c.concurrency), "--pipeline", strconv.Itoa(c.pipeline)}
	switch mode {
	case "pool":
		args = append(args, "--pool-size", strconv.Itoa(c.workers))
		want, wantDesc = func(n int) bool { return n == c.workers }, strconv.Itoa(c.workers)
	case "ondemand":
		args = append(args, "--max-workers", strconv.Itoa(c.workers))
		want, wantDesc = func(n int) bool { return n <= c.workers }, "at most "+strconv.Itoa(c.workers)
	case "oneshot":
		args = append(args, "--max-workers", strconv.Itoa(c.workers+c.spares), "--spares", strconv.Itoa(c.spares))
		want, wantDesc = func(n int) bool { return n == c.spares }, strconv.Itoa(c.spares)+" spares"
	}
	return args, want, wantDesc
}

func (s *soak) runMode(ctx context.Context, mode string) *result {
	c := s.cfg
	r := &result{name: mode}
	args, want, wantDesc := s.modeArgs(mode)
	s.progress("%s: starting the dispatcher", mode)
	ss, err := s.start(ctx, r, mode, args, true)
	if err != nil {
		r.fail("start: %v", err)
		return r
	}
	defer ss.abandon()
	clients := c.clients
	if mode == "oneshot" {
		clients = c.oneshotCl
	}
	r.header = append(r.header, fmt.Sprintf("%d clients; dispatcher %s", clients, strings.Join(append(args[2:], c.extra...), " ")),
		"oom: "+s.memNote)
	base := "http://" + ss.d.addr
	limit := 10*time.Second + c.timeout + 10*time.Second // queue timeout + timeout + slack

	// Warm-up: every worker slot serves, and the counts settle.
	warm := runLoad(ctx, loadConfig{url: base, clients: clients, duration: time.Minute, requests: 4 * clients,
		timeout: c.timeout, clientLimit: limit, maxUpload: c.maxUpload, seed: c.seed})
	h := warm.byKind["healthy"]
	h.finalize(newEvents(), limit)
	if h.wrong > 0 {
		r.fail("warm-up: %d of %d healthy requests failed: %s", h.wrong, h.sent, strings.Join(h.examples, "; "))
	}
	if _, _, ok := ss.settle(ctx, want); !ok && ctx.Err() == nil {
		alive, zombies := ss.children()
		r.fail("after the warm-up: %d children alive, %d zombies, want %s and none", alive, zombies, wantDesc)
	}
	fd0, g0 := ss.steady(ctx)
	rss0, _ := procstatus.Bytes(ss.d.pid, "VmRSS")
	alive0, _ := ss.children()

	s.progress("%s: %s of load", mode, c.duration)
	la0 := loadAvg()
	probe := startStallProbe()
	load := runLoad(ctx, loadConfig{url: base, clients: clients, duration: c.duration, requests: c.requests,
		faultFrac: c.faultFrac, faults: c.faults, timeout: c.timeout, clientLimit: limit, maxUpload: c.maxUpload, seed: c.seed + 1})
	if ctx.Err() != nil {
		return r
	}
	stall := probe.stop()
	r.add("machine: load average %s at the start, %s at the end; the soak's own timers fired up to %s late", la0, loadAvg(), fmtDur(stall))
	if stall > 500*time.Millisecond {
		r.add("warning: the machine was starved of CPU during the load: late answers, timeouts and queue timeouts may be its doing")
	}
	s.progress("%s: load done; waiting for the workers to settle", mode)
	t0 := time.Now()
	alive1, zombies1, settled := ss.settle(ctx, want)
	settleTook := time.Since(t0)
	fd1, g1 := ss.steady(ctx)
	rss1, _ := procstatus.Bytes(ss.d.pid, "VmRSS")
	ss.mu.Lock()
	peak, maxAlive := max(ss.rssPeak, rss1), ss.maxAlive
	ss.mu.Unlock()

	r.add("dispatcher: RSS %s after warm-up, %s peak, %s at end; goroutines %s -> %s; open fds %d -> %d (with %d -> %d children)",
		fmtBytes(rss0), fmtBytes(peak), fmtBytes(rss1), fmtCount(g0), fmtCount(g1), fd0, fd1, alive0, alive1)
	r.add("processes: %d children alive at end (configured: %s; at most %d at once), %d zombies; settled in %s",
		alive1, wantDesc, maxAlive, zombies1, settleTook.Round(time.Millisecond))
	if !settled {
		r.fail("%d children alive and %d zombies %s after the load; want %s and no zombie", alive1, zombies1, c.settle, wantDesc)
	}
	ss.finish()
	ev := ss.events()
	s.table(r, load, ev)
	if oom := load.byKind["oom"]; oom != nil && oom.sent > 0 {
		switch {
		case ev.oomCgroup > 0 || strings.HasPrefix(s.memNote, "cgroup"):
			r.add("oom: %d requests; %d workers took one and found their memory limit; the log says out of memory %d times", oom.sent, ev.oomCgroup, ev.oomKilled)
			if ev.oomKilled != ev.oomCgroup || ev.oomUnenforced > 0 {
				r.fail("oom: %d workers ran into their memory limit but %d out-of-memory kills were logged (%d outlived the limit)", ev.oomCgroup, ev.oomKilled, ev.oomUnenforced)
			}
		default:
			r.add("oom: %d requests; %d workers took one: a bounded allocation, then an exit (no memory limit)", oom.sent, ev.oomFallback)
		}
	}
	if ea := load.byKind["exit-after"]; ea != nil && ea.sent > 0 {
		r.add("exit-after: %d workers armed their death on their next read of the slot (seccomp), %d could not and exited right after the response",
			len(ev.exitAfterReq)-ev.exitAfterRacy, ev.exitAfterRacy)
	}
	r.add("retried: %d requests a worker died without reading, %d of them with a streamed body (sent again from the dispatcher's copy)", ev.retried, ev.retriedStream)
	statusCheck(r, ev, load)
	return r
}

// table checks the answers of each kind (the time bounds against the
// worker's log lines) and makes the table of requests.
func (s *soak) table(r *result, load *loadResult, ev *events) {
	c := s.cfg
	limit := c.timeout + time.Second
	total := 0
	for _, st := range load.byKind {
		total += st.sent
		st.finalize(ev, limit)
	}
	r.table = append(r.table,
		fmt.Sprintf("load: %d requests in %s (%.0f/s); latency: from sending to the end of the body, queueing included", total, load.elapsed.Round(time.Millisecond), float64(total)/load.elapsed.Seconds()),
		fmt.Sprintf("late: answered more than --timeout + 1s (%s) after the worker took the request", limit),
		"lost: read by a worker that then exited on its own after an exit-after answer (502, by design)",
		fmt.Sprintf("%-18s %7s %7s %6s %5s %5s %9s %9s %9s  %s", "requests", "sent", "ok", "wrong", "late", "lost", "p50", "p99", "max", "statuses"))
	for _, k := range append([]kind{kinds[0]}, c.faults...) {
		st := load.byKind[k.name]
		late := "-"
		if k.bound {
			late = strconv.Itoa(st.late)
		}
		r.table = append(r.table, fmt.Sprintf("%-18s %7d %7d %6d %5s %5d %9s %9s %9s  %s", fmt.Sprintf("%s (%d)", k.name, k.status), st.sent, st.ok, st.wrong, late, st.lost,
			fmtDur(st.percentile(0.5)), fmtDur(st.percentile(0.99)), fmtDur(st.percentile(1)), fmtStatuses(st.statuses)))
		switch {
		case st.wrong > 0:
			r.fail("%s: %d of %d requests did not get %d: %s", k.name, st.wrong, st.sent, k.status, strings.Join(st.examples, "; "))
		case st.late > 0:
			r.fail("%s: %d of %d answers came later than --timeout + 1s: %s", k.name, st.late, st.sent, strings.Join(st.examples, "; "))
		}
	}
	if load.byKind["healthy"].sent == 0 {
		r.fail("no healthy request was sent")
	}
}

// statusCheck compares the access log with what the clients got.
func statusCheck(r *result, ev *events, load *loadResult) {
	got := map[int]int{}
	for _, st := range load.byKind {
		for s, n := range st.statuses {
			if code, err := strconv.Atoi(s); err == nil {
				got[code] += n
			}
		}
	}
	var diff []string
	for code, n := range got {
		// The access log also has the warm-up's requests (200s).
		if logged := ev.access[code]; logged < n {
			diff = append(diff, fmt.Sprintf("%d: %d answered, %d logged", code, n, logged))
		}
	}
	if len(diff) > 0 {
		slices.Sort(diff)
		r.fail("the access log misses answers: %s", strings.Join(diff, ", "))
	}
}

// runBreaker opens the circuit breaker on purpose: a pool of one worker,
// --breaker-failures 3, crashes until a request is refused; then healthy
// requests until one succeeds.
func (s *soak) runBreaker(ctx context.Context) *result {
	const failures = 3
	const firstOpen = 5 * time.Second // the breaker's first open period (workers.BreakerConfig.Backoff default)
	c := s.cfg
	r := &result{name: "breaker"}
	args := []string{"--workers", c.chaosBin, "--mode", "pool", "--pool-size", "1", "--concurrency", "1", "--pipeline", "1",
		"--timeout", c.timeout.String(), "--breaker-min-requests", strconv.Itoa(failures + 1), "--breaker-window", "1m"}
	r.header = append(r.header, "dispatcher "+strings.Join(append(args[2:], c.extra...), " "))
	s.progress("breaker: starting the dispatcher")
	ss, err := s.start(ctx, r, "breaker", args, false)
	if err != nil {
		r.fail("start: %v", err)
		return r
	}
	defer ss.abandon()
	base := "http://" + ss.d.addr
	client := &http.Client{Transport: newTransport(1), Timeout: 30 * time.Second}
	get := func(q string) (int, http.Header, string, time.Duration, error) {
		t0 := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/?"+q, nil)
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, "", time.Since(t0), err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header, strings.TrimSpace(string(b)), time.Since(t0), err
	}
	if code, _, body, _, err := get("fault=none&token=warm"); err != nil || code != 200 {
		r.fail("warm-up request: %d %v %s", code, err, body)
		ss.finish()
		return r
	}
	// Crash the worker until the breaker refuses.
	crashes := 0
	var opened time.Time
	for i := 0; i < 3*failures && ctx.Err() == nil; i++ {
		code, h, body, lat, err := get("fault=crash&how=exit")
		if err != nil {
			r.fail("crash request %d: %v", i+1, err)
			break
		}
		if code == http.StatusServiceUnavailable {
			opened = time.Now()
			ra, _ := strconv.Atoi(h.Get("Retry-After"))
			r.add("after %d crashes (502): 503 in %s, Retry-After %q, body %q", crashes, fmtDur(lat), h.Get("Retry-After"), body)
			if ra < 1 || h.Get("X-Dispatcher-Error") != "true" || !strings.Contains(body, "quarantined") {
				r.fail("the breaker's 503 lacks Retry-After (>= 1), X-Dispatcher-Error or an explanation: Retry-After %q, body %q", h.Get("Retry-After"), body)
			}
			break
		}
		if code != http.StatusBadGateway || lat > c.timeout+time.Second {
			r.fail("crash request %d: %d in %s (want 502 within %s): %s", i+1, code, fmtDur(lat), c.timeout+time.Second, body)
		}
		crashes++
	}
	switch {
	case opened.IsZero():
		r.fail("the breaker never refused a request after %d crashes", crashes)
	case crashes != failures:
		r.fail("the breaker opened after %d crashes, want %d (the warm-up request and %d crashes reach --breaker-min-requests)", crashes, failures, failures)
	}
	// Healthy requests until one gets through: 503s meanwhile.
	if !opened.IsZero() {
		refused, closedAfter := 0, time.Duration(0)
		for ctx.Err() == nil && time.Since(opened) < firstOpen+15*time.Second {
			code, h, body, _, err := get("fault=none&token=probe")
			if err == nil && code == http.StatusOK {
				closedAfter = time.Since(opened)
				break
			}
			if err != nil || code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
				r.fail("while the breaker is open: %d %v %q (want 503 with Retry-After)", code, err, body)
				break
			}
			refused++
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		r.add("open for %s: %d healthy requests refused with 503, then served again", fmtDur(closedAfter), refused)
		switch {
		case closedAfter == 0:
			r.fail("the breaker did not close within %s", firstOpen+15*time.Second)
		case closedAfter < firstOpen-time.Second || closedAfter > firstOpen+5*time.Second:
			r.fail("the breaker closed after %s, want about %s", fmtDur(closedAfter), firstOpen)
		}
		for i := 0; i < 5 && ctx.Err() == nil; i++ {
			if code, _, body, _, err := get("fault=none&token=after"); err != nil || code != 200 {
				r.fail("after the breaker closed: %d %v %q", code, err, body)
				break
			}
		}
	}
	alive, zombies, settled := ss.settle(ctx, func(n int) bool { return n == 1 })
	r.add("processes: %d children alive at end (configured: 1), %d zombies", alive, zombies)
	if !settled {
		r.fail("%d children alive and %d zombies after the phase; want 1 and none", alive, zombies)
	}
	ss.finish()
	ev := ss.events()
	if ev.breakerOpen != 1 || ev.breakerProbe != 1 || ev.breakerClosed != 1 {
		r.fail("breaker transitions logged: %d opened, %d probes, %d closed; want 1 each", ev.breakerOpen, ev.breakerProbe, ev.breakerClosed)
	}
	return r
}

// loadAvg returns the 1-minute load average and the number of CPUs.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return fmt.Sprintf("%s (%d CPUs)", f[0], runtime.NumCPU())
}

// stallProbe measures how late a timer of the soak fires, as a hint of how
// starved of CPU the machine is (a dispatcher starved alike answers late).
type stallProbe struct {
	done chan struct{}
	max  chan time.Duration
}

func startStallProbe() *stallProbe {
	p := &stallProbe{done: make(chan struct{}), max: make(chan time.Duration, 1)}
	go func() {
		const tick = 10 * time.Millisecond
		var worst time.Duration
		t := time.NewTicker(tick)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-p.done:
				p.max <- worst
				return
			case <-t.C:
				now := time.Now()
				worst = max(worst, now.Sub(last)-tick)
				last = now
			}
		}
	}()
	return p
}

func (p *stallProbe) stop() time.Duration {
	close(p.done)
	return <-p.max
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func fmtBytes(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func fmtCount(n int) string {
	if n < 0 {
		return "n/a"
	}
	return strconv.Itoa(n)
}

func fmtStatuses(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s:%d", k, m[k]))
	}
	return strings.Join(out, " ")
}
