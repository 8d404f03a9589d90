package main

// The admin listener under attack, through the real binary: a connection
// cap and timeouts, descriptor exhaustion, query strings on /status, and
// the unix socket.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/admin"
	"golang.org/x/sys/unix"
)

// openFDs counts the descriptors pid has open.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// limitFDs sets pid's RLIMIT_NOFILE, soft and hard, to n.
func limitFDs(t *testing.T, pid, n int) {
	t.Helper()
	lim := unix.Rlimit{Cur: uint64(n), Max: uint64(n)}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
}

// dialMany opens n connections to addr (fewer if the system refuses) and
// returns them; cleanup closes them.
func dialMany(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var cs []net.Conn
	for range n {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		cs = append(cs, c)
	}
	t.Cleanup(func() { closeAll(cs) })
	return cs
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// getWithin sends GET url with a client that gives up after d.
func getWithin(url string, d time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := (&http.Transport{DisableKeepAlives: true}).RoundTrip(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// A flood of connections to the admin listener holds at most its cap of
// the dispatcher's descriptors: with descriptors for little more than the
// cap, the main listener serves throughout, and the admin listener again
// once the flood ends. Descriptors exhausted through the main listener
// itself stop it for no longer than the exhaustion lasts.
func TestAdminConnectionFlood(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "1")
	pid := d.cmd.Process.Pid
	limitFDs(t, pid, openFDs(t, pid)+admin.DefaultMaxConns+40)
	adminAddr := strings.TrimPrefix(d.admin, "http://")

	flood := dialMany(t, adminAddr, 4*admin.DefaultMaxConns)
	if len(flood) < 2*admin.DefaultMaxConns {
		t.Fatalf("only %d connections to the admin listener", len(flood))
	}
	// Every connection counts in the accept backlog at once; the
	// dispatcher takes up to its cap of them.
	if !poll(logWait, func() bool { return openFDs(t, pid) >= admin.DefaultMaxConns }) {
		t.Fatalf("the dispatcher has %d descriptors open: it did not take the flood", openFDs(t, pid))
	}
	for i := range 3 {
		t0 := time.Now()
		if code, err := getWithin(d.url+"/", 2*time.Second); code != 200 {
			t.Fatalf("main listener during the admin flood (request %d): %d %v after %s", i, code, err, time.Since(t0))
		}
	}
	if code, err := getWithin(d.admin+"/healthz", 300*time.Millisecond); err == nil {
		t.Errorf("admin listener over its cap answered: %d", code)
	}
	closeAll(flood)
	if !poll(logWait, func() bool { code, _ := getWithin(d.admin+"/healthz", time.Second); return code == 200 }) {
		t.Fatal("the admin listener did not recover after the flood")
	}

	// Now exhaust the descriptors through the main listener.
	limitFDs(t, pid, openFDs(t, pid)+40)
	flood = dialMany(t, d.addr, 200)
	d.waitLog("out of file descriptors", "listener=listen")
	// Held long enough for net/http's back-off on accept errors to reach
	// its ceiling: it would leave the listener deaf for up to a second
	// after the flood.
	<-time.After(2500 * time.Millisecond)
	closeAll(flood)
	t0 := time.Now()
	if !poll(5*time.Second, func() bool { code, _ := getWithin(d.url+"/", time.Second); return code == 200 }) {
		t.Fatal("the main listener did not recover after its flood")
	}
	if took := time.Since(t0); took > 300*time.Millisecond {
		t.Errorf("the main listener served again %s after the descriptors were freed, want at once", took)
	}
	d.waitLog("file descriptors available again", "listener=listen")
}

// A client that sends its request head a byte at a time is cut at the
// admin listener's header timeout.
func TestAdminSlowloris(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "1")
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(d.admin, "http://"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	limit := admin.DefaultReadHeaderTimeout + 3*time.Second
	t0 := time.Now()
	closed := make(chan error, 1)
	go func() {
		c.SetReadDeadline(t0.Add(limit))
		_, err := io.Copy(io.Discard, c)
		closed <- err
	}()
	io.WriteString(c, "GET /status HTTP/1.1\r\nHost: a\r\n")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-closed:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("a trickling request head still open after %s", limit)
			}
			if took := time.Since(t0); took < admin.DefaultReadHeaderTimeout-time.Second {
				t.Fatalf("cut after %s, before the header timeout (%s)", took, admin.DefaultReadHeaderTimeout)
			}
			return
		case <-tick.C:
			c.Write([]byte("X"))
		}
	}
}

// /status shows requests in flight without their query strings, unless
// --admin-show-query.
func TestAdminShowQuery(t *testing.T) {
	t.Parallel()
	for _, show := range []bool{false, true} {
		t.Run(fmt.Sprint("show=", show), func(t *testing.T) {
			t.Parallel()
			args := []string{"--workers", bin(t, "hang"), "--pool-size", "1", "--timeout", "20s"}
			if show {
				args = append(args, "--admin-show-query")
			}
			d := startDispatcher(t, args...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				req, _ := http.NewRequestWithContext(ctx, "GET", d.url+"/ctx?token=s3cret", nil)
				if resp, err := http.DefaultTransport.RoundTrip(req); err == nil {
					resp.Body.Close()
				}
			}()
			var body string
			if !poll(logWait, func() bool {
				_, body = d.getURL(d.admin + "/status?format=json")
				return strings.Contains(body, `"current": "GET /ctx`)
			}) {
				t.Fatalf("no request in flight on /status:\n%s", body)
			}
			_, page := d.getURL(d.admin + "/status?format=html")
			for _, b := range []string{body, page} {
				if strings.Contains(b, "s3cret") != show {
					t.Errorf("query shown: %v, want %v:\n%s", !show, show, b)
				}
			}
		})
	}
}

// --admin-listen unix:PATH: a socket of mode 0600 that another user cannot
// connect to, removed at shutdown; a stale socket is replaced, a live one
// or another file is not.
func TestAdminUnixSocket(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil { // others may reach the socket: only its mode stops them
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "admin.sock")
	// A stale socket, as a dispatcher killed with SIGKILL leaves.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	d := startDispatcher(t, "--workers", bin(t, "hello"), "--pool-size", "1", "--admin-listen", "unix:"+sock)
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket of mode 0600", fi.Mode())
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := client.Get("http://admin/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz over the socket: %v %v", resp, err)
	}
	resp.Body.Close()
	if err := dialAs(65534, sock); !errors.Is(err, syscall.EACCES) {
		t.Errorf("user nobody connecting to the socket: %v, want permission denied", err)
	}

	t.Run("refused", func(t *testing.T) {
		other := filepath.Join(dir, "file")
		if err := os.WriteFile(other, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ path, want string }{
			{sock, "the address is in use"},
			{other, "exists and is not a socket; not replacing it"},
			{"", "want unix:PATH"},
		} {
			code, stderr, _ := run(t, "--workers", bin(t, "hello"), "--pool-size", "1", "--listen", "127.0.0.1:0", "--admin-listen", "unix:"+tc.path)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Errorf("--admin-listen unix:%s: exit status %d, stderr:\n%s\nwant a failure saying %q", tc.path, code, stderr, tc.want)
			}
		}
		if b, err := os.ReadFile(other); err != nil || string(b) != "keep me" {
			t.Errorf("the file at the path: %q, %v", b, err)
		}
	})

	d.signal(syscall.SIGTERM)
	d.waitExit(exitWait)
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after shutdown: %v, want it removed", err)
	}
}

// dialAs connects to the unix socket at path with the file-system
// identity of uid (which is what the kernel checks), on a thread of its
// own that ends with it.
func dialAs(uid int, path string) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		unix.Setfsgid(uid)
		unix.Setfsuid(uid)
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	return <-done
}
