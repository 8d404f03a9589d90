package main

// What workers write, as the dispatcher's log shows it: a flood costs the
// dispatcher less than the worker and leaves the log bounded; a crash, a
// panic and a timeout's goroutine dump are each one entry, naming the
// request, in both log formats.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc/launch"
)

// cpuTime returns the user and system CPU time pid has used.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	// Fields after the command: state is f[0]; utime and stime are the
	// 14th and 15th fields of the line, f[11] and f[12].
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks
}

// floodAllowance is what the dispatcher may spend on a flood beyond what
// the worker spends: the request itself, the lines within the limit, the
// warnings, and /proc's tick granularity.
const floodAllowance = 150 * time.Millisecond

// TestWorkerLogFlood: a worker writing 5 MiB of two-byte lines, one write
// each, costs the dispatcher no more CPU than it costs the worker, and its
// log stays small; the dropped lines are counted, in the warnings and in
// the metric, and add up with those logged to what the worker wrote.
func TestWorkerLogFlood(t *testing.T) {
	// DISPATCHER_FLOOD_BIN measures another build (bench/results): one
	// that logs every line may take minutes.
	logBin := os.Getenv("DISPATCHER_FLOOD_BIN")
	wait := 60 * time.Second
	var d *dproc
	if logBin != "" {
		wait = 10 * time.Minute
		d = launchProc(t, shortTempDir(t), []string{logBin, "--admin-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0",
			"--workers", bin(t, "hostile"), "--pool-size", "1", "--timeout", wait.String()})
		d.awaitListening(true)
		d.client.Timeout = wait
	} else {
		d = startDispatcher(t, "--workers", bin(t, "hostile"), "--pool-size", "1")
	}
	pid := d.cmd.Process.Pid
	before := len(d.log.Lines())
	cpu0 := cpuTime(t, pid)
	t0 := time.Now()
	resp, body := d.get("/flood?mb=5")
	if resp.StatusCode != 200 {
		t.Fatalf("/flood: %d %s", resp.StatusCode, body)
	}
	var lines, n, workerUS int64
	if _, err := fmt.Sscanf(body, "flood: lines=%d bytes=%d cpu_us=%d", &lines, &n, &workerUS); err != nil {
		t.Fatalf("/flood: %q", body)
	}
	// Every line is either logged or counted in a warning: wait until
	// they add up.
	var logged, dropped int64
	var logBytes int
	next := before
	counted := func() bool {
		all := d.log.Lines()
		seen := all[next:]
		next = len(all)
		for _, l := range seen {
			logBytes += len(l) + 1
			msg, _ := field(l, "msg")
			switch {
			case msg == "x":
				logged++
			case msg == "worker output over its limit: lines dropped":
				k, _ := field(l, "dropped_lines")
				v, err := strconv.ParseInt(k, 10, 64)
				if err != nil {
					t.Fatalf("warning without dropped_lines: %s", l)
				}
				dropped += v
			}
		}
		return logged+dropped >= lines
	}
	if !poll(wait, counted) {
		t.Fatalf("%d lines written; %d logged and %d dropped after %s", lines, logged, dropped, wait)
	}
	took := time.Since(t0)
	dispatcherCPU := cpuTime(t, pid) - cpu0
	workerCPU := time.Duration(workerUS) * time.Microsecond
	t.Logf("flood of %d lines (%d bytes) in %s: worker cpu %s, dispatcher cpu %s; %d lines logged, %d dropped, %d bytes of log",
		lines, n, took.Round(time.Millisecond), workerCPU, dispatcherCPU, logged, dropped, logBytes)
	if dispatcherCPU > workerCPU+floodAllowance {
		t.Errorf("the dispatcher spent %s of CPU on a flood that cost the worker %s (allowance %s)", dispatcherCPU, workerCPU, floodAllowance)
	}
	if logBin != "" {
		return // another build: figures only
	}
	// At most the limit's lines in each second it took, and the warnings.
	if most := float64(launch.DefaultLogLines) * (took.Seconds() + 1); float64(logged) > most || float64(logBytes) > 200*most {
		t.Errorf("%d lines, %d bytes of log in %s for the flood", logged, logBytes, took)
	}
	if logged+dropped != lines {
		t.Errorf("%d lines logged and %d dropped, of %d written", logged, dropped, lines)
	}
	if m := metric(t, d, `dispatcher_worker_log_dropped_lines_total{function="hostile"}`); int64(m) != dropped {
		t.Errorf("dispatcher_worker_log_dropped_lines_total = %v, want %d", m, dropped)
	}
}

// metric returns the value of one sample on d's /metrics.
func metric(t *testing.T, d *dproc, sample string) float64 {
	t.Helper()
	_, body := d.getURL(d.admin + "/metrics")
	for l := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %q", sample, l)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", sample)
	return 0
}

// logEntry is one entry of the dispatcher's log, in either format: its
// line (the first line in text) and its fields, with the text format's
// indented continuation lines as the value of its one multi-line field.
type logEntry struct {
	line   string
	fields map[string]string
	block  string // text: the continuation lines, unindented
}

// entries parses the log lines into entries.
func entries(t *testing.T, lines []string) []logEntry {
	t.Helper()
	var out []logEntry
	for _, l := range lines {
		if strings.HasPrefix(l, "\t") {
			if len(out) == 0 {
				t.Fatalf("continuation line first: %q", l)
			}
			e := &out[len(out)-1]
			e.block += strings.TrimPrefix(l, "\t") + "\n"
			continue
		}
		e := logEntry{line: l, fields: map[string]string{}}
		if strings.HasPrefix(l, "{") {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("not a JSON entry: %q", l)
			}
			for k, v := range m {
				e.fields[k] = fmt.Sprint(v)
			}
		} else {
			for _, k := range []string{"msg", "level", "req_id", "pid", "stream", "exit", "stderr", "stack", "child.stack", "worker"} {
				if v, ok := logfmtField(l, k); ok {
					e.fields[k] = v
				}
			}
		}
		out = append(out, e)
	}
	return out
}

// multiline returns the entry's multi-line field: in JSON, field key; in
// text, the continuation lines.
func (e logEntry) multiline(key string) string {
	if e.block != "" {
		return e.block
	}
	return e.fields[key]
}

// TestCrashLogs: a worker's crash, panic or goroutine dump is one log
// entry that names the request, with its trace whole (lines, not escapes),
// in text and JSON, at the default flags.
func TestCrashLogs(t *testing.T) {
	type check func(t *testing.T, es []logEntry, id string)
	find := func(t *testing.T, es []logEntry, what string, match func(logEntry) bool) logEntry {
		t.Helper()
		for _, e := range es {
			if match(e) {
				return e
			}
		}
		t.Fatalf("no entry with %s", what)
		return logEntry{}
	}
	tests := []struct {
		name   string
		worker string
		args   []string
		warmup string // a request before, whose stderr is not the crash's
		path   string
		status int
		wait   []string // messages of entries to wait for (the last one logged after the trace's entry is whole)
		check  check
	}{
		{
			name: "handler panic", worker: "panic", path: "/panic", status: 500,
			wait: []string{"handler panic: boom in handler"},
			check: func(t *testing.T, es []logEntry, id string) {
				e := find(t, es, "the handler panic", func(e logEntry) bool { return e.fields["msg"] == "handler panic: boom in handler" })
				st := e.multiline("child.stack")
				if e.fields["req_id"] != id || !strings.Contains(st, "\ngoroutine ") && !strings.HasPrefix(st, "goroutine ") || !strings.Contains(st, "\n\t") || strings.Contains(st, `\x0a`) {
					t.Errorf("panic entry: req_id %q, stack:\n%s\nentry: %s", e.fields["req_id"], st, e.line)
				}
			},
		},
		{
			name: "goroutine panic", worker: "crash", warmup: "/say?text=earlier+unrelated+line", path: "/gopanic", status: 502,
			wait: []string{"panic: boom in a goroutine", "worker failed during the request", "worker exited unexpectedly; replacing it"},
			check: func(t *testing.T, es []logEntry, id string) {
				e := find(t, es, "the trace", func(e logEntry) bool { return e.fields["msg"] == "panic: boom in a goroutine" })
				st := e.multiline("stack")
				if e.fields["req_id"] != id || e.fields["level"] != "error" || !strings.Contains(st, "\ngoroutine ") || !strings.Contains(st, "\n\t") {
					t.Errorf("trace entry: req_id %q, level %s, stack:\n%s", e.fields["req_id"], e.fields["level"], st)
				}
				f := find(t, es, "the request's failure", func(e logEntry) bool { return e.fields["msg"] == "worker failed during the request" })
				if tail := f.multiline("stderr"); f.fields["req_id"] != id || !strings.HasPrefix(tail, "panic: boom in a goroutine") || strings.Contains(tail, "earlier") {
					t.Errorf("failure entry: req_id %q, stderr %q", f.fields["req_id"], tail)
				}
			},
		},
		{
			name: "exit", worker: "crash", warmup: "/say?text=earlier+unrelated+line", path: "/exit", status: 502,
			wait: []string{"worker failed during the request", "worker exited unexpectedly; replacing it"},
			check: func(t *testing.T, es []logEntry, id string) {
				f := find(t, es, "the request's failure", func(e logEntry) bool { return e.fields["msg"] == "worker failed during the request" })
				if tail := f.multiline("stderr"); f.fields["req_id"] != id || tail != "crash: exiting with status 3 as asked\n" {
					t.Errorf("failure entry: req_id %q, stderr %q", f.fields["req_id"], tail)
				}
				x := find(t, es, "the exit", func(e logEntry) bool { return e.fields["msg"] == "worker exited unexpectedly; replacing it" })
				if x.fields["req_id"] != id || x.multiline("stderr") != "" {
					t.Errorf("exit entry names request %q, repeats stderr %q", x.fields["req_id"], x.multiline("stderr"))
				}
			},
		},
		{
			name: "timeout", worker: "hang", args: []string{"--timeout", "1s"}, path: "/hang", status: 504,
			wait: []string{"SIGQUIT: quit", "worker quarantined: sending SIGQUIT for its goroutine dump, then killing it", "worker killed; replacing it"},
			check: func(t *testing.T, es []logEntry, id string) {
				e := find(t, es, "the goroutine dump", func(e logEntry) bool { return e.fields["msg"] == "SIGQUIT: quit" })
				st := e.multiline("stack")
				if e.fields["req_id"] != id || !strings.Contains(st, "\ngoroutine ") || strings.Count(st, "\n") < 10 {
					t.Errorf("dump entry: req_id %q, stack:\n%s", e.fields["req_id"], st)
				}
				q := find(t, es, "the quarantine", func(e logEntry) bool { return strings.HasPrefix(e.fields["msg"], "worker quarantined") })
				if q.fields["req_id"] != id {
					t.Errorf("quarantine entry names request %q", q.fields["req_id"])
				}
			},
		},
	}
	for _, tt := range tests {
		for _, format := range []string{"text", "json"} {
			t.Run(tt.name+"/"+format, func(t *testing.T) {
				t.Parallel()
				args := append([]string{"--workers", bin(t, tt.worker), "--pool-size", "1", "--log-format", format}, tt.args...)
				d := startDispatcher(t, args...)
				if tt.warmup != "" {
					if resp, body := d.get(tt.warmup); resp.StatusCode != 200 {
						t.Fatalf("%s: %d %s", tt.warmup, resp.StatusCode, body)
					}
					// Read before the next request is sent: what the
					// dispatcher reads later is that request's.
					d.waitLog("earlier unrelated line")
				}
				id := "crash-" + strings.ReplaceAll(t.Name(), "/", "-")
				if resp, body := d.get(tt.path, "X-Request-Id", id); resp.StatusCode != tt.status {
					t.Fatalf("%s: %d %s, want %d", tt.path, resp.StatusCode, body, tt.status)
				}
				for _, msg := range tt.wait {
					d.waitLogFunc(msg, func(l string) bool { m, _ := field(l, "msg"); return m == msg })
				}
				es := entries(t, d.log.Lines())
				for _, e := range es {
					msg := e.fields["msg"]
					if strings.HasPrefix(msg, "goroutine ") || strings.HasPrefix(msg, "\t") || strings.HasPrefix(msg, "main.") || strings.Contains(e.line, `\x0a`) {
						t.Errorf("a line of a trace logged on its own: %s", e.line)
					}
				}
				tt.check(t, es, id)
				if t.Failed() {
					t.Logf("log:\n%s", strings.Join(d.log.Lines(), "\n"))
				}
			})
		}
	}
}

// TestWorkerLogLimitFromConfig: the limits are a function's settings in
// the config file, and the warnings and the metric name the function. As
// root, the worker runs as nobody (as the confinement line says): the
// limit applies to an unprivileged worker as to any.
func TestWorkerLogLimitFromConfig(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	worker, user := bin(t, "hostile"), ""
	if os.Geteuid() == 0 {
		// nobody must reach the sockets' directory and the binary.
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(worker)
		if err != nil {
			t.Fatal(err)
		}
		worker = filepath.Join(dir, "hostile")
		if err := os.WriteFile(worker, b, 0o755); err != nil {
			t.Fatal(err)
		}
		user = "    user: nobody\n"
	} else {
		t.Log("not root: the worker runs as the test's user")
	}
	path := filepath.Join(dir, "dispatcher.yaml")
	text := "worker-log-bytes: 1M\nfunctions:\n  - name: noisy\n    workers: " + worker + "\n    pool-size: 1\n    worker-log-lines: 5\n" + user
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	d := launchProc(t, dir, []string{bin(t, "dispatcher"), "--admin-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--config", path})
	d.awaitListening(false) // with --config, the line names functions
	if user != "" {
		d.waitLog("workers confined", "user 65534:65534")
	}
	t0 := time.Now()
	if resp, body := d.get("/flood?mb=1&line=10"); resp.StatusCode != 200 || !strings.HasPrefix(body, "flood: lines=104857 ") {
		t.Fatalf("/flood: %d %q", resp.StatusCode, body)
	}
	d.waitLog("worker output over its limit: lines dropped", "function=noisy", "worker=hostile")
	if !poll(logWait, func() bool {
		return metric(t, d, `dispatcher_worker_log_dropped_lines_total{function="noisy"}`) > 0
	}) {
		t.Errorf("no dropped lines counted for the function")
	}
	logged := 0
	for _, l := range d.log.Lines() {
		if msg, _ := field(l, "msg"); msg == "xxxxxxxxx" {
			logged++
		}
	}
	if most := 5 * (time.Since(t0).Seconds() + 1); float64(logged) > most {
		t.Errorf("%d lines logged in %s at 5 a second", logged, time.Since(t0))
	}
}
