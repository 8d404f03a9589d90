package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestAccessLogFields(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		format     string
		timeLayout string
	}{
		{"text", logTimeFormat},
		{"json", time.RFC3339Nano},
	} {
		t.Run(tc.format, func(t *testing.T) {
			t.Parallel()
			d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "1", "--log-format", tc.format)
			id := "access-" + tc.format
			resp, _ := d.get("/some/path?q=1&token=s3cret", "X-Request-Id", id, "User-Agent", `agent "quoted"/1.0`, "Host", "app.example:8080")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			line := d.waitLogFunc("access line "+id, func(l string) bool {
				msg, _ := field(l, "msg")
				rid, _ := field(l, "req_id")
				return msg == "request" && rid == id
			})
			for key, want := range map[string]string{
				"method": "GET", "path": "/some/path", "query": "q=1&token=s3cret", "status": "200", "bytes": "12",
				"client": "127.0.0.1", "host": "app.example:8080", "user_agent": `agent "quoted"/1.0`,
				"pid": strconv.Itoa(d.workers[0]), "level": "info",
			} {
				if got, ok := field(line, key); !ok || got != want {
					t.Errorf("%s=%q, want %q: %s", key, got, want, line)
				}
			}
			if ms, _ := field(line, "duration_ms"); !regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`).MatchString(ms) {
				t.Errorf("duration_ms=%q: %s", ms, line)
			}
			// Every line's time has the date.
			for _, l := range d.log.Lines() {
				ts, _ := field(l, "time")
				when, err := time.Parse(tc.timeLayout, ts)
				if err != nil || time.Since(when).Abs() > time.Hour {
					t.Errorf("time %q (%v) is not a full date and time of now: %s", ts, err, l)
				}
			}
		})
	}
}

func TestAccessLogWithoutQuery(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "access-log-query: false\nfunctions:\n  - workers: HELLO\n")
	for name, args := range map[string][]string{
		"flag":        {"--workers", bin(t, "hello"), "--pool-size", "1", "--access-log-query=false"},
		"config file": {"--config", path},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := startProc(t, append([]string{"--listen", "127.0.0.1:0"}, args...)...)
			d.awaitListening(false)
			id := "no-query-" + strings.ReplaceAll(name, " ", "-")
			if resp, _ := d.get("/p?token=s3cret", "X-Request-Id", id); resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			line := d.waitLog("msg=request", "req_id="+id)
			if p, _ := field(line, "path"); p != "/p" || strings.Contains(line, "s3cret") {
				t.Errorf("access line: %s", line)
			}
		})
	}
	t.Run("in a function", func(t *testing.T) {
		t.Parallel()
		path := writeConfig(t, "functions:\n  - workers: HELLO\n    access-log-query: false\n")
		code, stderr, _ := run(t, "--check-config", path)
		if code != 2 || !strings.Contains(stderr, "functions[0].access-log-query is a setting of the whole dispatcher") {
			t.Errorf("exit status %d; stderr:\n%s", code, stderr)
		}
	})
}

// TestAccessLogNothingLostOnSIGTERM: lines still in memory at SIGTERM are
// written before the process exits. With --access-log-flush 1h, none would
// be written otherwise.
func TestAccessLogNothingLostOnSIGTERM(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "1", "--access-log-flush", "1h")
	const n = 200
	for i := range n {
		if resp, _ := d.get("/", "X-Request-Id", fmt.Sprintf("sigterm-%d", i)); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	d.signal(syscall.SIGTERM)
	if st := d.waitExit(exitWait); st.ExitCode() != 0 {
		t.Fatalf("exit %v", st)
	}
	d.log.wait(logWait, func(string) bool { return false }) // to the end of its stderr
	seen := map[string]bool{}
	last := -1
	for i, l := range d.log.Lines() {
		if id, _ := field(l, "req_id"); strings.HasPrefix(id, "sigterm-") && strings.Contains(l, "msg=request") {
			seen[id] = true
		}
		if msg, _ := field(l, "msg"); msg == "stopped" {
			last = i
		}
	}
	if len(seen) != n {
		t.Errorf("%d access lines of %d requests", len(seen), n)
	}
	if lines := d.log.Lines(); last != len(lines)-1 {
		t.Errorf("the last line is not \"stopped\": %s", lines[len(lines)-1])
	}
}

// TestBlockedLogDestination: a dispatcher whose stderr nobody reads keeps
// serving; the lines it cannot write are dropped, counted in a metric, and
// reported once the destination takes lines again.
func TestBlockedLogDestination(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(bin(t, "dispatcher"), "--workers", bin(t, "hello"), "--pool-size", "1",
		"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	cmd.Env = envWithTMPDIR(shortTempDir(t))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
		r.Close()
	}()
	// Read up to the listening line, then stop reading.
	br := bufio.NewReader(r)
	var listening string
	for listening == "" {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("no listening line: %v", err)
		}
		if isListening(l) {
			listening = l
		}
	}
	addr, _ := field(listening, "addr")
	admin, _ := field(listening, "admin")

	// Lines of over 4 KiB: the pipe (64 KiB) and the dispatcher's buffer
	// (1 MiB) fill within 300 requests.
	ua := strings.Repeat("u", 4096)
	const conns, each = 4, 150
	client := &http.Client{Timeout: logWait}
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		wg.Go(func() {
			for range each {
				req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
				req.Header.Set("User-Agent", ua)
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a request while nobody reads the log: %v", err)
	}

	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`(?m)^dispatcher_log_lines_dropped_total ([0-9]+)$`).FindSubmatch(metrics)
	if m == nil {
		t.Fatalf("no dispatcher_log_lines_dropped_total in /metrics")
	}
	dropped, _ := strconv.Atoi(string(m[1]))
	if dropped < 1 || dropped > conns*each {
		t.Fatalf("dispatcher_log_lines_dropped_total %d after %d requests", dropped, conns*each)
	}

	// Reading again: the report comes.
	log := newLogBuf()
	go log.follow(br)
	line, ok := log.wait(logWait, containsAll("level=warning", "log lines dropped"))
	if !ok {
		t.Fatalf("no report of the dropped lines; log:\n%s", log)
	}
	if n, _ := field(line, "dropped"); n != strconv.Itoa(dropped) {
		t.Errorf("report says %s dropped, the metric %d: %s", n, dropped, line)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("exit: %v", waitErr)
		}
	case <-time.After(exitWait):
		t.Errorf("no exit within %s of SIGTERM", exitWait)
	}
}

// TestAccessLogSettingsOnReload: like the other logging settings, they take
// effect at a restart, and a reload that changes them says so.
func TestAccessLogSettingsOnReload(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "functions:\n  - workers: HELLO\n    pool-size: 1\n")
	d := startProc(t, "--listen", "127.0.0.1:0", "--config", path)
	d.awaitListening(false)
	rewriteConfig(t, path, "access-log-query: false\naccess-log-flush: 1s\nfunctions:\n  - workers: HELLO\n    pool-size: 1\n")
	d.signal(syscall.SIGHUP)
	d.waitLog("setting changed: it takes effect at the next restart", "setting=access-log-query", "running=true", "configured=false")
	d.waitLog("setting changed: it takes effect at the next restart", "setting=access-log-flush", "running=100ms", "configured=1s")
	d.waitLog("reloaded")
	if resp, _ := d.get("/?still=logged", "X-Request-Id", "after-reload"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	line := d.waitLog("msg=request", "req_id=after-reload")
	if q, _ := field(line, "query"); q != "still=logged" {
		t.Errorf("query %q after the reload: %s", q, line)
	}
}

func TestAccessLogFlushMustNotBeNegative(t *testing.T) {
	t.Parallel()
	code, stderr, _ := run(t, "--workers", bin(t, "hello"), "--access-log-flush", "-1s")
	if code != 2 || !strings.Contains(stderr, "--access-log-flush -1s: must not be negative") {
		t.Errorf("exit status %d; stderr:\n%s", code, stderr)
	}
}
