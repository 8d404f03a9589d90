// Package admin is the dispatcher's operator interface, served on its own
// listener (never the public one): Prometheus metrics, liveness and
// readiness probes, and a status page (JSON for tools, HTML for people)
// showing every function and worker process.
package admin

import (
	_ "embed"
	"encoding/json"
	"html/template"
	"net/http"
	"net/http/pprof"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/workers"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Function is one function the dispatcher serves, as the admin interface
// shows it.
type Function struct {
	Name  string
	Route string // host and path prefix, for people
	Pool  *workers.Pool
}

// Server serves the admin endpoints:
//
//	/metrics  Prometheus metrics
//	/healthz  200 while the process runs
//	/readyz   200 when every function can serve; 503 while draining or
//	          when one cannot (no worker, and none can start)
//	/status   every function and worker: JSON, or HTML for browsers
//	          (?format=json or ?format=html to choose)
//	/debug/pprof/  Go's profiles, if EnableProfiling was called
type Server struct {
	functions func() []Function
	metrics   *Metrics
	draining  atomic.Bool
	started   time.Time
	version   string
	showQuery bool
	mux       *http.ServeMux
}

// New returns the admin server of the functions that functions lists (it
// is called at each request, so it may change with reloads). version is
// shown on the status page.
func New(functions func() []Function, m *Metrics, version string) *Server {
	s := &Server{functions: functions, metrics: m, started: time.Now(), version: version, mux: http.NewServeMux()}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /status", s.status)
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/status", http.StatusFound)
	})
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// EnableProfiling serves Go's runtime profiles (net/http/pprof) under
// /debug/pprof/: heap, goroutines, CPU, for investigating the dispatcher
// itself. Off unless asked for: a CPU profile costs while it runs.
func (s *Server) EnableProfiling() {
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// ShowQueries makes /status show the query strings of the requests in
// flight. Off unless asked for: queries often carry tokens, and /status
// answers whatever reaches the listener.
func (s *Server) ShowQueries() { s.showQuery = true }

// SetDraining marks the dispatcher as shutting down: /readyz answers 503
// so that load balancers stop sending it requests.
func (s *Server) SetDraining() { s.draining.Store(true) }

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("draining\n"))
		return
	}
	var notReady []string
	for _, f := range s.functions() {
		if !f.Pool.Ready() {
			notReady = append(notReady, f.Name)
		}
	}
	if len(notReady) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("not ready: " + strings.Join(notReady, ", ") + "\n"))
		return
	}
	w.Write([]byte("ready\n"))
}

// Status is the /status document.
type Status struct {
	Version   string           `json:"version"`
	Started   time.Time        `json:"started"`
	UptimeS   float64          `json:"uptime_s"`
	Draining  bool             `json:"draining"`
	Functions []FunctionStatus `json:"functions"`
}

// FunctionStatus is one function in the /status document.
type FunctionStatus struct {
	Name     string         `json:"name"`
	Route    string         `json:"route"`
	Binary   string         `json:"binary"`
	Mode     string         `json:"mode"`
	Ready    bool           `json:"ready"`
	Starting int            `json:"starting"`
	Queued   int            `json:"queued"`
	Breaker  BreakerStatus  `json:"breaker"`
	Workers  []WorkerStatus `json:"workers"`
	Exits    []ExitStatus   `json:"recent_exits"`
}

// BreakerStatus is a function's circuit breaker in the /status document.
type BreakerStatus struct {
	State string     `json:"state"` // closed, open, probing
	Until *time.Time `json:"until,omitempty"`
}

// WorkerStatus is one worker process in the /status document.
type WorkerStatus struct {
	PID     int       `json:"pid"`
	State   string    `json:"state"`
	Started time.Time `json:"started"`
	UptimeS float64   `json:"uptime_s"`
	Served  int       `json:"served"`
	Busy    int       `json:"busy"`
	Current string    `json:"current,omitempty"` // method and URI, the query left out unless ShowQueries

	AgeMS    float64 `json:"current_age_ms,omitempty"`
	RSSBytes int64   `json:"rss_bytes"`
}

// ExitStatus is a recent worker exit in the /status document.
type ExitStatus struct {
	PID     int       `json:"pid"`
	Cause   string    `json:"cause"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
	UptimeS float64   `json:"uptime_s"`
}

// Snapshot returns the /status document.
func (s *Server) Snapshot() Status {
	now := time.Now()
	st := Status{Version: s.version, Started: s.started, UptimeS: seconds(now.Sub(s.started)), Draining: s.draining.Load()}
	fs := s.functions()
	sort.Slice(fs, func(i, j int) bool { return fs[i].Name < fs[j].Name })
	for _, f := range fs {
		ps := f.Pool.Status()
		fst := FunctionStatus{
			Name: f.Name, Route: f.Route, Binary: ps.Path, Mode: ps.Mode.String(), Ready: f.Pool.Ready(),
			Starting: ps.Starting, Queued: ps.Queued, Breaker: BreakerStatus{State: "closed"},
			Workers: []WorkerStatus{}, Exits: []ExitStatus{},
		}
		switch {
		case ps.Breaker.Probing:
			fst.Breaker.State = "probing"
		case ps.Breaker.Open:
			until := ps.Breaker.Until
			fst.Breaker = BreakerStatus{State: "open", Until: &until}
		}
		for _, w := range ps.Workers {
			ws := WorkerStatus{
				PID: w.PID, State: w.State, Started: w.Started, UptimeS: seconds(now.Sub(w.Started)),
				Served: w.Served, Busy: w.Busy, Current: w.Current, RSSBytes: w.RSS,
			}
			if !s.showQuery {
				ws.Current, _, _ = strings.Cut(ws.Current, "?")
			}
			if w.Current != "" {
				ws.AgeMS = float64(now.Sub(w.Since).Microseconds()) / 1000
			}
			fst.Workers = append(fst.Workers, ws)
		}
		for _, e := range ps.Exits {
			fst.Exits = append(fst.Exits, ExitStatus{PID: e.PID, Cause: string(e.Cause), Reason: e.Reason, At: e.At, UptimeS: seconds(e.Uptime)})
		}
		st.Functions = append(st.Functions, fst)
	}
	return st
}

func seconds(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := s.Snapshot()
	w.Header().Set("Cache-Control", "no-store")
	format := r.URL.Query().Get("format")
	if format == "" {
		format = "json"
		if strings.Contains(r.Header.Get("Accept"), "text/html") {
			format = "html"
		}
	}
	if format == "html" {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := statusPage.Execute(w, st); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(st)
}

//go:embed status.html
var statusHTML string

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"mib": func(b int64) string {
		if b <= 0 {
			return "–"
		}
		return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64) + " MiB"
	},
	"dur": func(sec float64) string {
		return (time.Duration(sec * float64(time.Second))).Round(time.Second).String()
	},
	"ms":    func(ms float64) string { return strconv.FormatFloat(ms, 'f', 0, 64) + " ms" },
	"clock": func(t time.Time) string { return t.Local().Format("15:04:05") },
}).Parse(statusHTML))
