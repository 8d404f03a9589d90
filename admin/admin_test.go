package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/admin"
	"github.com/childproc/dispatcher/dispatcher"
	"github.com/childproc/dispatcher/internal/testbin"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

var bins map[string]string

func TestMain(m *testing.M) {
	os.Exit(testbin.Run(m, &bins, "testdata/workers/crash", "testdata/workers/hang"))
}

// fixture is a real pool of a test worker behind a real dispatcher.Server,
// with the admin server and metrics wired as the dispatcher command does.
type fixture struct {
	pool    *workers.Pool
	metrics *admin.Metrics
	front   *httptest.Server
	admin   *admin.Server
}

func newFixture(t *testing.T, worker string, cfg workers.Config) *fixture {
	t.Helper()
	logger, _ := test.NewNullLogger()
	log := logrus.NewEntry(logger)
	f := &fixture{}
	fns := func() []admin.Function { return []admin.Function{{Name: "fn", Route: "/", Pool: f.pool}} }
	m := admin.NewMetrics(fns, admin.BuildInfo{Version: "v1.2.3", Revision: "0123abcd", GoVersion: "go1.26.0"})
	dir, err := os.MkdirTemp("", "adm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f.metrics = m
	cfg.Path, cfg.Logger, cfg.Observer, cfg.SocketDir = bins[worker], log, m.Observer("fn"), dir
	if f.pool, err = workers.NewPool(cfg); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.pool.Close(context.Background()) })
	srv, err := dispatcher.New(dispatcher.Config{Invoker: f.pool, Logger: log, Observer: m.Observer("fn")})
	if err != nil {
		t.Fatal(err)
	}
	f.front = httptest.NewServer(srv)
	t.Cleanup(f.front.Close)
	f.admin = admin.New(fns, m, "test")
	return f
}

func (f *fixture) get(t *testing.T, path string) int {
	t.Helper()
	resp, err := http.Get(f.front.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (f *fixture) adminGet(t *testing.T, path string, header ...string) (int, string) {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	f.admin.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// metric returns the value of the sample whose name and labels (in
// exposition order, e.g. `dispatcher_requests_total{code="200",function="fn"}`)
// are given, or -1.
func (f *fixture) metric(t *testing.T, sample string) float64 {
	t.Helper()
	code, body := f.adminGet(t, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("%s: %v", sc.Text(), err)
			}
			return v
		}
	}
	return -1
}

// waitMetric polls until the sample reaches want.
func (f *fixture) waitMetric(t *testing.T, sample string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := f.metric(t, sample)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", sample, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMetricsFollowRequestsAndCrashes(t *testing.T) {
	f := newFixture(t, "crash", workers.Config{Size: 1, Breaker: workers.BreakerConfig{StartFailures: -1, CrashRatio: -1}})
	for range 3 {
		if code := f.get(t, "/ok"); code != 200 {
			t.Fatalf("GET /ok: %d", code)
		}
	}
	if got := f.metric(t, `dispatcher_requests_total{code="200",function="fn"}`); got != 3 {
		t.Errorf("requests_total 200 = %v, want 3", got)
	}
	if got := f.metric(t, `dispatcher_request_duration_seconds_count{function="fn"}`); got != 3 {
		t.Errorf("request_duration_seconds_count = %v, want 3", got)
	}
	if got := f.metric(t, `dispatcher_queue_wait_seconds_count{function="fn"}`); got != 3 {
		t.Errorf("queue_wait_seconds_count = %v, want 3", got)
	}
	if got := f.metric(t, `dispatcher_worker_spawns_total{function="fn",result="ok"}`); got != 1 {
		t.Errorf("worker_spawns_total ok = %v, want 1", got)
	}
	f.waitMetric(t, `dispatcher_workers{function="fn",state="idle"}`, 1)

	if code := f.get(t, "/exit"); code != http.StatusBadGateway {
		t.Fatalf("GET /exit: %d, want 502", code)
	}
	if got := f.metric(t, `dispatcher_requests_total{code="502",function="fn"}`); got != 1 {
		t.Errorf("requests_total 502 = %v, want 1", got)
	}
	f.waitMetric(t, `dispatcher_worker_exits_total{cause="crashed",function="fn"}`, 1)
	f.waitMetric(t, `dispatcher_worker_spawns_total{function="fn",result="ok"}`, 2)
	f.waitMetric(t, `dispatcher_workers{function="fn",state="idle"}`, 1)
	if got := f.metric(t, `dispatcher_workers_resident_bytes{function="fn"}`); got <= 0 {
		t.Errorf("workers_resident_bytes = %v, want > 0", got)
	}
	if got := f.metric(t, "process_open_fds"); got <= 0 {
		t.Errorf("process_open_fds = %v, want the process collector's figure", got)
	}

	// The status page tells the story too.
	code, body := f.adminGet(t, "/status?format=json")
	if code != 200 {
		t.Fatalf("/status: %d", code)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Functions) != 1 || len(st.Functions[0].Exits) != 1 || st.Functions[0].Exits[0].Cause != "crashed" ||
		!strings.Contains(st.Functions[0].Exits[0].Reason, "status 3") {
		t.Errorf("status: want one exit, crashed with status 3; got %s", body)
	}
}

func TestMetricsAndStatusOfATimeout(t *testing.T) {
	f := newFixture(t, "hang", workers.Config{Size: 1, Timeout: 2 * time.Second, QuarantineGrace: 50 * time.Millisecond})
	done := make(chan int, 1)
	go func() {
		resp, err := http.Get(f.front.URL + "/hang")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	// While it hangs, the status shows the worker busy with it.
	deadline := time.Now().Add(5 * time.Second)
	var w admin.WorkerStatus
	for {
		_, body := f.adminGet(t, "/status", "Accept", "application/json")
		var st admin.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if ws := st.Functions[0].Workers; len(ws) == 1 && ws[0].State == workers.StateBusy {
			w = ws[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no busy worker in the status: %s", body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if w.Current != "GET /hang" || w.Busy != 1 || w.PID == 0 || w.RSSBytes <= 0 {
		t.Errorf("busy worker: %+v, want GET /hang with a pid and memory", w)
	}
	code, page := f.adminGet(t, "/status", "Accept", "text/html")
	if code != 200 || !strings.Contains(page, ">"+strconv.Itoa(w.PID)+"<") || !strings.Contains(page, "GET /hang") {
		t.Errorf("HTML status (%d) lacks the busy worker %d:\n%s", code, w.PID, page)
	}
	if code := <-done; code != http.StatusGatewayTimeout {
		t.Fatalf("GET /hang: %d, want 504", code)
	}
	if got := f.metric(t, `dispatcher_requests_total{code="504",function="fn"}`); got != 1 {
		t.Errorf("requests_total 504 = %v, want 1", got)
	}
	f.waitMetric(t, `dispatcher_worker_exits_total{cause="timeout",function="fn"}`, 1)
}

func TestProbes(t *testing.T) {
	f := newFixture(t, "crash", workers.Config{Size: 1})
	if code, _ := f.adminGet(t, "/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, body := f.adminGet(t, "/readyz"); code != 200 {
		t.Errorf("/readyz with a running pool: %d %s", code, body)
	}
	f.admin.SetDraining()
	if code, body := f.adminGet(t, "/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("/readyz while draining: %d %s", code, body)
	}
	if code, _ := f.adminGet(t, "/healthz"); code != 200 {
		t.Errorf("/healthz while draining: %d", code)
	}
}

func TestNotReadyWhenClosed(t *testing.T) {
	f := newFixture(t, "crash", workers.Config{Size: 1})
	_ = f.pool.Close(context.Background())
	if code, body := f.adminGet(t, "/readyz"); code != 503 || !strings.Contains(body, "not ready: fn") {
		t.Errorf("/readyz with a closed pool: %d %s", code, body)
	}
	if got := f.metric(t, `dispatcher_ready{function="fn"}`); got != 0 {
		t.Errorf("dispatcher_ready = %v, want 0", got)
	}
}

func TestProfilingOnlyWhenEnabled(t *testing.T) {
	f := newFixture(t, "crash", workers.Config{Size: 1})
	if code, _ := f.adminGet(t, "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without EnableProfiling: %d, want 404", code)
	}
	f.admin.EnableProfiling()
	if code, body := f.adminGet(t, "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ with profiling: %d", code)
	}
	if code, body := f.adminGet(t, "/debug/pprof/heap?debug=1"); code != 200 || !strings.Contains(body, "heap profile") {
		t.Errorf("heap profile: %d %.80q", code, body)
	}
}

// Counters whose labels are known in advance exist at zero from the start,
// so that rate() and alerts see them before their first event; the build
// and the reloads have metrics of their own.
func TestMetricsFromTheStart(t *testing.T) {
	f := newFixture(t, "crash", workers.Config{Size: 1})
	for _, sample := range []string{
		`dispatcher_worker_exits_total{cause="crashed",function="fn"}`,
		`dispatcher_worker_exits_total{cause="oom",function="fn"}`,
		`dispatcher_worker_exits_total{cause="stopped",function="fn"}`,
		`dispatcher_admission_refused_total{function="fn",reason="overloaded"}`,
		`dispatcher_admission_refused_total{function="fn",reason="no_worker"}`,
		`dispatcher_worker_spawns_total{function="fn",result="failed"}`,
		`dispatcher_breaker_transitions_total{function="fn",to="open"}`,
		`dispatcher_breaker_transitions_total{function="fn",to="closed"}`,
		`dispatcher_reloads_total{result="ok"}`,
		`dispatcher_reloads_total{result="failed"}`,
	} {
		if got := f.metric(t, sample); got != 0 {
			t.Errorf("%s = %v, want 0 before any event", sample, got)
		}
	}
	if got := f.metric(t, `dispatcher_build_info{goversion="go1.26.0",revision="0123abcd",version="v1.2.3"}`); got != 1 {
		t.Errorf("dispatcher_build_info = %v, want 1 with the build's labels", got)
	}
	if got := f.metric(t, "dispatcher_last_reload_successful"); got != 1 {
		t.Errorf("last_reload_successful = %v before any reload, want 1", got)
	}
	loaded := f.metric(t, "dispatcher_last_reload_success_timestamp_seconds")
	if now := float64(time.Now().Unix()); loaded < now-60 || loaded > now+1 {
		t.Errorf("last_reload_success_timestamp_seconds = %v, want the start (now: %v)", loaded, now)
	}

	f.metrics.Reloaded(errors.New("bad file"))
	if f.metric(t, `dispatcher_reloads_total{result="failed"}`) != 1 || f.metric(t, "dispatcher_last_reload_successful") != 0 ||
		f.metric(t, "dispatcher_last_reload_success_timestamp_seconds") != loaded {
		t.Error("a failed reload: want reloads_total{failed} 1, last_reload_successful 0, the timestamp unchanged")
	}
	f.metrics.Reloaded(nil)
	if f.metric(t, `dispatcher_reloads_total{result="ok"}`) != 1 || f.metric(t, "dispatcher_last_reload_successful") != 1 ||
		f.metric(t, "dispatcher_last_reload_success_timestamp_seconds") < loaded {
		t.Error("a reload: want reloads_total{ok} 1, last_reload_successful 1, a new timestamp")
	}
}

func TestBuildInfoString(t *testing.T) {
	for _, tc := range []struct {
		b    admin.BuildInfo
		want string
	}{
		{admin.BuildInfo{Version: "v1.2.0", Revision: "0123abcd", GoVersion: "go1.26.0"}, "v1.2.0 (revision 0123abcd, go1.26.0)"},
		{admin.BuildInfo{Version: "devel", GoVersion: "go1.26.0"}, "devel (go1.26.0)"},
		{admin.BuildInfo{Version: "v1.2.0"}, "v1.2.0"},
	} {
		if got := tc.b.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.b, got, tc.want)
		}
	}
}
