package sdk

import (
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// A request queued behind a running one is given back when the dispatcher
// withdraws it: its handler never runs, the running exchange is not
// disturbed, and the slot goes on serving. A request that already runs is
// not given back.
func TestWithdrawQueued(t *testing.T) {
	release := make(chan struct{})
	ran := make(chan string, 4)
	w := &worker{depth: 4, h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran <- r.URL.Path
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, r.URL.Path)
	})}
	c := ipc.NewConn(serveOneSlot(t, w, []string{ipc.FeatureWithdraw}), 0)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Ping(); err != nil {
		t.Fatal(err)
	}
	if !c.CanWithdraw() {
		t.Fatal("the pong did not list withdraw")
	}
	get := func(tk *ipc.Ticket, path string) {
		t.Helper()
		if err := c.Send(tk, &ipc.Request{Method: "GET", URI: path, Proto: "HTTP/1.1", EOF: true}, nil); err != nil {
			t.Fatal(err)
		}
	}
	var slow, queued, next ipc.Ticket
	get(&slow, "/slow")
	if p := <-ran; p != "/slow" {
		t.Fatalf("ran %s first", p)
	}
	get(&queued, "/queued")
	if !queued.Withdraw() {
		t.Fatal("Withdraw of a queued request was not sent")
	}
	if queued.Withdraw() {
		t.Error("a second Withdraw was sent")
	}
	// The answer comes while /slow still runs: read /slow's head, which
	// comes only after release, in another goroutine.
	heads := make(chan error, 1)
	go func() {
		_, b, err := slow.Head()
		if err == nil {
			_, err = io.ReadAll(b)
		}
		heads <- err
	}()
	select {
	case <-queued.Turn():
	case <-time.After(5 * time.Second):
		t.Fatal("no withdrawn answer while the request before it runs")
	}
	if _, _, err := queued.Head(); !errors.Is(err, ipc.ErrWithdrawn) || !errors.Is(err, ipc.ErrNotDelivered) {
		t.Fatalf("withdrawn request: %v, want ErrWithdrawn and ErrNotDelivered", err)
	}
	close(release)
	if err := <-heads; err != nil {
		t.Fatalf("the running request: %v", err)
	}
	if slow.Withdraw() {
		t.Error("Withdraw sent for a request that ran")
	}
	get(&next, "/next")
	_, b, err := next.Head()
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := io.ReadAll(b); string(body) != "/next" {
		t.Fatalf("next request answered %q", body)
	}
	close(ran)
	for p := range ran {
		if p == "/queued" {
			t.Error("the withdrawn request's handler ran")
		}
	}
}

// A withdraw that comes as the request before the withdrawn one ends must
// still be answered before anything of the request after it, which may
// then start at once: otherwise the dispatcher would read that request's
// answer as the withdrawn one's.
func TestWithdrawRacingTheEndOfTheRunningRequest(t *testing.T) {
	release := make(chan struct{}, 1)
	w := &worker{depth: 4, h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, r.URL.Path)
	})}
	c := ipc.NewConn(serveOneSlot(t, w, []string{ipc.FeatureWithdraw}), 0)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.Ping(); err != nil {
		t.Fatal(err)
	}
	send := func(tk *ipc.Ticket, path string) {
		t.Helper()
		if err := c.Send(tk, &ipc.Request{Method: "GET", URI: path, Proto: "HTTP/1.1", EOF: true}, nil); err != nil {
			t.Fatal(err)
		}
	}
	read := func(tk *ipc.Ticket) (string, error) {
		if turn := tk.Turn(); turn != nil {
			<-turn
		}
		_, b, err := tk.Head()
		if err != nil {
			return "", err
		}
		body, err := io.ReadAll(b)
		return string(body), err
	}
	for i := range 300 {
		var slow, mid, last ipc.Ticket
		send(&slow, "/slow")
		send(&mid, "/mid")
		send(&last, "/last")
		go func() { release <- struct{}{} }()
		mid.Withdraw()
		if body, err := read(&slow); err != nil || body != "/slow" {
			t.Fatalf("round %d: the running request: %q %v", i, body, err)
		}
		if body, err := read(&mid); err != nil && !errors.Is(err, ipc.ErrWithdrawn) || err == nil && body != "/mid" {
			t.Fatalf("round %d: the withdrawn request: %q %v", i, body, err)
		}
		if body, err := read(&last); err != nil || body != "/last" {
			t.Fatalf("round %d: the request after it: %q %v", i, body, err)
		}
	}
}
