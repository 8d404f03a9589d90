// Package node holds the Go tests of the Node.js sdk (the npm package in
// this directory): its worker, test/fixtures/handlers.js, through the
// conformance kit and through a real dispatcher.
package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/sdk/node/nodetest"
	"github.com/childproc/dispatcher/sdk/sdktest"
	"github.com/sirupsen/logrus"
)

// headerError marks the responses the dispatcher made itself.
const headerError = "X-Dispatcher-Error"

// handlers is the worker script the tests run, with node as the binary.
func handlers(tb testing.TB) (node, script string) {
	tb.Helper()
	node = nodetest.Node(tb)
	nodetest.Install(tb, nodetest.SDKDir())
	return node, filepath.Join(nodetest.SDKDir(), "test", "fixtures", "handlers.js")
}

func start(tb testing.TB, opts sdktest.Options) *sdktest.Server {
	tb.Helper()
	node, script := handlers(tb)
	opts.Args = []string{script}
	return sdktest.Start(tb, node, opts)
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// Every check of the conformance kit, against the Node.js worker.
func TestConformance(t *testing.T) {
	node, script := handlers(t)
	kit := sdktest.Build(t, "github.com/childproc/dispatcher/cmd/conformance")
	out, err := exec.Command(kit, "-path", "/echo", node, "--", script).CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^\d+ passed, 0 failed, 0 skipped$`).Match(out) {
		t.Fatalf("conformance: %v\n%s", err, out)
	}
	// The optional features pass because the worker uses them, not because
	// it does not list them.
	for _, want := range []string{"PASS  withdraw", "withdrawn while the first request ran", "acknowledged a request before its body came"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("conformance: no %q in\n%s", want, out)
		}
	}
}

// Bodies stream both ways through the dispatcher: an upload of unknown
// length echoed back with trailers, and a download larger than any buffer.
func TestStreaming(t *testing.T) {
	srv := start(t, sdktest.Options{})
	up := make([]byte, 8<<20)
	for i := range up {
		up[i] = byte(i * 7)
	}
	// An io.Reader of unknown length: the client sends it chunked.
	req, err := http.NewRequest("POST", srv.URL+"/echo", io.MultiReader(bytes.NewReader(up)))
	if err != nil {
		t.Fatal(err)
	}
	req.Trailer = http.Header{"X-Sum": {"42"}}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !bytes.Equal(back, up) {
		t.Fatalf("echo: %d, %d bytes back of %d", resp.StatusCode, len(back), len(up))
	}
	if got := resp.Trailer; got.Get("X-Length") != fmt.Sprint(len(up)) || got.Get("X-Sum") != "42" {
		t.Errorf("trailers %v", got)
	}

	const size = 20_000_000
	resp, body := get(t, srv.URL+fmt.Sprintf("/big?size=%d", size))
	if resp.StatusCode != 200 || len(body) != size || resp.ContentLength != size {
		t.Fatalf("download: %d, %d bytes (Content-Length %d)", resp.StatusCode, len(body), resp.ContentLength)
	}
	for i := range size {
		if body[i] != byte(i%251) {
			t.Fatalf("download: byte %d is %d", i, body[i])
		}
	}
}

// process.exit in a handler costs its request a 502; a replacement serves
// the next.
func TestCrash(t *testing.T) {
	srv := start(t, sdktest.Options{})
	pid := srv.Workers()[0]
	if resp, _ := get(t, srv.URL+"/exit"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("/exit: %d, want 502", resp.StatusCode)
	}
	if resp, body := get(t, srv.URL+"/info"); resp.StatusCode != 200 || strings.Contains(body, fmt.Sprint(pid)) {
		t.Fatalf("after the crash: %d %s", resp.StatusCode, body)
	}
	srv.WaitLog(t, func(e sdktest.Entry) bool {
		return e.Level == logrus.ErrorLevel && e.Fields["exit"] == "exited with status 3" && fmt.Sprint(e.Fields["pid"]) == fmt.Sprint(pid)
	})
}

// A handler that never answers and ignores its deadline gets its client a
// 504 from the dispatcher at the timeout; the worker, quarantined, says
// what it was doing.
func TestHang(t *testing.T) {
	srv := start(t, sdktest.Options{Timeout: time.Second})
	resp, _ := get(t, srv.URL+"/hang")
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(headerError) == "" {
		t.Fatalf("/hang: %d %v, want the dispatcher's 504", resp.StatusCode, resp.Header)
	}
	srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == "ignoring the deadline" })
	srv.WaitLog(t, func(e sdktest.Entry) bool {
		// SIGQUIT or the closed slots, whichever the worker sees first.
		return strings.HasPrefix(e.Message, "stopping (") && strings.Contains(e.Message, ") with 1 request(s) in flight: GET /hang (request ")
	})
	if resp, _ := get(t, srv.URL+"/info"); resp.StatusCode != 200 {
		t.Fatalf("after the hang: %d", resp.StatusCode)
	}
}

// The dispatcher's timeout reaches the handler as its deadline, a little
// before it: a handler that has not answered by then is told ('timeout',
// its signal) and, with no 'timeout' listener, answered 504 by the sdk, so
// the worker is not quarantined and serves on. A response whose head went
// out in time streams on past the deadline.
func TestDeadline(t *testing.T) {
	const timeout = time.Second
	srv := start(t, sdktest.Options{Timeout: timeout})
	pid := srv.Workers()[0]

	resp, body := get(t, srv.URL+"/info")
	var info struct{ Deadline, Now int64 }
	if err := json.Unmarshal([]byte(body), &info); err != nil {
		t.Fatalf("/info: %v: %s", err, body)
	}
	// The dispatcher keeps a tenth of the timeout for the answer to reach it.
	if left := time.Duration(info.Deadline-info.Now) * time.Millisecond; left <= timeout/2 || left > timeout*9/10 {
		t.Errorf("the handler's deadline is in %v, want about %v", left, timeout*9/10)
	}

	t0 := time.Now()
	resp, body = get(t, srv.URL+"/wait")
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(headerError) != "" || body != "Gateway Timeout\n" {
		t.Fatalf("/wait: %d %v %q, want the worker's 504", resp.StatusCode, resp.Header, body)
	}
	if d := time.Since(t0); d < timeout*9/10-50*time.Millisecond {
		t.Errorf("answered after %v, before the deadline", d)
	}
	id := resp.Header.Get("X-Request-Id")
	for _, msg := range []string{"signal aborted: the request's deadline passed", "res close, writableEnded=false"} {
		srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == msg && e.Fields["req_id"] == id })
	}

	resp, body = get(t, srv.URL+"/on-timeout")
	if resp.StatusCode != http.StatusServiceUnavailable || body != "timeout event, signal aborted: true\n" {
		t.Errorf("/on-timeout: %d %q", resp.StatusCode, body)
	}

	// Three ticks 400 ms apart: past the deadline, each within the timeout.
	resp, body = get(t, srv.URL+"/slow-stream?n=3&ms=400")
	if resp.StatusCode != 200 || body != "tick 0\ntick 1\ntick 2\naborted=false\n" {
		t.Errorf("/slow-stream: %d %q", resp.StatusCode, body)
	}

	if got := srv.Workers(); len(got) != 1 || got[0] != pid {
		t.Errorf("workers %v, want the same worker %d, never quarantined", got, pid)
	}
}

// An exception in a handler, thrown or from a callback or a promise,
// answers 500 and the same worker serves on.
func TestException(t *testing.T) {
	srv := start(t, sdktest.Options{})
	pid := srv.Workers()[0]
	for _, path := range []string{"/throw", "/throw-async", "/reject"} {
		resp, body := get(t, srv.URL+path)
		if resp.StatusCode != 500 || body != "Internal Server Error\n" {
			t.Errorf("%s: %d %q", path, resp.StatusCode, body)
		}
		id := resp.Header.Get("X-Request-Id")
		srv.WaitLog(t, func(e sdktest.Entry) bool {
			return e.Level == logrus.ErrorLevel && strings.HasPrefix(e.Message, "handler error:") && e.Fields["req_id"] == id
		})
	}
	if resp, _ := get(t, srv.URL+"/info"); resp.StatusCode != 200 {
		t.Fatalf("after the exceptions: %d", resp.StatusCode)
	}
	if got := srv.Workers(); len(got) != 1 || got[0] != pid {
		t.Errorf("workers %v, want the same worker %d", got, pid)
	}
}

// What a handler prints becomes dispatcher log lines; the logger's keep
// their level, fields and request ID.
func TestLogs(t *testing.T) {
	srv := start(t, sdktest.Options{})
	resp, _ := get(t, srv.URL+"/log")
	id := resp.Header.Get("X-Request-Id")
	for _, want := range []struct {
		msg    string
		level  logrus.Level
		stream string
		field  string
		value  any
	}{
		{"a line on stdout", logrus.InfoLevel, "stdout", "", nil},
		{"a line on stderr", logrus.InfoLevel, "stderr", "", nil},
		{"a warning", logrus.WarnLevel, "stderr", "child.n", float64(1)},
		{"a debug line", logrus.DebugLevel, "stderr", "child.component", "test"},
	} {
		e := srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == want.msg })
		if e.Level != want.level || e.Fields["stream"] != want.stream || (want.field != "" && (e.Fields[want.field] != want.value || e.Fields["req_id"] != id)) {
			t.Errorf("%q: %v", want.msg, e)
		}
	}
}

// A client that goes away: the handler sees 'close' on its response and
// its signal aborted, and the worker serves on.
func TestClientCancel(t *testing.T) {
	srv := start(t, sdktest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+"/wait", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waiting := srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == "waiting" })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v", err)
	}
	id := waiting.Fields["req_id"]
	for _, msg := range []string{"signal aborted: cancelled by the dispatcher", "res close, writableEnded=false", "req close"} {
		srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == msg && e.Fields["req_id"] == id })
	}
	if resp, _ := get(t, srv.URL+"/info"); resp.StatusCode != 200 {
		t.Fatalf("after the cancel: %d", resp.StatusCode)
	}
}
