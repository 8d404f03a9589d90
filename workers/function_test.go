package workers

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/ipc"
)

// TestDrainFinishesInFlightThenCloses: a drained pool refuses new requests
// at once, lets the one it runs finish, and only then stops its workers.
func TestDrainFinishesInFlightThenCloses(t *testing.T) {
	old := startPool(t, "echo", Config{})
	fresh := startPool(t, "echo", Config{})
	fn := NewFunction("echo", old.Pool)

	// A request whose body is still coming keeps the old worker busy.
	pr, pw := io.Pipe()
	req := &ipc.Request{Method: "POST", URI: "/", Proto: "HTTP/1.1", Host: "test", ContentLength: -1}
	type result struct {
		body string
		pid  int
		err  error
	}
	inflight := make(chan result, 1)
	go func() {
		resp, err := fn.RoundTrip(context.Background(), req, pr)
		if err != nil {
			inflight <- result{err: err}
			return
		}
		defer resp.Close()
		var b strings.Builder
		for {
			chunk, err := resp.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				inflight <- result{err: err}
				return
			}
			b.Write(chunk)
		}
		inflight <- result{body: b.String(), pid: resp.PID}
	}()
	if _, err := pw.Write([]byte("first ")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the request to be in flight", func() bool { return old.adm.inFlight() == 1 })

	if prev := fn.Swap(fresh.Pool); prev != old.Pool {
		t.Fatal("Swap did not return the previous pool")
	}
	drained := make(chan error, 1)
	go func() { drained <- old.Drain(context.Background()) }()
	waitFor(t, "the old pool to refuse requests", func() bool { return !old.Ready() })
	if _, _, _, err := get(context.Background(), old.Pool, "/"); !errors.Is(err, ErrClosed) {
		t.Fatalf("request to a draining pool: %v, want ErrClosed", err)
	}
	// Through the Function, a new request goes to the new pool.
	status, _, pid, err := get(context.Background(), fn, "/")
	if err != nil || status != 200 || !slices.Contains(fresh.Workers(), pid) {
		t.Fatalf("request after the swap: %d, pid %d, %v; want 200 from the new pool %v", status, pid, err, fresh.Workers())
	}
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while a request was in flight", err)
	default:
	}
	oldPIDs := old.Workers()
	if _, err := pw.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	r := <-inflight
	if r.err != nil || r.body != "first last" {
		t.Fatalf("in-flight request: %q, %v; want its echo", r.body, r.err)
	}
	if err := <-drained; err != nil {
		t.Fatalf("Drain: %v", err)
	}
	for _, pid := range oldPIDs {
		waitGone(t, pid)
	}
}
