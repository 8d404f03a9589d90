package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// outstanding returns the number of exchanges in progress or queued on the
// pool's connections.
func outstanding(p *Pool) int {
	n := 0
	for _, w := range p.sup.all() {
		for _, s := range w.slots {
			n += s.conn.Outstanding()
		}
	}
	return n
}

// countLines returns how many log entries contain s.
func countLines(p *testPool, s string) int {
	n := 0
	for _, e := range p.hook.AllEntries() {
		if strings.Contains(e.Message, s) {
			n++
		}
	}
	return n
}

// A request pipelined behind one that times out did not start: it must be
// retried on the replacement worker, not fail with its predecessor.
func TestPipelinedRequestSurvivesTimeoutOfTheOneBefore(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Pipeline: 4, Timeout: 500 * time.Millisecond})
	p.setStall(time.Hour) // the first request hangs: queue behind it all the same
	pid := p.Workers()[0]
	first := make(chan error, 1)
	go func() {
		_, _, _, err := get(context.Background(), p.Pool, "/hang")
		first <- err
	}()
	waitFor(t, "the hanging request to reach the worker", func() bool { return outstanding(p.Pool) == 1 })
	type result struct {
		status int
		pid    int
		err    error
	}
	second := make(chan result, 1)
	go func() {
		status, _, got, err := get(context.Background(), p.Pool, "/")
		second <- result{status, got, err}
	}()
	waitFor(t, "the second request to be pipelined", func() bool { return outstanding(p.Pool) == 2 })

	var te *TimeoutError
	if err := <-first; !errors.As(err, &te) {
		t.Fatalf("hanging request: %v, want *TimeoutError", err)
	}
	r := <-second
	if r.err != nil || r.status != 200 {
		t.Fatalf("pipelined request: %d %v, want 200 from the replacement", r.status, r.err)
	}
	if r.pid == pid {
		t.Fatalf("pipelined request answered by the killed worker %d", pid)
	}
}

// A request that crashes its worker fails alone; the one queued behind it
// is retried.
func TestPipelinedRequestSurvivesCrashOfTheOneBefore(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Pipeline: 4})
	p.setStall(time.Hour) // the first request hangs: queue behind it all the same
	pid := p.Workers()[0]
	first := make(chan error, 1)
	go func() {
		_, _, _, err := get(context.Background(), p.Pool, "/hang")
		first <- err
	}()
	waitFor(t, "the hanging request to reach the worker", func() bool { return outstanding(p.Pool) == 1 })
	second := make(chan error, 1)
	go func() {
		status, _, got, err := get(context.Background(), p.Pool, "/")
		if err == nil && (status != 200 || got == pid) {
			err = fmt.Errorf("status %d from pid %d (killed: %d)", status, got, pid)
		}
		second <- err
	}()
	waitFor(t, "the second request to be pipelined", func() bool { return outstanding(p.Pool) == 2 })
	for _, c := range p.liveWorkers() {
		c.kill(CauseCrashed, "test")
	}
	var ee *ExitError
	if err := <-first; !errors.As(err, &ee) {
		t.Fatalf("request of the killed worker: %v, want *ExitError", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("pipelined request: %v", err)
	}
}

// liveWorkers returns the workers in rotation.
func (p *Pool) liveWorkers() []*worker {
	var ws []*worker
	for _, w := range p.sup.all() {
		if w.inRotation() {
			ws = append(ws, w)
		}
	}
	return ws
}

// waiting counts the requests waiting for a slot.
func (p *Pool) waiting() int {
	p.adm.mu.Lock()
	defer p.adm.mu.Unlock()
	return p.adm.waiting.n
}

// setStall changes how long a slot may stall and still take requests in
// line.
func (p *Pool) setStall(d time.Duration) {
	p.adm.mu.Lock()
	defer p.adm.mu.Unlock()
	p.adm.stall = d
}

// A queued request whose client goes away returns at once, never runs, and
// leaves the worker serving.
func TestPipelinedRequestCancelledBeforeItStarts(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Pipeline: 4})
	p.setStall(time.Hour) // the first request waits: queue behind it all the same
	pid := p.Workers()[0]
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	first := make(chan error, 1)
	go func() {
		_, _, _, err := get(ctxA, p.Pool, "/ctx")
		first <- err
	}()
	waitFor(t, "the first handler to start", func() bool { return countLines(p, "hang: waiting") == 1 })
	ctxB, cancelB := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() {
		_, _, _, err := get(ctxB, p.Pool, "/ctx")
		second <- err
	}()
	waitFor(t, "the second request to be pipelined", func() bool { return outstanding(p.Pool) == 2 })
	cancelB()
	select {
	case err := <-second:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled queued request: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled queued request waited for the one before it")
	}
	cancelA()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first request: %v", err)
	}
	waitFor(t, "both exchanges to be drained", func() bool { return outstanding(p.Pool) == 0 })
	if n := countLines(p, "hang: waiting"); n != 1 {
		t.Fatalf("%d handlers started, want 1: the cancelled queued request ran", n)
	}
	status, _, got, err := get(context.Background(), p.Pool, "/")
	if err != nil || status != 200 || got != pid {
		t.Fatalf("next request: %d from pid %d (want %d): %v", status, got, pid, err)
	}
}

// Many concurrent requests on one single-slot worker: every response
// belongs to its own request.
func TestPipelinedResponsesStayWithTheirRequests(t *testing.T) {
	p := startPool(t, "echo", Config{Size: 1, Pipeline: 8})
	p.setStall(time.Hour) // a loaded test machine must not turn pipelining off
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	maxOut := 0
	var mu sync.Mutex
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				want := fmt.Sprintf("g%d-i%d-%s", g, i, strings.Repeat("x", g*100))
				req := &ipc.Request{Method: "POST", URI: "/", Proto: "HTTP/1.1", Host: "test",
					ContentLength: int64(len(want)), Body: []byte(want), EOF: true}
				resp, err := p.RoundTrip(context.Background(), req, nil)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				maxOut = max(maxOut, outstanding(p.Pool))
				mu.Unlock()
				var got strings.Builder
				for {
					b, err := resp.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						errs <- err
						return
					}
					got.Write(b)
				}
				resp.Close()
				if got.String() != want {
					errs <- fmt.Errorf("response %q to request %q", got.String(), want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("at most %d exchanges outstanding on the one slot", maxOut)
	waitFor(t, "the slot to be idle", func() bool { return outstanding(p.Pool) == 0 })
}

// A request is not queued behind an exchange that has been running for a
// while: it waits in the dispatcher for whichever slot frees first.
func TestNoPipeliningBehindASlowExchange(t *testing.T) {
	p := startPool(t, "hang", Config{Size: 1, Pipeline: 4})
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	first := make(chan error, 1)
	go func() {
		_, _, _, err := get(ctxA, p.Pool, "/ctx")
		first <- err
	}()
	waitFor(t, "the first handler to start", func() bool { return countLines(p, "hang: waiting") == 1 })
	started := time.Now()
	waitFor(t, "the first exchange to count as slow", func() bool { return time.Since(started) > 2*stall })
	second := make(chan error, 1)
	go func() {
		status, _, _, err := get(context.Background(), p.Pool, "/")
		if err == nil && status != 200 {
			err = fmt.Errorf("status %d", status)
		}
		second <- err
	}()
	waitFor(t, "the second request to wait in the dispatcher", func() bool {
		return p.waiting() == 1
	})
	if n := outstanding(p.Pool); n != 1 {
		t.Fatalf("%d exchanges on the slot, want 1: the request was queued behind a slow one", n)
	}
	cancelA()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first request: %v", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second request: %v", err)
	}
}

// A streamed response lives as long as it makes progress: Timeout bounds
// each wait for a chunk, not the whole stream; a stream that stalls is cut.
func TestStreamOutlivesTimeoutWhileItFlows(t *testing.T) {
	p := startPool(t, "drip", Config{Size: 1, Timeout: time.Second})
	status, body, _, err := get(context.Background(), p.Pool, "/?n=25&every=100ms")
	if err != nil || status != 200 || !strings.HasSuffix(body, "chunk 25\n") {
		t.Fatalf("2.5 s stream with a 1 s timeout: %d, %d bytes, %v", status, len(body), err)
	}
	status, body, _, err = get(context.Background(), p.Pool, "/?n=3&every=3s")
	var te *TimeoutError
	if !errors.As(err, &te) || !strings.HasPrefix(body, "chunk 1\n") {
		t.Fatalf("stalled stream: %d %q %v, want the first chunk then a *TimeoutError", status, body, err)
	}
}
