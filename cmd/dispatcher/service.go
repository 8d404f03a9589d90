package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/admin"
	"github.com/childproc/dispatcher/dispatcher"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
)

// startNotice is how long workers may take to start before the log says
// that the dispatcher is waiting for them (or half --start-timeout, if
// shorter).
const startNotice = 2 * time.Second

// service is the running dispatcher: its functions, their pools and the
// router in front of them, and what reloads them.
type service struct {
	m       *Main
	args    []string
	log     *logrus.Entry
	metrics *admin.Metrics
	admin   *admin.Server
	router  *dispatcher.Router

	reloading sync.Mutex // one reload at a time
	mu        sync.Mutex
	opts      *options
	live      []*liveFunction // in the config's order
	draining  sync.WaitGroup  // pools replaced by reloads, finishing
}

// liveFunction is a function being served.
type liveFunction struct {
	opts *options
	fn   *workers.Function
	iso  *isolation
	key  string // its workersKey when they started
}

// frontFlags are the per-function flags that configure only the HTTP front
// of a function (dispatcher.Config), which every reload makes anew: a
// change to them, as to a route, keeps the workers.
var frontFlags = map[string]bool{"max-body": true, "max-response": true, "max-headers": true, "trusted-proxies": true}

// workersKey describes what a function's workers depend on: the binary
// file now at its path (device, inode, size, modification time), its
// arguments and every setting but the global ones and those of the HTTP
// front. A reload keeps the workers of a function whose key is unchanged.
func (fo *options) workersKey() string {
	var b strings.Builder
	if fi, err := os.Stat(fo.workers); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			fmt.Fprintf(&b, "binary %d:%d %d %d.%09d\n", st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		}
	}
	fmt.Fprintf(&b, "args %q\n", fo.workerArgs)
	fmt.Fprintf(&b, "env-file contents %s\n", envDigest(fo.isolation.fileEnv))
	for _, name := range slices.Sorted(maps.Keys(fo.values)) {
		if !globalFlags[name] && !frontFlags[name] {
			fmt.Fprintf(&b, "%s=%q\n", name, fo.values[name])
		}
	}
	return b.String()
}

func newService(m *Main, args []string, o *options, log *logrus.Entry) *service {
	s := &service{m: m, args: args, log: log, opts: o}
	build := readBuild()
	s.metrics = admin.NewMetrics(s.functions, build)
	s.admin = admin.New(s.functions, s.metrics, build.String())
	if o.adminPprof {
		s.admin.EnableProfiling()
	}
	if o.adminShowQuery {
		s.admin.ShowQueries()
	}
	return s
}

// functions lists the functions served now, for the admin endpoints.
func (s *service) functions() []admin.Function {
	s.mu.Lock()
	defer s.mu.Unlock()
	fs := make([]admin.Function, len(s.live))
	for i, lf := range s.live {
		fs[i] = admin.Function{Name: lf.opts.name, Route: lf.opts.host + lf.opts.route, Pool: lf.fn.Pool()}
	}
	return fs
}

// start starts every function's workers and the router.
func (s *service) start(ctx context.Context) error {
	keys := make([]string, len(s.opts.functions))
	for i, fo := range s.opts.functions {
		keys[i] = fo.workersKey()
	}
	pools, isos, err := s.startPools(ctx, s.opts, s.opts.functions)
	if err != nil {
		return err
	}
	for i, fo := range s.opts.functions {
		s.live = append(s.live, &liveFunction{opts: fo, fn: workers.NewFunction(fo.name, pools[i]), iso: isos[i], key: keys[i]})
	}
	routes, err := s.routes(s.live)
	if err == nil {
		s.router, err = dispatcher.NewRouter(routes)
	}
	if err != nil {
		s.close(context.Background())
		return err
	}
	return nil
}

// startPools starts a pool for each of fns, functions of o: all or none.
func (s *service) startPools(ctx context.Context, o *options, fns []*options) ([]*workers.Pool, []*isolation, error) {
	pools := make([]*workers.Pool, len(fns))
	isos := make([]*isolation, len(fns))
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fo := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pools[i], isos[i], errs[i] = s.startPool(ctx, o, fo)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for i := range pools {
			if pools[i] != nil {
				_ = pools[i].Close(context.Background())
			}
			if isos[i] != nil {
				isos[i].close()
			}
		}
		return nil, nil, err
	}
	return pools, isos, nil
}

func (s *service) startPool(ctx context.Context, o, fo *options) (*workers.Pool, *isolation, error) {
	log := s.log
	if o.config != "" {
		log = log.WithField("function", fo.name)
	}
	iso, err := s.setupIsolation(fo, log)
	if err != nil {
		return nil, nil, err
	}
	cfg := fo.poolConfig(iso, log)
	cfg.Observer = s.metrics.Observer(fo.name)
	cfg.Reaper = s.m.Reaper
	pool, err := workers.NewPool(cfg)
	if err != nil {
		iso.close()
		return nil, nil, usageErrorf("%v", err)
	}
	waiting := time.AfterFunc(min(startNotice, fo.startTimeout/2), func() {
		log.WithFields(logrus.Fields{"binary": fo.workers, "start_timeout": fo.startTimeout.String()}).
			Warn("workers still starting: no handshake yet; waiting until --start-timeout")
	})
	err = pool.Start(ctx)
	waiting.Stop()
	if err != nil {
		iso.close()
		if o.config != "" {
			err = fmt.Errorf("function %s: %w", fo.name, err)
		}
		return nil, nil, err
	}
	return pool, iso, nil
}

// setupIsolation is fo.isolation.setup, during which the reaper sweeps
// nothing: the sandbox's trial process is a child it does not know.
func (s *service) setupIsolation(fo *options, log *logrus.Entry) (iso *isolation, err error) {
	if s.m.Reaper == nil {
		return fo.isolation.setup(fo.workers, log, &s.m.warned)
	}
	s.m.Reaper.Hold(func() { iso, err = fo.isolation.setup(fo.workers, log, &s.m.warned) })
	return iso, err
}

// poolConfig returns the workers' configuration of function fo, confined
// by iso.
func (fo *options) poolConfig(iso *isolation, log *logrus.Entry) workers.Config {
	return fo.modes.apply(workers.Config{
		Env:          iso.env,
		Sandbox:      iso.sandbox,
		Path:         fo.workers,
		Args:         fo.workerArgs,
		Size:         fo.poolSize,
		Concurrency:  fo.concurrency,
		Pipeline:     fo.pipeline,
		Timeout:      fo.timeout,
		StartTimeout: fo.startTimeout,
		Logger:       log,
	})
}

// checkWorkers starts one worker of each function of o, confined as it
// would be, waits for its handshake and stops it: --check-config. The
// first failure is returned, naming its function.
func checkWorkers(ctx context.Context, o *options, log *logrus.Entry) error {
	errs := make([]error, len(o.functions))
	var wg sync.WaitGroup
	for i, fo := range o.functions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = checkWorker(ctx, fo, log.WithField("function", fo.name))
			if errs[i] != nil {
				errs[i] = fmt.Errorf("function %s: %w", fo.name, errs[i])
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func checkWorker(ctx context.Context, fo *options, log *logrus.Entry) error {
	iso, err := fo.isolation.setup(fo.workers, log, new(sync.Map)) // one function: nothing to log twice
	if err != nil {
		return err
	}
	defer iso.close()
	cfg := fo.poolConfig(iso, log)
	cfg.Mode, cfg.Size, cfg.Spares = workers.ModePool, 1, 0 // one worker, whatever the mode
	pool, err := workers.NewPool(cfg)
	if err != nil {
		return usageErrorf("%v", err)
	}
	err = pool.Start(ctx)
	if cerr := pool.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

// routes returns the router's routes for the functions.
func (s *service) routes(live []*liveFunction) ([]dispatcher.Route, error) {
	var routes []dispatcher.Route
	for _, lf := range live {
		fo := lf.opts
		log := s.log
		if s.opts.config != "" {
			log = log.WithField("function", fo.name)
		}
		srv, err := dispatcher.New(fo.http.config(dispatcher.Config{
			Invoker:            lf.fn,
			Logger:             log,
			AccessLog:          s.opts.accessLog,
			AccessLogOmitQuery: !s.opts.accessLogQuery,
			Observer:           s.metrics.Observer(fo.name),
		}))
		if err != nil {
			return nil, err
		}
		routes = append(routes, dispatcher.Route{Name: fo.name, Host: fo.host, Prefix: fo.route, StripPrefix: fo.stripPrefix, Handler: srv})
	}
	return routes, nil
}

// reload re-reads the configuration and moves traffic to new workers: all
// of them are started and handshaken first; if any fails, nothing changes.
// The old workers finish their requests (within --shutdown-timeout) and
// stop.
func (s *service) reload(ctx context.Context) (err error) {
	s.reloading.Lock()
	defer s.reloading.Unlock()
	defer func() { s.metrics.Reloaded(err) }()
	t0 := time.Now()
	s.log.Info("reloading")
	o, err := s.m.parse(s.args)
	if err != nil {
		s.log.WithError(err).Error("reload refused: the configuration is invalid; still serving the previous one")
		return err
	}
	if o.config == "" && s.opts.config == "" {
		// --workers form: nothing to re-read but the binary itself.
		o.functions[0].name = s.opts.functions[0].name
	}
	for _, g := range []struct{ name, old, new string }{
		{"listen", s.opts.listen, o.listen}, {"admin-listen", s.opts.adminListen, o.adminListen},
		{"admin-show-query", strconv.FormatBool(s.opts.adminShowQuery), strconv.FormatBool(o.adminShowQuery)},
		{"log-format", s.opts.logFormat, o.logFormat}, {"log-level", s.opts.logLevel, o.logLevel},
		{"access-log", strconv.FormatBool(s.opts.accessLog), strconv.FormatBool(o.accessLog)},
		{"access-log-query", strconv.FormatBool(s.opts.accessLogQuery), strconv.FormatBool(o.accessLogQuery)},
		{"access-log-flush", s.opts.accessLogFlush.String(), o.accessLogFlush.String()},
	} {
		if g.old != g.new {
			s.log.WithFields(logrus.Fields{"setting": g.name, "running": g.old, "configured": g.new}).Warn("setting changed: it takes effect at the next restart")
		}
	}
	// Functions whose workers depend on nothing that changed keep them.
	s.mu.Lock()
	byName := map[string]*liveFunction{}
	for _, lf := range s.live {
		byName[lf.opts.name] = lf
	}
	s.mu.Unlock()
	keys := make([]string, len(o.functions))
	var changed []*options
	var restarted, kept []string
	for i, fo := range o.functions {
		keys[i] = fo.workersKey()
		if lf, ok := byName[fo.name]; ok && lf.key == keys[i] {
			kept = append(kept, fo.name)
			continue
		}
		changed = append(changed, fo)
		restarted = append(restarted, fo.name)
	}
	pools, isos, err := s.startPools(ctx, o, changed)
	if err != nil {
		s.log.WithError(err).Error("reload failed: new workers did not start; still serving the previous version")
		return err
	}
	s.mu.Lock()
	live := make([]*liveFunction, len(o.functions))
	fresh := map[string]int{} // index in pools of each restarted function
	for i, fo := range changed {
		fresh[fo.name] = i
	}
	for i, fo := range o.functions {
		prev, had := byName[fo.name]
		j, restart := fresh[fo.name]
		switch {
		case !restart:
			live[i] = &liveFunction{opts: fo, fn: prev.fn, iso: prev.iso, key: prev.key}
		case had:
			live[i] = &liveFunction{opts: fo, fn: prev.fn, iso: isos[j], key: keys[i]} // its pool is swapped below
		default:
			live[i] = &liveFunction{opts: fo, fn: workers.NewFunction(fo.name, pools[j]), iso: isos[j], key: keys[i]}
		}
	}
	routes, err := s.routes(live)
	if err == nil {
		_, err = dispatcher.NewRouter(routes) // checks them
	}
	if err != nil {
		s.mu.Unlock()
		for i := range pools {
			_ = pools[i].Close(context.Background())
			isos[i].close()
		}
		s.log.WithError(err).Error("reload failed; still serving the previous version")
		return err
	}
	type retired struct {
		pool *workers.Pool
		iso  *isolation
	}
	var old []retired
	for _, lf := range live {
		prev, had := byName[lf.opts.name]
		if !had {
			continue
		}
		delete(byName, lf.opts.name)
		if j, restart := fresh[lf.opts.name]; restart {
			old = append(old, retired{lf.fn.Swap(pools[j]), prev.iso})
		}
	}
	for _, lf := range byName {
		old = append(old, retired{lf.fn.Pool(), lf.iso}) // removed functions
	}
	_ = s.router.Set(routes)
	s.live, s.opts = live, o
	s.mu.Unlock()
	fields := logrus.Fields{"functions": len(live), "ms": time.Since(t0).Milliseconds(), "restarted": strings.Join(restarted, ","), "kept": strings.Join(kept, ",")}
	if len(restarted) == 0 {
		s.log.WithFields(fields).Info("reloaded: no function's workers changed; they serve on")
	} else {
		s.log.WithFields(fields).Info("reloaded: new workers serve the changed functions; the previous ones finish their requests")
	}
	for _, r := range old {
		s.draining.Add(1)
		go func() {
			defer s.draining.Done()
			dctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
			defer cancel()
			if err := r.pool.Drain(dctx); err != nil {
				s.log.WithError(err).Warn("stopping the previous workers")
			}
			r.iso.close()
		}()
	}
	return nil
}

// close stops every function's workers, after the pools replaced by
// reloads: gracefully until ctx is done, then by killing them.
func (s *service) close(ctx context.Context) {
	s.draining.Wait()
	s.mu.Lock()
	live := s.live
	s.live = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, lf := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := lf.fn.Pool().Close(ctx); err != nil {
				s.log.WithError(err).WithField("function", lf.opts.name).Warn("stopping workers")
			}
			lf.iso.close()
		}()
	}
	wg.Wait()
}

// watch reloads when the config file, a worker binary or an env file changes, if
// --watch is on. It returns a function that stops watching.
func (s *service) watch(o *options) func() {
	if !o.watch {
		return func() {}
	}
	files := func() []string {
		s.mu.Lock()
		o := s.opts
		s.mu.Unlock()
		var files []string
		if o.config != "" {
			files = append(files, o.config)
		}
		for _, fo := range o.functions {
			files = append(files, fo.workers)
			files = append(files, fo.isolation.envFiles...)
		}
		for i := range files {
			files[i], _ = filepath.Abs(files[i])
		}
		return files
	}
	return watchFiles(files, 300*time.Millisecond, s.log, func() { _ = s.reload(context.Background()) })
}
