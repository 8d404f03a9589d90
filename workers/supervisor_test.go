package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/procstatus"
)

// MaxRequests recycles workers under concurrent load without failing a
// request.
func TestMaxRequestsRecyclesWithoutFailures(t *testing.T) {
	p := startPool(t, "hello", Config{Size: 1, MaxRequests: 10})
	var wg sync.WaitGroup
	var mu sync.Mutex
	pids := map[int]bool{}
	enough := func() bool { mu.Lock(); defer mu.Unlock(); return len(pids) >= 4 }
	deadline := time.Now().Add(20 * time.Second)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !enough() && time.Now().Before(deadline) {
				status, body, pid, err := get(context.Background(), p.Pool, "/")
				if err != nil || status != 200 || body != "hello world\n" {
					t.Errorf("%d %q %v", status, body, err)
					return
				}
				mu.Lock()
				pids[pid] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if !enough() {
		t.Fatalf("only %d workers served requests within the deadline with MaxRequests 10", len(pids))
	}
	if e := logLine(p.hook, "recycling worker"); e == nil || !strings.HasPrefix(fmt.Sprint(e.Data["why"]), "served 1") {
		t.Errorf("recycling log line: %v", e)
	}
	if e := logLine(p.hook, "exited unexpectedly"); e != nil {
		t.Errorf("a recycled worker was logged as a failure: %v", e.Data)
	}
	waitFor(t, "one worker left", func() bool { return len(p.Workers()) == 1 })
}

// MaxRSS recycles a worker over the limit.
func TestMaxRSSRecycles(t *testing.T) {
	p := startPool(t, "hello", Config{Size: 1, MaxRSS: 1 << 20, RSSInterval: 20 * time.Millisecond})
	first := p.Workers()[0]
	waitFor(t, "a recycling over the memory limit", func() bool {
		e := logLine(p.hook, "recycling worker")
		return e != nil && strings.Contains(fmt.Sprint(e.Data["why"]), "resident memory")
	})
	waitGone(t, first)
	if status, _, pid, err := get(context.Background(), p.Pool, "/"); err != nil || status != 200 || pid == first {
		t.Fatalf("after recycling: %d from %d (first %d) %v", status, pid, first, err)
	}
}

// A timed-out Go worker is sent SIGQUIT first: its goroutine dump is in
// the log.
func TestTimeoutQuarantineDumpsGoroutines(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Timeout: 300 * time.Millisecond})
	pid := p.Workers()[0]
	if _, _, _, err := get(context.Background(), p.Pool, "/hang"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging request: %v", err)
	}
	waitFor(t, "the goroutine dump in the log", func() bool { return logLine(p.hook, "goroutine ") != nil })
	e := logLine(p.hook, "worker quarantined")
	if e == nil || e.Data["reason"] != "request timed out" || e.Data["pid"] != pid {
		t.Fatalf("quarantine log line: %v", e)
	}
	waitGone(t, pid)
}

// A worker that does not answer a health ping is quarantined and replaced.
func TestHealthPingQuarantinesAFrozenWorker(t *testing.T) {
	p := startPool(t, "hello", Config{Size: 1, PingInterval: 50 * time.Millisecond, PingTimeout: 200 * time.Millisecond,
		QuarantineGrace: 100 * time.Millisecond})
	pid := p.Workers()[0]
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the frozen worker to be quarantined", func() bool {
		e := logLine(p.hook, "worker quarantined")
		return e != nil && strings.Contains(fmt.Sprint(e.Data["reason"]), "health ping")
	})
	waitGone(t, pid)
	waitFor(t, "a replacement", func() bool { w := p.Workers(); return len(w) == 1 && w[0] != pid })
	if status, _, _, err := get(context.Background(), p.Pool, "/"); err != nil || status != 200 {
		t.Fatalf("after the quarantine: %d %v", status, err)
	}
}

// install copies the test worker src to dst atomically (a running binary
// cannot be overwritten in place).
func install(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	tmp := dst + ".new"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// A binary that keeps failing opens the breaker: requests are refused at
// once, saying until when; once the binary is fixed the probe closes it.
func TestBreakerOpensAndCloses(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "fn")
	install(t, bins["hello"], path)
	bins["breaker-fn"] = path
	t.Cleanup(func() { delete(bins, "breaker-fn") })
	p := startPool(t, "breaker-fn", Config{Size: 1, Breaker: BreakerConfig{StartFailures: 3, Window: time.Minute, Backoff: 500 * time.Millisecond}})
	pid := p.Workers()[0]

	install(t, bins["stdoutjunk"], path) // not a worker: every start fails
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the breaker to open", func() bool { return logLine(p.hook, "breaker open") != nil })
	t0 := time.Now()
	_, _, _, err := get(context.Background(), p.Pool, "/")
	var oe *OverloadError
	if !errors.As(err, &oe) || !strings.Contains(oe.Reason, "quarantined") || !strings.Contains(oe.Reason, "until") {
		t.Fatalf("request with the breaker open: %v", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Fatalf("refusal took %s, want it at once", d)
	}

	install(t, bins["hello"], path)
	waitFor(t, "the breaker to close", func() bool { return logLine(p.hook, "breaker closed") != nil })
	if status, body, _, err := get(context.Background(), p.Pool, "/"); err != nil || status != 200 || body != "hello world\n" {
		t.Fatalf("after the fix: %d %q %v", status, body, err)
	}
}

// The memory of a worker counts its descendants' (under a sandbox the
// worker itself is the child of the process the pool started).
func TestResidentBytesCountsDescendants(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, CancelGrace: 50 * time.Millisecond})
	pid := p.Workers()[0]
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		// The handler ignores its cancelled context: the worker is killed
		// after CancelGrace, before the pool closes (a stop would wait for
		// the handler).
		cancel()
		waitFor(t, "the hung worker to be replaced", func() bool {
			w := p.Workers()
			return len(w) == 1 && w[0] != pid
		})
	}()
	go get(ctx, p.Pool, "/spawn") // starts `sleep 1000` and never answers
	var kid int64
	waitFor(t, "the worker's child, with its memory", func() bool {
		// Between its fork and its exec the child is a copy of the worker
		// (or shows no VmRSS): wait until it runs sleep.
		kids := childPIDs(pid)
		if len(kids) == 0 {
			return false
		}
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", kids[0])); err != nil || strings.TrimSpace(string(comm)) != "sleep" {
			return false
		}
		kid, _ = procstatus.Bytes(kids[0], "VmRSS")
		return kid > 0
	})
	own, err := procstatus.Bytes(pid, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	total, err := residentBytes(pid)
	if err != nil {
		t.Fatal(err)
	}
	if total < own+kid/2 {
		t.Errorf("residentBytes = %d, want about the worker's %d + its child's %d", total, own, kid)
	}
}
