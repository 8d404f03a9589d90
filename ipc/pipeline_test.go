package ipc

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// nextRequest reads the next frame, which must be a request.
func nextRequest(tb testing.TB, sc *ServerConn) *Request {
	tb.Helper()
	f, err := sc.Next()
	if err != nil {
		tb.Errorf("worker: %v", err)
		return nil
	}
	if f.Kind != KindRequest {
		tb.Errorf("worker: unexpected %s frame", f.Kind)
		return nil
	}
	r := *f.Request
	r.Body = clone(r.Body)
	return &r
}

func sendQueued(tb testing.TB, c *Conn, uri string) *Ticket {
	tb.Helper()
	t := new(Ticket)
	if err := c.Send(t, &Request{Method: "GET", URI: uri, EOF: true}, nil); err != nil {
		tb.Fatalf("Send %s: %v", uri, err)
	}
	return t
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestConnPipelineOrder pipelines three requests: each ticket gets the turn
// only when the response before it was read to its end, and each keeps its
// own head, body and trailers.
func TestConnPipelineOrder(t *testing.T) {
	c, sc := connPair(t)
	wait := goWorker(t, func() error {
		var reqs []*Request
		for range 3 {
			reqs = append(reqs, nextRequest(t, sc))
		}
		for _, r := range reqs {
			if r == nil {
				return errors.New("missing request")
			}
		}
		// A whole response, a streamed one, a whole one.
		if err := sc.WriteResponse(&Response{ID: reqs[0].ID, Status: 200, Body: []byte("one"), EOF: true,
			Trailer: http.Header{"N": {"1"}}}); err != nil {
			return err
		}
		if err := sc.WriteResponse(&Response{ID: reqs[1].ID, Status: 201, Body: []byte("tw")}); err != nil {
			return err
		}
		if err := sc.WriteBody(reqs[1].ID, []byte("o")); err != nil {
			return err
		}
		if err := sc.WriteEnd(reqs[1].ID, http.Header{"N": {"2"}}); err != nil {
			return err
		}
		return sc.WriteResponse(&Response{ID: reqs[2].ID, Status: 202, Body: []byte("three"), EOF: true})
	}, c)

	t1, t2, t3 := sendQueued(t, c, "/1"), sendQueued(t, c, "/2"), sendQueued(t, c, "/3")
	if t1.Turn() != nil || t2.Turn() == nil || t3.Turn() == nil {
		t.Fatal("only the first ticket should hold the turn at once")
	}
	if n := c.Outstanding(); n != 3 {
		t.Errorf("Outstanding() = %d, want 3", n)
	}
	wait()

	r1, b1, err := t1.Head()
	if err != nil || r1.Status != 200 {
		t.Fatalf("head 1: %v, %v", r1, err)
	}
	if closed(t2.Turn()) {
		t.Fatal("ticket 2 got the turn before the body of 1 was read")
	}
	got1, err := readAllNext(t, b1)
	if err != nil || string(got1) != "one" {
		t.Fatalf("body 1 %q, %v", got1, err)
	}
	recvOrFail(t, t2.Turn(), "the turn of ticket 2")
	r2, b2, err := t2.Head()
	if err != nil || r2.Status != 201 {
		t.Fatalf("head 2: %v, %v", r2, err)
	}
	if closed(t3.Turn()) {
		t.Fatal("ticket 3 got the turn during the body of 2")
	}
	got2, err := readAllNext(t, b2)
	if err != nil || string(got2) != "two" {
		t.Fatalf("body 2 %q, %v", got2, err)
	}
	recvOrFail(t, t3.Turn(), "the turn of ticket 3")
	r3, b3, err := t3.Head()
	if err != nil || r3.Status != 202 {
		t.Fatalf("head 3: %v, %v", r3, err)
	}
	if got3, err := readAllNext(t, b3); err != nil || string(got3) != "three" {
		t.Fatalf("body 3 %q, %v", got3, err)
	}
	// Each ticket kept its own trailers and status.
	if !reflect.DeepEqual(t1.Trailer(), http.Header{"N": {"1"}}) || !reflect.DeepEqual(t2.Trailer(), http.Header{"N": {"2"}}) || t3.Trailer() != nil {
		t.Errorf("trailers %v, %v, %v", t1.Trailer(), t2.Trailer(), t3.Trailer())
	}
	if r1.Status != 200 || r2.Status != 201 {
		t.Errorf("statuses overwritten: %d, %d", r1.Status, r2.Status)
	}
	if !c.Idle() || c.Err() != nil {
		t.Errorf("Idle() = %v, Err() = %v after the last response", c.Idle(), c.Err())
	}
}

// TestConnPipelineStreamedBodyWhileBusy: a streamed request cannot queue
// behind another exchange, and trying does not break the connection.
func TestConnPipelineStreamedBodyWhileBusy(t *testing.T) {
	c, sc := connPair(t)
	goWorker(t, func() error {
		for range 2 {
			r := nextRequest(t, sc)
			if r == nil {
				return errors.New("missing request")
			}
			if err := sc.WriteResponse(&Response{ID: r.ID, Status: 204, EOF: true}); err != nil {
				return err
			}
		}
		return nil
	}, c)
	t1 := sendQueued(t, c, "/1")
	var t2 Ticket
	if err := c.Send(&t2, &Request{Method: "POST", URI: "/up"}, strings.NewReader("")); err == nil {
		t.Fatal("a streamed request was queued behind another exchange")
	}
	if c.Err() != nil {
		t.Fatalf("the refusal broke the connection: %v", c.Err())
	}
	if _, b, err := t1.Head(); err != nil {
		t.Fatal(err)
	} else if _, err := readAllNext(t, b); err != nil {
		t.Fatal(err)
	}
	t3 := sendQueued(t, c, "/3")
	if t3.Turn() != nil {
		t.Fatal("a request on an idle connection must hold the turn at once")
	}
	if _, b, err := t3.Head(); err != nil {
		t.Fatal(err)
	} else if _, err := readAllNext(t, b); err != nil {
		t.Fatal(err)
	}
}

// TestConnPipelineCancelQueued: a queued exchange that is cancelled is
// answered, in order, by an abort; draining it leaves the connection idle
// and usable.
func TestConnPipelineCancelQueued(t *testing.T) {
	c, sc := connPair(t)
	goWorker(t, func() error {
		r1 := nextRequest(t, sc)
		r2 := nextRequest(t, sc)
		if r1 == nil || r2 == nil {
			return errors.New("missing request")
		}
		f, err := sc.Next()
		if err != nil {
			return err
		}
		if f.Kind != KindCancel || f.ID != r2.ID {
			return fmt.Errorf("got %s frame for %d, want a cancel for %d", f.Kind, f.ID, r2.ID)
		}
		if err := sc.WriteResponse(&Response{ID: r1.ID, Status: 200, Body: []byte("1"), EOF: true}); err != nil {
			return err
		}
		if err := sc.WriteAbort(r2.ID, "cancelled before it started"); err != nil {
			return err
		}
		return echo(sc)
	}, c)
	t1, t2 := sendQueued(t, c, "/1"), sendQueued(t, c, "/2")
	if err := t2.Cancel(); err != nil {
		t.Fatal(err)
	}
	if _, b, err := t1.Head(); err != nil {
		t.Fatal(err)
	} else if got, err := readAllNext(t, b); err != nil || string(got) != "1" {
		t.Fatalf("body 1 %q, %v", got, err)
	}
	recvOrFail(t, t2.Turn(), "the turn of the cancelled ticket")
	if err := t2.Drain(); err != nil {
		t.Fatalf("Drain of the cancelled ticket: %v", err)
	}
	if !c.Idle() {
		t.Fatal("connection busy after the cancelled exchange was drained")
	}
	if resp, _, err := c.RoundTrip(&Request{Method: "GET", URI: "/after", EOF: true}, nil); err != nil || resp.Status != 200 {
		t.Fatalf("next exchange: %v, %v", resp, err)
	}
}

// TestConnPipelineInterrupt: Interrupt affects the ticket holding the turn
// only, never a queued one.
func TestConnPipelineInterrupt(t *testing.T) {
	c, sc := connPair(t)
	release := make(chan struct{})
	goWorker(t, func() error {
		r1 := nextRequest(t, sc)
		r2 := nextRequest(t, sc)
		if r1 == nil || r2 == nil {
			return errors.New("missing request")
		}
		<-release
		for _, r := range []*Request{r1, r2} {
			if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200, EOF: true}); err != nil {
				return err
			}
		}
		return nil
	}, c)
	t1, t2 := sendQueued(t, c, "/1"), sendQueued(t, c, "/2")
	t2.Interrupt() // queued: no effect on the holder's read
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	t1.Interrupt()
	if _, _, err := t1.Head(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("interrupted head: %v", err)
	}
	close(release)
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	if err := t1.Drain(); err != nil {
		t.Fatalf("Drain after an interrupt: %v", err)
	}
	recvOrFail(t, t2.Turn(), "the turn of ticket 2")
	if r, b, err := t2.Head(); err != nil || r.Status != 200 {
		t.Fatalf("head 2: %v, %v", r, err)
	} else if _, err := readAllNext(t, b); err != nil {
		t.Fatal(err)
	}
}

// TestConnPipelineDiscard: after the exchange holding the turn fails and the
// worker is gone, Discard tells each queued request whether the worker can
// have started it.
func TestConnPipelineDiscard(t *testing.T) {
	tests := []struct {
		name string
		// worker gets the requests and returns when it "dies" (the test
		// closes its end).
		worker func(sc *ServerConn, reqs []*Request) error
		// holder reads the first response until it fails.
		holder func(t *testing.T, t1 *Ticket) error
		want   error // for the queued tickets
	}{
		{
			name:   "died with nothing written",
			worker: func(sc *ServerConn, reqs []*Request) error { return nil },
			holder: func(t *testing.T, t1 *Ticket) error {
				_, _, err := t1.Head()
				return err
			},
			want: ErrNotDelivered,
		},
		{
			name: "died in the middle of the first body",
			worker: func(sc *ServerConn, reqs []*Request) error {
				if err := sc.WriteResponse(&Response{ID: reqs[0].ID, Status: 200}); err != nil {
					return err
				}
				return sc.WriteBody(reqs[0].ID, []byte("part"))
			},
			holder: func(t *testing.T, t1 *Ticket) error {
				_, b, err := t1.Head()
				if err != nil {
					return err
				}
				_, err = readAllNext(t, b)
				return err
			},
			want: ErrNotDelivered,
		},
		{
			// The holder gave up (a timeout) just before the end arrived:
			// the worker may have started the next request.
			name: "wrote the end after the holder gave up",
			worker: func(sc *ServerConn, reqs []*Request) error {
				if err := sc.WriteResponse(&Response{ID: reqs[0].ID, Status: 200}); err != nil {
					return err
				}
				return sc.WriteEnd(reqs[0].ID, nil)
			},
			holder: func(t *testing.T, t1 *Ticket) error {
				if _, _, err := t1.Head(); err != nil {
					return err
				}
				return os.ErrDeadlineExceeded
			},
			want: ErrPeerClosed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, w := socketpair(t)
			c, sc := NewConn(h, 0), NewServerConn(w, 0)
			died := make(chan struct{})
			goWorker(t, func() error {
				defer close(died)
				defer w.Close()
				var reqs []*Request
				for range 3 {
					r := nextRequest(t, sc)
					if r == nil {
						return errors.New("missing request")
					}
					reqs = append(reqs, r)
				}
				return tt.worker(sc, reqs)
			}, h)
			t1, t2, t3 := sendQueued(t, c, "/1"), sendQueued(t, c, "/2"), sendQueued(t, c, "/3")
			recvOrFail(t, died, "the worker's death")
			err := tt.holder(t, t1)
			if err == nil {
				t.Fatal("the first exchange did not fail")
			}
			if closed(t2.Turn()) {
				t.Fatal("a failure passed the turn on")
			}
			if !t1.Holds() || t2.Holds() {
				t.Fatalf("after the failure: holds %v, %v; want the failed holder alone", t1.Holds(), t2.Holds())
			}
			c.Discard(err)
			if t2.Holds() || t3.Holds() {
				t.Error("a released ticket holds the turn")
			}
			for i, q := range []*Ticket{t2, t3} {
				recvOrFail(t, q.Turn(), "the release of a queued ticket")
				if _, _, err := q.Head(); !errors.Is(err, tt.want) {
					t.Errorf("queued ticket %d: %v, want %v", i+2, err, tt.want)
				}
				if tt.want == ErrPeerClosed && errors.Is(err, ErrNotDelivered) {
					t.Errorf("queued ticket %d may have started but is marked not delivered", i+2)
				}
			}
		})
	}
}

// Request.Set replaces or adds header fields on the wire without touching
// Request.Header.
func TestRequestSetFields(t *testing.T) {
	c, sc := connPair(t)
	got := make(chan http.Header, 1)
	goWorker(t, func() error {
		r := nextRequest(t, sc)
		if r == nil {
			return errors.New("missing request")
		}
		got <- r.Header
		return sc.WriteResponse(&Response{ID: r.ID, Status: 204, EOF: true})
	}, c)
	h := http.Header{"Accept": {"*/*"}, "X-Forwarded-For": {"spoofed"}, "Multi": {"a", "b"}}
	req := &Request{Method: "GET", URI: "/", Header: h, EOF: true,
		Set: []HeaderField{{Name: "X-Forwarded-For", Value: "192.0.2.1"}, {Name: "X-Forwarded-Proto", Value: "http"}}}
	if _, b, err := c.RoundTrip(req, nil); err != nil {
		t.Fatal(err)
	} else if _, err := readAllNext(t, b); err != nil {
		t.Fatal(err)
	}
	want := http.Header{"Accept": {"*/*"}, "Multi": {"a", "b"}, "X-Forwarded-For": {"192.0.2.1"}, "X-Forwarded-Proto": {"http"}}
	if g := recvOrFail(t, got, "the request"); !reflect.DeepEqual(g, want) {
		t.Fatalf("worker saw %v, want %v", g, want)
	}
	if h.Get("X-Forwarded-For") != "spoofed" || len(h) != 3 {
		t.Fatalf("Request.Header was modified: %v", h)
	}
}

// Extend never undoes an Interrupt.
func TestExtendAfterInterrupt(t *testing.T) {
	c, sc := connPair(t)
	goWorker(t, func() error {
		if nextRequest(t, sc) == nil {
			return errors.New("missing request")
		}
		return nil
	}, c)
	t1 := sendQueued(t, c, "/1")
	t1.Interrupt()
	t1.Extend(time.Now().Add(testTimeout))
	if _, _, err := t1.Head(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("head after Interrupt then Extend: %v, want a deadline error", err)
	}
}

// TestConnQueuedSendFailure: a request queued behind a running one, on a
// connection whose worker has gone, fails to send, as not delivered. Its
// ticket does not hold the turn, so its caller leaves Discard to the
// holder, whose read fails too (the two discarding at once was a data race
// on the frame reader).
func TestConnQueuedSendFailure(t *testing.T) {
	h, w := socketpair(t)
	c, sc := NewConn(h, 0), NewServerConn(w, 0)
	wait := goWorker(t, func() error {
		defer w.Close()
		if nextRequest(t, sc) == nil {
			return errors.New("missing request")
		}
		return nil
	}, h)
	t1 := sendQueued(t, c, "/1")
	wait() // the worker read the request and closed its end
	t2 := new(Ticket)
	err := c.Send(t2, &Request{Method: "GET", URI: "/2", EOF: true}, nil)
	if !errors.Is(err, ErrNotDelivered) {
		t.Fatalf("send behind the holder to a closed worker: %v, want not delivered", err)
	}
	if !t1.Holds() || t2.Holds() {
		t.Fatalf("holds %v, %v; want the running exchange alone", t1.Holds(), t2.Holds())
	}
	_, _, headErr := t1.Head()
	if headErr == nil {
		t.Fatal("the holder's read did not fail")
	}
	if !t1.Holds() {
		t.Error("the failed holder does not hold the turn")
	}
	c.Discard(headErr)
	if t2.Holds() {
		t.Error("the failed send holds the turn")
	}
	// On an idle connection, the ticket whose send failed holds the dead
	// turn: its caller discards.
	h2, w2 := socketpair(t)
	w2.Close()
	c2 := NewConn(h2, 0)
	t3 := new(Ticket)
	err = c2.Send(t3, &Request{Method: "GET", URI: "/3", EOF: true}, nil)
	if !errors.Is(err, ErrNotDelivered) {
		t.Fatalf("send on an idle connection to a closed worker: %v, want not delivered", err)
	}
	if !t3.Holds() {
		t.Error("the failed send on an idle connection does not hold the turn")
	}
	c2.Discard(err)
}
