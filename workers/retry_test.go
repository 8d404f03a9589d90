package workers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/childproc/dispatcher/ipc"
	"github.com/sirupsen/logrus"
)

// randomBytes returns n bytes that differ at every offset.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}

// postStreamed sends data as a streamed request body, its first chunk in the
// request frame, of unknown length (a chunked upload) unless known, and
// reads the whole answer.
func postStreamed(ctx context.Context, p roundTripper, uri string, data []byte, known bool) (int, []byte, int, error) {
	req := &ipc.Request{Method: "POST", URI: uri, Proto: "HTTP/1.1", Host: "test", ContentLength: -1,
		Body: data[:ipc.ChunkSize]}
	var rest io.Reader = bytes.NewReader(data[ipc.ChunkSize:])
	if known {
		req.ContentLength = int64(len(data))
	} else {
		rest = iotest.HalfReader(rest)
	}
	resp, err := p.RoundTrip(ctx, req, rest)
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Close()
	var body []byte
	for {
		b, err := resp.Next()
		if err == io.EOF {
			return resp.Status, body, resp.PID, nil
		}
		if err != nil {
			return resp.Status, body, resp.PID, err
		}
		body = append(body, b...)
	}
}

// armDeath has the pool's one worker answer an exit-after request: it dies
// when it next reads its slot, before it reads a byte (testdata/workers/chaos).
func armDeath(t *testing.T, p *testPool) int {
	t.Helper()
	status, _, pid, err := get(context.Background(), p.Pool, "/?fault=exit-after")
	if err != nil || status != 200 {
		t.Fatalf("exit-after: %d %v", status, err)
	}
	if e := logLine(p.hook, "chaos: exit-after: no seccomp filter"); e != nil {
		t.Fatalf("the chaos worker cannot die on its next read: %s", e.Message)
	}
	return pid
}

// A worker that died idle, before reading the streamed request that came
// next, costs that request nothing: it goes to another worker with its whole
// body, the first window of it replayed.
func TestStreamedRetryAfterIdleDeath(t *testing.T) {
	data := randomBytes(1 << 20)
	for _, tc := range []struct {
		name  string
		known bool
	}{{"1 MiB", true}, {"unknown length", false}} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPool(t, "chaos", Config{Size: 1})
			dead := armDeath(t, p)
			status, body, pid, err := postStreamed(context.Background(), p.Pool, "/?echo=1", data, tc.known)
			if err != nil || status != 200 || !bytes.Equal(body, data) {
				t.Fatalf("streamed upload after an idle death: %d, %d of %d bytes echoed, %v", status, len(body), len(data), err)
			}
			if pid == dead {
				t.Fatalf("answered by the worker that died, pid %d", pid)
			}
			// It was retried because the worker that had it died without
			// acknowledging it (a reset: our frames unread), not because
			// the worker was gone before the request was written.
			e := logLine(p.hook, "request did not reach its worker; retrying on another")
			if e == nil {
				t.Fatal("no retry was logged")
			}
			if err, _ := e.Data[logrus.ErrorKey].(error); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("retried after %v, want a reset connection", err)
			}
		})
	}
}

// A worker that acknowledged a streamed request and crashed in its handler
// may have done anything with it: the request is not sent again.
func TestStreamedNotRetriedAfterHandlerStarted(t *testing.T) {
	p := startPool(t, "chaos", Config{Size: 1})
	_, _, _, err := postStreamed(context.Background(), p.Pool, "/?fault=crash&how=exit", randomBytes(1<<20), true)
	var xe *ExitError
	if !errors.As(err, &xe) || errors.Is(err, ipc.ErrNotDelivered) {
		t.Fatalf("got %v, want an *ExitError", err)
	}
	if e := logLine(p.hook, "retrying on another"); e != nil {
		t.Fatalf("retried: %s", e.Message)
	}
	waitFor(t, "the worker's word on its crash", func() bool { return logLine(p.hook, "chaos: crashing (exit)") != nil })
	n := 0
	for _, e := range p.hook.AllEntries() {
		if strings.HasPrefix(e.Message, "chaos: fault crash") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d workers took the request, want 1", n)
	}
}
