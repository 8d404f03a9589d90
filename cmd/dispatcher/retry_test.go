package main

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// armDeath has the dispatcher's one chaos worker answer an exit-after
// request: it dies when it next reads its slot, before it reads a byte.
// It returns the worker's pid.
func (d *dproc) armDeath() int {
	d.t.Helper()
	resp, _ := d.get("/?fault=exit-after")
	pid, err := strconv.Atoi(resp.Header.Get("X-Chaos-Pid"))
	if resp.StatusCode != 200 || err != nil {
		d.t.Fatalf("exit-after: %d, X-Chaos-Pid %q", resp.StatusCode, resp.Header.Get("X-Chaos-Pid"))
	}
	return pid
}

// post uploads data to path: chunked (of unknown length) if asked, and
// with Expect: 100-continue if asked.
func (d *dproc) post(path string, data []byte, chunked, expect bool) (*http.Response, []byte) {
	d.t.Helper()
	var body io.Reader = bytes.NewReader(data)
	if chunked {
		body = io.MultiReader(body) // not a type NewRequest takes the length of
	}
	req, err := http.NewRequest(http.MethodPost, d.url+path, body)
	if err != nil {
		d.t.Fatal(err)
	}
	client := d.client
	if expect {
		req.Header.Set("Expect", "100-continue")
		client = &http.Client{Timeout: 30 * time.Second,
			Transport: &http.Transport{DisableKeepAlives: true, ExpectContinueTimeout: 10 * time.Second}}
	}
	return d.do(client, req)
}

// A worker that died idle does not cost the streamed upload that came
// next: the client gets the answer of another worker, which got the whole
// body. A worker that crashed in the handler of an upload is not given a
// second chance at it.
func TestStreamedUploadRetried(t *testing.T) {
	t.Parallel()
	data := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{2}).Read(data)
	// --sandbox=off: the test follows a worker by the pid it reports
	// (X-Chaos-Pid), which in a sandbox is its PID namespace's.
	d := startDispatcher(t, "--workers", bin(t, "chaos"), "--pool-size", "1", "--log-level", "debug", "--sandbox=off")
	for _, tc := range []struct {
		name            string
		chunked, expect bool
	}{
		{"1 MiB", false, false},
		{"unknown length", true, false},
		{"Expect: 100-continue", false, true},
		{"unknown length, Expect: 100-continue", true, true},
	} {
		// One dispatcher for all: no subtests, which d's helpers (failing
		// d.t) cannot serve.
		dead := d.armDeath()
		resp, body := d.post("/?echo=1", data, tc.chunked, tc.expect)
		if resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("%s: upload after an idle death: %d, %d of %d bytes echoed: %.200q", tc.name, resp.StatusCode, len(body), len(data), body)
		}
		if pid := resp.Header.Get("X-Chaos-Pid"); pid == strconv.Itoa(dead) {
			t.Fatalf("%s: answered by the worker that died (pid %s)", tc.name, pid)
		}
		// Either the upload went to the dead worker and was sent again, or
		// the dispatcher saw the death first and sent it to the
		// replacement: the worker dies at its next read of the slot, right
		// after its answer to armDeath, and the upload races with that.
		id := resp.Header.Get("X-Request-Id")
		p := "pid=" + strconv.Itoa(dead)
		retried := containsAll("request did not reach its worker; retrying on another", p, "req_id="+id)
		exitedFirst := containsAll("worker exited unexpectedly", p)
		d.waitLogFunc("the upload's retry, or the death seen first", func(l string) bool { return retried(l) || exitedFirst(l) })
		d.waitIdleDeath(dead)
	}
	// Streamed, and small enough for net/http to read it all after the
	// early answer (a client still sending 1 MiB gets its connection reset).
	resp, body := d.post("/?fault=crash&how=exit", data[:200<<10], false, false)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Dispatcher-Error") != "true" {
		t.Fatalf("upload whose handler crashed: %d %q", resp.StatusCode, body)
	}
	// A retry is logged before the access log line.
	id := resp.Header.Get("X-Request-Id")
	d.waitLog("msg=request", "req_id="+id)
	for _, l := range d.log.Lines() {
		if strings.Contains(l, "retrying on another") && strings.Contains(l, "req_id="+id) {
			t.Fatalf("the upload whose handler crashed was sent again: %s", l)
		}
	}
}

// A retried upload still counts against --max-body.
func TestStreamedUploadRetriedOverLimit(t *testing.T) {
	t.Parallel()
	data := make([]byte, 1<<20)
	// --sandbox=off: as in TestStreamedUploadRetried.
	d := startDispatcher(t, "--workers", bin(t, "chaos"), "--pool-size", "1", "--max-body", "512K", "--sandbox=off")
	dead := d.armDeath()
	// The worker reads the whole body before it answers. The body is over
	// the limit by less than the 256 KiB net/http reads after an early
	// answer: a client still sending more when the connection closes gets
	// it reset.
	resp, body := d.post("/?fault=none&token=t", data[:700<<10], true, false)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("upload over --max-body after an idle death: %d %q", resp.StatusCode, body)
	}
	d.waitIdleDeath(dead)
}

// waitIdleDeath waits for the log line of a worker that died idle: the
// request that found it dead kills it ("died before reading a request"),
// or, if its exit was noticed first, it exited unexpectedly.
func (d *dproc) waitIdleDeath(pid int) {
	d.t.Helper()
	p := "pid=" + strconv.Itoa(pid)
	killed := containsAll("worker killed", "died before reading a request", p)
	exited := containsAll("worker exited unexpectedly", p)
	d.waitLogFunc("the death of worker "+p, func(l string) bool { return killed(l) || exited(l) })
}
