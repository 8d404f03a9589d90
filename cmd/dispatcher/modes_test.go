package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/childproc/dispatcher/workers"
)

// Unless --max-workers is given, oneshot mode leaves it to workers.Config's
// default for the mode (twice the CPUs); other modes take the flag's.
func TestMaxWorkersFlagDefault(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--mode", "oneshot"}, 0},
		{[]string{"--mode", "oneshot", "--max-workers", "3"}, 3},
		{[]string{"--mode", "ondemand"}, runtime.NumCPU()},
	} {
		fs := flag.NewFlagSet("dispatcher", flag.ContinueOnError)
		var f modeFlags
		f.register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		set := map[string]bool{}
		fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
		if err := f.check(1, 1, set); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := f.apply(workers.Config{}).MaxWorkers; got != tc.want {
			t.Errorf("%v: MaxWorkers %d, want %d", tc.args, got, tc.want)
		}
	}
}

func TestModeUsageErrors(t *testing.T) {
	t.Parallel()
	hello := bin(t, "hello")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown mode", []string{"--mode", "lambda"}, `--mode "lambda": must be pool, ondemand or oneshot`},
		{"oneshot concurrency", []string{"--mode", "oneshot", "--concurrency", "2"}, "--concurrency 2: a oneshot worker serves one request"},
		{"oneshot pipeline", []string{"--mode", "oneshot", "--pipeline", "4"}, "--pipeline 4: a oneshot worker serves one request"},
		{"pool size outside pool mode", []string{"--mode", "ondemand", "--pool-size", "3"}, "--pool-size: only for --mode pool"},
		{"max workers", []string{"--mode", "ondemand", "--max-workers", "0"}, "--max-workers 0: must be at least 1"},
		{"max workers oneshot", []string{"--mode", "oneshot", "--max-workers", "0"}, "--max-workers 0: must be at least 1"},
		{"idle timeout", []string{"--idle-timeout", "0s"}, "--idle-timeout 0s: must be positive"},
		{"spares", []string{"--spares", "-1"}, "--spares -1: must not be negative"},
		{"queue", []string{"--queue", "-5"}, "--queue -5: must not be negative"},
		{"queue timeout", []string{"--queue-timeout", "-1s"}, "--queue-timeout -1s: must be positive"},
		{"max requests", []string{"--max-requests", "-1"}, "--max-requests -1: must not be negative"},
		{"max rss", []string{"--max-rss", "lots"}, `--max-rss "lots": want a size in bytes such as 0, 65536, 512K, 32M or 1G`},
		{"ping timeout", []string{"--ping-timeout", "0s"}, "--ping-timeout 0s: must be positive"},
		{"breaker start failures", []string{"--breaker-start-failures", "-2"}, "--breaker-start-failures -2: must not be negative"},
		{"breaker crash ratio", []string{"--breaker-crash-ratio", "1"}, "--breaker-crash-ratio 1: must be at least 0 and below 1"},
		{"breaker min requests", []string{"--breaker-min-requests", "0"}, "--breaker-min-requests 0: must be at least 1"},
		{"breaker window", []string{"--breaker-window", "0s"}, "--breaker-window 0s: must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr, _ := run(t, append([]string{"--workers", hello}, tc.args...)...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.want)
			}
		})
	}
}

// ondemand through the CLI: no worker at start, one after the first
// request.
func TestOnDemandMode(t *testing.T) {
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--mode", "ondemand", "--max-workers", "2")
	if len(d.workers) != 0 || len(processesOf(bin(t, "hello"))) != 0 {
		t.Fatalf("workers %v at start in ondemand mode", d.workers)
	}
	resp, body := d.get("/")
	if resp.StatusCode != 200 || body != "hello world\n" {
		t.Fatalf("cold request: %d %q", resp.StatusCode, body)
	}
}

// oneshot through the CLI: a global counter reads 1 on every request, each
// from its own process.
func TestOneShotMode(t *testing.T) {
	// --sandbox=off: fresh processes are told apart by their pids, which
	// in a sandbox are their PID namespaces' (all alike).
	d := startDispatcher(t, "--workers", bin(t, "counter"), "--mode", "oneshot", "--spares", "1", "--max-workers", "3", "--sandbox=off")
	seen := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := d.get("/")
			mu.Lock()
			defer mu.Unlock()
			var n, pid int
			if _, err := fmt.Sscanf(body, "%d %d", &n, &pid); err != nil || resp.StatusCode != 200 || n != 1 || seen[body] {
				t.Errorf("%d %q (seen before: %v)", resp.StatusCode, body, seen[body])
			}
			seen[body] = true
		}()
	}
	wg.Wait()
}

// A full queue answers 503 with Retry-After at once.
func TestQueueOverflowIs503(t *testing.T) {
	d := startDispatcher(t, "--workers", bin(t, "hang"), "--pool-size", "1", "--pipeline", "1", "--queue", "1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	send := func() (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, d.url+"/ctx", nil)
		resp, err := d.client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	go send()
	d.waitLog("hang: waiting for cancellation")
	// Of two more, one waits in the queue and the other is refused at once.
	refused := make(chan *http.Response, 2)
	for range 2 {
		go func() {
			if resp, err := send(); err == nil {
				refused <- resp
			}
		}()
	}
	select {
	case resp := <-refused:
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no request refused with the queue full")
	}
	d.waitLog("overloaded: refusing requests")
}
