package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/childproc/dispatcher/admin"
	"github.com/childproc/dispatcher/dispatcher"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
)

// version is shown on the status page; set with -ldflags "-X main.version=...".
var version = "dev"

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
}

func newService(m *Main, args []string, o *options, log *logrus.Entry) *service {
	s := &service{m: m, args: args, log: log, opts: o}
	s.metrics = admin.NewMetrics(s.functions)
	s.admin = admin.New(s.functions, s.metrics, version)
	if o.adminPprof {
		s.admin.EnableProfiling()
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
	pools, isos, err := s.startPools(ctx, s.opts)
	if err != nil {
		return err
	}
	for i, fo := range s.opts.functions {
		s.live = append(s.live, &liveFunction{opts: fo, fn: workers.NewFunction(fo.name, pools[i]), iso: isos[i]})
	}
	routes, err := s.routes(s.live)
	if err == nil {
		s.router, err = dispatcher.NewRouter(routes)
	}
	if err != nil {
		s.close()
		return err
	}
	return nil
}

// startPools starts a pool for each function of o, all or none.
func (s *service) startPools(ctx context.Context, o *options) ([]*workers.Pool, []*isolation, error) {
	pools := make([]*workers.Pool, len(o.functions))
	isos := make([]*isolation, len(o.functions))
	errs := make([]error, len(o.functions))
	var wg sync.WaitGroup
	for i, fo := range o.functions {
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
	iso, err := fo.isolation.setup(fo.workers, log)
	if err != nil {
		return nil, nil, err
	}
	pool, err := workers.NewPool(fo.modes.apply(workers.Config{
		Env:          iso.env,
		Sandbox:      iso.sandbox,
		Path:         fo.workers,
		Args:         fo.workerArgs,
		Size:         fo.poolSize,
		Concurrency:  fo.concurrency,
		Pipeline:     fo.pipeline,
		Timeout:      fo.timeout,
		StartTimeout: fo.startTimeout,
		Observer:     s.metrics.Observer(fo.name),
		Logger:       log,
	}))
	if err != nil {
		iso.close()
		return nil, nil, usageErrorf("%v", err)
	}
	if err := pool.Start(ctx); err != nil {
		iso.close()
		if o.config != "" {
			err = fmt.Errorf("function %s: %w", fo.name, err)
		}
		return nil, nil, err
	}
	return pool, iso, nil
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
		routes = append(routes, dispatcher.Route{Name: fo.name, Host: fo.host, Prefix: fo.route, Handler: srv})
	}
	return routes, nil
}

// reload re-reads the configuration and moves traffic to new workers: all
// of them are started and handshaken first; if any fails, nothing changes.
// The old workers finish their requests (within --shutdown-timeout) and
// stop.
func (s *service) reload(ctx context.Context) error {
	s.reloading.Lock()
	defer s.reloading.Unlock()
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
		{"log-format", s.opts.logFormat, o.logFormat}, {"log-level", s.opts.logLevel, o.logLevel},
		{"access-log", strconv.FormatBool(s.opts.accessLog), strconv.FormatBool(o.accessLog)},
		{"access-log-query", strconv.FormatBool(s.opts.accessLogQuery), strconv.FormatBool(o.accessLogQuery)},
		{"access-log-flush", s.opts.accessLogFlush.String(), o.accessLogFlush.String()},
	} {
		if g.old != g.new {
			s.log.WithFields(logrus.Fields{"setting": g.name, "running": g.old, "configured": g.new}).Warn("setting changed: it takes effect at the next restart")
		}
	}
	pools, isos, err := s.startPools(ctx, o)
	if err != nil {
		s.log.WithError(err).Error("reload failed: new workers did not start; still serving the previous version")
		return err
	}
	s.mu.Lock()
	byName := map[string]*liveFunction{}
	for _, lf := range s.live {
		byName[lf.opts.name] = lf
	}
	live := make([]*liveFunction, len(o.functions))
	for i, fo := range o.functions {
		fn := workers.NewFunction(fo.name, pools[i])
		if lf, ok := byName[fo.name]; ok {
			fn = lf.fn // kept: its pool is swapped below
		}
		live[i] = &liveFunction{opts: fo, fn: fn, iso: isos[i]}
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
	for i, lf := range live {
		if prev, ok := byName[lf.opts.name]; ok {
			delete(byName, lf.opts.name)
			old = append(old, retired{lf.fn.Swap(pools[i]), prev.iso})
		}
	}
	for _, lf := range byName {
		old = append(old, retired{lf.fn.Pool(), lf.iso}) // removed functions
	}
	_ = s.router.Set(routes)
	s.live, s.opts = live, o
	s.mu.Unlock()
	s.log.WithFields(logrus.Fields{"functions": len(live), "ms": time.Since(t0).Milliseconds()}).Info("reloaded: new workers serve; the previous ones finish their requests")
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
// reloads.
func (s *service) close() {
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
			if err := lf.fn.Pool().Close(context.Background()); err != nil {
				s.log.WithError(err).WithField("function", lf.opts.name).Warn("stopping workers")
			}
			lf.iso.close()
		}()
	}
	wg.Wait()
}

// watch reloads when the config file or a worker binary changes, if
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
		}
		for i := range files {
			files[i], _ = filepath.Abs(files[i])
		}
		return files
	}
	return watchFiles(files, 300*time.Millisecond, s.log, func() { _ = s.reload(context.Background()) })
}
