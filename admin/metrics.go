package admin

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/workers"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "dispatcher"

var (
	latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	spawnBuckets   = []float64{.005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10}
)

// BuildInfo describes the running dispatcher binary.
type BuildInfo struct {
	Version   string // the module's version, or one stamped at build time
	Revision  string // the VCS revision it was built from; empty if unknown
	GoVersion string // the Go release that built it
}

// String formats b for people: "v1.2.0 (revision 0123abcd, go1.26.0)".
func (b BuildInfo) String() string {
	var extra []string
	if b.Revision != "" {
		extra = append(extra, "revision "+b.Revision)
	}
	if b.GoVersion != "" {
		extra = append(extra, b.GoVersion)
	}
	if len(extra) == 0 {
		return b.Version
	}
	return b.Version + " (" + strings.Join(extra, ", ") + ")"
}

// exitCauses, admissionReasons, spawnResults and breakerStates are the
// label values known in advance: each function's counters start at zero
// with every one of them, so that rate() and alerts see a series before
// its first event.
var (
	exitCauses = []workers.Cause{
		workers.CauseCrashed, workers.CauseOutOfMemory, workers.CauseTimeout, workers.CauseQuarantined,
		workers.CauseProtocol, workers.CauseBroken, workers.CauseRecycled, workers.CauseIdle,
		workers.CauseOneShot, workers.CauseStopped,
	}
	admissionReasons = []string{"overloaded", "closed", "cancelled", "no_worker"}
	spawnResults     = []string{"ok", "failed"}
	breakerStates    = []string{"open", "closed"}
)

// Metrics holds the dispatcher's Prometheus metrics. The per-function
// event metrics are fed by the Observers it hands out; the state of the
// pools (workers by state, queue depth, breaker, memory) is read from the
// functions' pools at each scrape.
type Metrics struct {
	reg *prometheus.Registry

	reloads          *prometheus.CounterVec
	reloadSuccessful prometheus.Gauge
	reloadTime       prometheus.Gauge

	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	queueWait   *prometheus.HistogramVec
	refused     *prometheus.CounterVec
	spawns      *prometheus.CounterVec
	spawnTime   *prometheus.HistogramVec
	exits       *prometheus.CounterVec
	transitions *prometheus.CounterVec
	logDropped  *prometheus.CounterVec
	logDroppedB *prometheus.CounterVec

	mu        sync.Mutex
	observers map[string]*Observer
}

// NewMetrics returns the metrics of the functions that functions lists at
// each scrape, with the Go runtime's and the process's standard metrics and
// dispatcher_build_info describing build.
func NewMetrics(functions func() []Function, build BuildInfo) *Metrics {
	m := &Metrics{
		reg:       prometheus.NewRegistry(),
		observers: map[string]*Observer{},
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "reloads_total",
			Help: "Configuration reloads (SIGHUP, --watch), by result: ok, or failed (the previous configuration kept serving).",
		}, []string{"result"}),
		reloadSuccessful: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_reload_successful",
			Help: "1 if the last reload succeeded (or none was tried), 0 if it failed and the previous configuration is serving.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_reload_success_timestamp_seconds",
			Help: "When the configuration serving now was loaded (at start, or by the last successful reload), in seconds since the epoch.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Requests answered, by function and HTTP status (code 0: the client went away first).",
		}, []string{"function", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its response, queueing included.",
			Buckets: latencyBuckets,
		}, []string{"function"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "queue_wait_seconds",
			Help:    "Time a request waited for a worker slot (0 when one was free).",
			Buckets: latencyBuckets,
		}, []string{"function"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "admission_refused_total",
			Help: "Requests that got no worker, by reason: overloaded (queue full or queue timeout, or breaker open), closed, cancelled, no_worker.",
		}, []string{"function", "reason"}),
		spawns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "worker_spawns_total",
			Help: "Worker starts (spawn and handshake), by result.",
		}, []string{"function", "result"}),
		spawnTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "worker_spawn_seconds",
			Help:    "Time to spawn a worker and complete its handshake.",
			Buckets: spawnBuckets,
		}, []string{"function"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "worker_exits_total",
			Help: "Worker exits by cause: crashed, oom, timeout, quarantined, protocol, broken, recycled, idle, oneshot, stopped.",
		}, []string{"function", "cause"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "breaker_transitions_total",
			Help: "Circuit breaker transitions of a function's worker binary, by the state entered.",
		}, []string{"function", "to"}),
		logDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "worker_log_dropped_lines_total",
			Help: "Lines of workers' output dropped over --worker-log-lines or --worker-log-bytes.",
		}, []string{"function"}),
		logDroppedB: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "worker_log_dropped_bytes_total",
			Help: "Bytes of the workers' output lines dropped over --worker-log-lines or --worker-log-bytes.",
		}, []string{"function"}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; its labels describe the dispatcher binary.",
		ConstLabels: prometheus.Labels{"version": build.Version, "revision": build.Revision, "goversion": build.GoVersion},
	})
	buildInfo.Set(1)
	for _, r := range []string{"ok", "failed"} {
		m.reloads.WithLabelValues(r)
	}
	m.reloadSuccessful.Set(1)
	m.reloadTime.SetToCurrentTime()
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo, m.reloads, m.reloadSuccessful, m.reloadTime,
		m.requests, m.duration, m.queueWait, m.refused, m.spawns, m.spawnTime, m.exits, m.transitions, m.logDropped, m.logDroppedB,
		&poolCollector{functions: functions},
	)
	return m
}

// Reloaded counts a reload: err is why it failed, nil if the new
// configuration serves.
func (m *Metrics) Reloaded(err error) {
	if err != nil {
		m.reloads.WithLabelValues("failed").Inc()
		m.reloadSuccessful.Set(0)
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
	m.reloadSuccessful.Set(1)
	m.reloadTime.SetToCurrentTime()
}

// Registry returns the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observer returns the observer of the function called name: the same one
// for the same name, so that counters continue across reloads.
func (m *Metrics) Observer(name string) *Observer {
	m.mu.Lock()
	defer m.mu.Unlock()
	if o, ok := m.observers[name]; ok {
		return o
	}
	o := &Observer{
		m:         m,
		name:      name,
		duration:  m.duration.WithLabelValues(name),
		queueWait: m.queueWait.WithLabelValues(name),
		spawnTime: m.spawnTime.WithLabelValues(name),
	}
	for _, c := range exitCauses {
		m.exits.WithLabelValues(name, string(c))
	}
	for _, r := range admissionReasons {
		m.refused.WithLabelValues(name, r)
	}
	for _, r := range spawnResults {
		m.spawns.WithLabelValues(name, r)
	}
	for _, to := range breakerStates {
		m.transitions.WithLabelValues(name, to)
	}
	o.logLines, o.logBytes = m.logDropped.WithLabelValues(name), m.logDroppedB.WithLabelValues(name)
	m.observers[name] = o
	return o
}

// Observer feeds one function's metrics. It is a workers.Observer and a
// dispatcher.Observer.
type Observer struct {
	m         *Metrics
	name      string
	duration  prometheus.Observer
	queueWait prometheus.Observer
	spawnTime prometheus.Observer
	logLines  prometheus.Counter
	logBytes  prometheus.Counter
	codes     [1000]atomic.Pointer[prometheus.Counter] // requests_total by status, made on first use
}

var _ workers.Observer = (*Observer)(nil)

// Served counts a request and its duration.
func (o *Observer) Served(status int, d time.Duration) {
	o.duration.Observe(d.Seconds())
	if status < 0 || status >= len(o.codes) {
		status = 0
	}
	c := o.codes[status].Load()
	if c == nil {
		counter := o.m.requests.WithLabelValues(o.name, strconv.Itoa(status))
		c = &counter
		o.codes[status].Store(c)
	}
	(*c).Inc()
}

// WorkerStarted counts a spawn.
func (o *Observer) WorkerStarted(d time.Duration, err error) {
	if err != nil {
		o.m.spawns.WithLabelValues(o.name, "failed").Inc()
		return
	}
	o.m.spawns.WithLabelValues(o.name, "ok").Inc()
	o.spawnTime.Observe(d.Seconds())
}

// WorkerExited counts an exit by cause.
func (o *Observer) WorkerExited(cause workers.Cause) {
	o.m.exits.WithLabelValues(o.name, string(cause)).Inc()
}

// Admitted records a request's wait for a worker, or its refusal.
func (o *Observer) Admitted(wait time.Duration, err error) {
	if err == nil {
		o.queueWait.Observe(wait.Seconds())
		return
	}
	reason := "no_worker"
	switch {
	case errors.Is(err, workers.ErrOverloaded):
		reason = "overloaded"
	case errors.Is(err, workers.ErrClosed):
		reason = "closed"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		reason = "cancelled"
	}
	o.m.refused.WithLabelValues(o.name, reason).Inc()
}

// BreakerChanged counts a breaker transition.
func (o *Observer) BreakerChanged(open bool) {
	to := "closed"
	if open {
		to = "open"
	}
	o.m.transitions.WithLabelValues(o.name, to).Inc()
}

// LogDropped counts a worker's output lines dropped over its limits.
func (o *Observer) LogDropped(lines, bytes int) {
	o.logLines.Add(float64(lines))
	o.logBytes.Add(float64(bytes))
}

// poolCollector reads the pools' state at each scrape.
type poolCollector struct {
	functions func() []Function
}

var (
	workersDesc = prometheus.NewDesc(namespace+"_workers", "Worker processes by state (starting, idle, busy, retiring, dead).", []string{"function", "state"}, nil)
	queueDesc   = prometheus.NewDesc(namespace+"_queue_depth", "Requests waiting for a worker.", []string{"function"}, nil)
	breakerDesc = prometheus.NewDesc(namespace+"_breaker_open", "1 while the function's worker binary is quarantined by its circuit breaker.", []string{"function"}, nil)
	rssDesc     = prometheus.NewDesc(namespace+"_workers_resident_bytes", "Resident memory of the function's worker processes, summed (the dispatcher's own is process_resident_memory_bytes).", []string{"function"}, nil)
	servedDesc  = prometheus.NewDesc(namespace+"_ready", "1 when the function can serve a request now or start a worker for it.", []string{"function"}, nil)
)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{workersDesc, queueDesc, breakerDesc, rssDesc, servedDesc} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, f := range c.functions() {
		st := f.Pool.Status()
		states := map[string]float64{"starting": float64(st.Starting), workers.StateIdle: 0, workers.StateBusy: 0, workers.StateRetiring: 0, workers.StateDead: 0}
		var rss int64
		for _, w := range st.Workers {
			states[w.State]++
			rss += w.RSS
		}
		for state, n := range states {
			ch <- prometheus.MustNewConstMetric(workersDesc, prometheus.GaugeValue, n, f.Name, state)
		}
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(st.Queued), f.Name)
		ch <- prometheus.MustNewConstMetric(breakerDesc, prometheus.GaugeValue, bool01(st.Breaker.Open), f.Name)
		ch <- prometheus.MustNewConstMetric(rssDesc, prometheus.GaugeValue, float64(rss), f.Name)
		ch <- prometheus.MustNewConstMetric(servedDesc, prometheus.GaugeValue, bool01(f.Pool.Ready()), f.Name)
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
