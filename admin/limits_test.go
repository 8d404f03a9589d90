package admin_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/admin"
	"github.com/childproc/dispatcher/workers"
)

// /status leaves the query strings of requests in flight out (they may
// hold tokens), unless ShowQueries was called.
func TestStatusHidesQueries(t *testing.T) {
	f := newFixture(t, "hang", workers.Config{Size: 1, Timeout: 2 * time.Second, QuarantineGrace: 50 * time.Millisecond})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.Get(f.front.URL + "/hang?token=s3cret&x=1"); err == nil {
			resp.Body.Close()
		}
	}()
	t.Cleanup(func() { <-done })
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := f.adminGet(t, "/status?format=json")
		var st admin.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if ws := st.Functions[0].Workers; len(ws) == 1 && ws[0].State == workers.StateBusy {
			if ws[0].Current != "GET /hang" {
				t.Errorf("current request %q, want GET /hang", ws[0].Current)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no busy worker in the status: %s", body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, format := range []string{"json", "html"} {
		if _, body := f.adminGet(t, "/status?format="+format); strings.Contains(body, "s3cret") || !strings.Contains(body, "GET /hang") {
			t.Errorf("%s status: want GET /hang without its query:\n%s", format, body)
		}
	}
	f.admin.ShowQueries()
	for _, format := range []string{"json", "html"} {
		if _, body := f.adminGet(t, "/status?format="+format); !strings.Contains(body, "s3cret") {
			t.Errorf("%s status after ShowQueries: no query:\n%s", format, body)
		}
	}
}

// serveAdmin serves an admin server (with no functions) under lim on
// loopback and returns its address.
func serveAdmin(t *testing.T, lim admin.Limits) string {
	t.Helper()
	m := admin.NewMetrics(func() []admin.Function { return nil }, admin.BuildInfo{})
	s := admin.New(func() []admin.Function { return nil }, m, "test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := s.HTTPServer(lim, nil)
	go hs.Serve(lim.Listener(ln))
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// healthz sends GET /healthz on c and reads the answer, within d.
func healthz(c net.Conn, br *bufio.Reader, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err
}

// awaitClosed waits up to d for the server to close c, and returns how
// long it took, or d if it did not.
func awaitClosed(c net.Conn, br *bufio.Reader, d time.Duration) time.Duration {
	t0 := time.Now()
	c.SetReadDeadline(t0.Add(d))
	if _, err := io.Copy(io.Discard, br); errors.Is(err, os.ErrDeadlineExceeded) {
		return d
	}
	return time.Since(t0)
}

func TestLimits(t *testing.T) {
	t.Parallel()
	t.Run("slowloris", func(t *testing.T) {
		t.Parallel()
		addr := serveAdmin(t, admin.Limits{ReadHeaderTimeout: 300 * time.Millisecond})
		c := dial(t, addr)
		br := bufio.NewReader(c)
		// A head that never ends, a byte at a time: cut at
		// ReadHeaderTimeout, however steadily it trickles.
		closed := make(chan time.Duration, 1)
		go func() { closed <- awaitClosed(c, br, 5*time.Second) }()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\n")
	trickle:
		for {
			select {
			case d := <-closed:
				if d >= 3*time.Second {
					t.Errorf("closed after %s, want about 300ms", d)
				}
				break trickle
			case <-time.After(20 * time.Millisecond):
				c.Write([]byte("X"))
			}
		}
	})
	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		addr := serveAdmin(t, admin.Limits{IdleTimeout: 300 * time.Millisecond})
		c := dial(t, addr)
		br := bufio.NewReader(c)
		if err := healthz(c, br, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if d := awaitClosed(c, br, 5*time.Second); d >= 3*time.Second {
			t.Errorf("idle connection closed after %s, want about 300ms", d)
		}
	})
	t.Run("cap", func(t *testing.T) {
		t.Parallel()
		addr := serveAdmin(t, admin.Limits{MaxConns: 2})
		held := []net.Conn{dial(t, addr), dial(t, addr)}
		for _, c := range held {
			if err := healthz(c, bufio.NewReader(c), 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		// A third waits in the backlog while two are open...
		c := dial(t, addr)
		br := bufio.NewReader(c)
		if err := healthz(c, br, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a connection over the cap was served: %v", err)
		}
		// ...and is served once one closes.
		held[0].Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("after one closed: %v %v", resp, err)
		}
	})
}
