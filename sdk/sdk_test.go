package sdk

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/testbin"
	"github.com/childproc/dispatcher/ipc"
	"golang.org/x/sys/unix"
)

var bins map[string]string

func TestMain(m *testing.M) {
	os.Exit(testbin.Run(m, &bins, "testdata/workers/hello"))
}

func TestServeOutsideDispatcherExplains(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins["hello"])
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1", err)
	}
	for _, want := range []string{"not started by a dispatcher", "dispatcher --workers"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// serve runs h on the worker end of a socketpair, as Serve does on each
// inherited slot, and returns the dispatcher's end.
func serve(tb testing.TB, h http.Handler) *ipc.Conn {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		if conns[i], err = net.FileConn(f); err != nil {
			tb.Fatal(err)
		}
		f.Close()
	}
	w := &worker{h: h, depth: 1}
	s := &slot{w: w, sc: ipc.NewServerConn(conns[1], 0)}
	w.slots.Add(1)
	go s.serve()
	host := ipc.NewConn(conns[0], 0)
	tb.Cleanup(func() {
		host.Close()
		w.slots.Wait()
		w.inflight.Wait()
	})
	return host
}

type result struct {
	status  int
	header  http.Header
	body    string
	trailer http.Header
	stream  bool
}

func roundTrip(tb testing.TB, c *ipc.Conn, method, uri string, body []byte) result {
	tb.Helper()
	req := &ipc.Request{Method: method, URI: uri, Proto: "HTTP/1.1", Host: "h", ContentLength: int64(len(body)), EOF: true, RequestID: "rid-1"}
	var rest io.Reader
	if len(body) > ipc.ChunkSize {
		req.Body, req.EOF, rest = body[:ipc.ChunkSize], false, bytes.NewReader(body[ipc.ChunkSize:])
	} else {
		req.Body = body
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	head, rb, err := c.RoundTrip(req, rest)
	if err != nil {
		tb.Fatal(err)
	}
	r := result{status: head.Status, header: head.Header, stream: !head.EOF}
	b, err := io.ReadAll(rb)
	if err != nil {
		tb.Fatal(err)
	}
	r.body, r.trailer = string(b), c.Trailer()
	return r
}

func TestResponseWriter(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/default", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") })
	mux.HandleFunc("/cookies", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.WriteHeader(201)
		w.Header().Set("X-After", "ignored") // after WriteHeader: not sent
	})
	mux.HandleFunc("/twice", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(202)
		w.WriteHeader(500)
	})
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(204)
		if _, err := w.Write([]byte("x")); err != http.ErrBodyNotAllowed {
			panic(fmt.Sprint("Write after 204: ", err))
		}
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("y"), 3*ipc.ChunkSize+5))
	})
	mux.HandleFunc("/flush", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		io.WriteString(w, "second")
	})
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "7")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(w, "%s %s %d %s %d", r.Method, r.URL.RawQuery, r.ContentLength, r.Header.Get("X-Request-Id"), len(b))
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
	c := serve(t, mux)

	tests := []struct {
		name, method, uri string
		body              []byte
		check             func(result) string
	}{
		{"default 200, one frame", "GET", "/default", nil, func(r result) string {
			return want(r.status == 200 && r.body == "x" && !r.stream, "200 x in one frame")
		}},
		{"multi-valued headers, header snapshot", "GET", "/cookies", nil, func(r result) string {
			return want(r.status == 201 && strings.Join(r.header["Set-Cookie"], ";") == "a=1;b=2" && r.header.Get("X-After") == "",
				"201 with two cookies and no X-After")
		}},
		{"first WriteHeader wins", "GET", "/twice", nil, func(r result) string { return want(r.status == 202, "202") }},
		{"204 has no body", "GET", "/nocontent", nil, func(r result) string { return want(r.status == 204 && r.body == "", "empty 204") }},
		{"HEAD gets a length, no body", "HEAD", "/default", nil, func(r result) string {
			return want(r.body == "" && r.header.Get("Content-Length") == "1", "no body, Content-Length 1")
		}},
		{"large body streams in chunks", "GET", "/big", nil, func(r result) string {
			return want(r.stream && len(r.body) == 3*ipc.ChunkSize+5, "a streamed body of 3 chunks + 5")
		}},
		{"flush streams", "GET", "/flush", nil, func(r result) string {
			return want(r.stream && r.body == "firstsecond", "streamed firstsecond")
		}},
		{"trailers", "GET", "/trailer", nil, func(r result) string {
			return want(r.body == "body" && r.trailer.Get("X-Sum") == "42" && r.trailer.Get("X-Late") == "7", "trailers X-Sum and X-Late")
		}},
		{"request reconstruction", "POST", "/echo?q=1", []byte("hello"), func(r result) string {
			return want(r.body == "POST q=1 5 rid-1 5", "POST q=1 5 rid-1 5")
		}},
		{"streamed request body", "PUT", "/echo", bytes.Repeat([]byte("z"), 5*ipc.Window), func(r result) string {
			return want(r.body == fmt.Sprintf("PUT  %d rid-1 %d", 5*ipc.Window, 5*ipc.Window), "the whole streamed body")
		}},
		{"panic answers 500", "GET", "/panic", nil, func(r result) string {
			return want(r.status == 500 && strings.Contains(r.body, "Internal Server Error"), "500")
		}},
		{"and the slot still serves", "GET", "/default", nil, func(r result) string { return want(r.status == 200, "200") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := roundTrip(t, c, tt.method, tt.uri, tt.body)
			if msg := tt.check(r); msg != "" {
				t.Fatalf("%s; got %d %v %q trailer %v stream %v", msg, r.status, r.header, trunc(r.body), r.trailer, r.stream)
			}
		})
	}
}

func want(ok bool, what string) string {
	if ok {
		return ""
	}
	return "want " + what
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func TestCancelFrameCancelsContext(t *testing.T) {
	started := make(chan struct{})
	var once sync.Once
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(started) })
		<-r.Context().Done()
		w.WriteHeader(499)
	}))
	done := make(chan result, 1)
	go func() {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		head, _, err := c.RoundTrip(&ipc.Request{Method: "GET", URI: "/", Proto: "HTTP/1.1", EOF: true}, nil)
		if err != nil {
			done <- result{}
			return
		}
		done <- result{status: head.Status}
	}()
	<-started
	if err := c.Cancel(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.status != 499 {
		t.Fatalf("status %d, want the handler's 499 after its context was cancelled", r.status)
	}
}

// startByHand starts the hello worker as a dispatcher would, with one slot,
// extra environment variables, and its socket directory in a new temporary
// directory; in its own process group if leader. It returns the worker,
// the handshake line's fields, the dispatcher's end of the slot, and the
// socket directory. Cleanup closes the slot and checks the worker exits.
func startByHand(t *testing.T, leader bool, env ...string) (*exec.Cmd, []string, *ipc.Conn, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdk") // short enough for a socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	workerEnd := os.NewFile(uintptr(fds[1]), "worker")
	hostFile := os.NewFile(uintptr(fds[0]), "host")
	hostConn, err := net.FileConn(hostFile)
	hostFile.Close()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bins["hello"])
	cmd.Env = append([]string{ipc.CookieKey + "=" + ipc.CookieValue, ipc.EnvFDs + "=3",
		"PLUGIN_PROTOCOL_VERSIONS=1", "PLUGIN_UNIX_SOCKET_DIR=" + dir}, env...)
	cmd.ExtraFiles = []*os.File{workerEnd}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: leader, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	workerEnd.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		hostConn.Close()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("worker exit: %v", err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Error("worker still running 10 s after its slot closed")
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	fields := strings.Split(strings.TrimSpace(line), "|")
	if len(fields) != 6 || fields[2] != "unix" || filepath.Dir(fields[3]) != dir {
		t.Fatalf("handshake line %q, want a unix socket in %s", line, dir)
	}
	host := ipc.NewConn(hostConn, 0)
	host.SetDeadline(time.Now().Add(10 * time.Second))
	if err := host.Ping(); err != nil {
		t.Fatalf("slot ping: %v", err)
	}
	return cmd, fields, host, dir
}

// The handshake of a worker started by hand: without DISPATCHER_CONTROL it
// listens on the socket its handshake line names; with
// DISPATCHER_CONTROL=none it names a path in the socket directory and
// makes nothing there. Either way it serves its slot, and exits when the
// slot closes.
func TestHandshakeControlSocket(t *testing.T) {
	for _, control := range []string{"", ipc.ControlNone} {
		t.Run("control="+control, func(t *testing.T) {
			var env []string
			if control != "" {
				env = append(env, ipc.EnvControl+"="+control)
			}
			_, fields, _, _ := startByHand(t, true, env...)
			fi, err := os.Stat(fields[3])
			switch {
			case control == ipc.ControlNone && err == nil:
				t.Errorf("told no connection comes, the worker made %s anyway", fields[3])
			case control == "" && (err != nil || fi.Mode()&os.ModeSocket == 0):
				t.Errorf("the worker did not listen on %s: %v", fields[3], err)
			}
		})
	}
}

// A worker in its dispatcher's process group (an older dispatcher's, or
// another host's) survives the SIGINT a Ctrl-C at the terminal sends to
// the whole group: stopping it is the dispatcher's business. (A worker
// leading its own group, as this dispatcher starts them, installs no
// handler: no terminal sends it SIGINT.)
func TestInterruptIgnoredInTheDispatchersGroup(t *testing.T) {
	cmd, _, host, _ := startByHand(t, false, ipc.EnvControl+"="+ipc.ControlNone)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	// SIGINT is handled asynchronously; a ping round trip after it shows
	// the worker alive (a default SIGINT kills at once, before the pong).
	for range 3 {
		if err := host.Ping(); err != nil {
			t.Fatalf("ping after SIGINT: %v", err)
		}
	}
}

// TestHandlerSeesItsDeadline: a request that carries the dispatcher's
// timeout gives its handler a context with that deadline, counted from when
// the handler starts; one without has no deadline. A handler that has not
// sent its head by then finds its context done with DeadlineExceeded; one
// that streams keeps its context past the deadline.
func TestHandlerSeesItsDeadline(t *testing.T) {
	type seen struct {
		deadline time.Time
		ok       bool
		start    time.Time
		err      error // ctx.Err() once done, or nil
	}
	got := make(chan seen, 1)
	c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := seen{start: time.Now()}
		s.deadline, s.ok = r.Context().Deadline()
		switch r.URL.Path {
		case "/wait":
			<-r.Context().Done()
			s.err = r.Context().Err()
		case "/stream":
			w.(http.Flusher).Flush() // the head goes out
			select {
			case <-r.Context().Done():
				s.err = r.Context().Err()
			case <-time.After(300 * time.Millisecond): // past the 100 ms deadline
			}
		}
		got <- s
	}))
	roundTrip := func(path string, timeout time.Duration) seen {
		t.Helper()
		_, b, err := c.RoundTrip(&ipc.Request{Method: "GET", URI: path, Proto: "HTTP/1.1", EOF: true, Timeout: timeout}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, b); err != nil {
			t.Fatal(err)
		}
		return <-got
	}
	if s := roundTrip("/", 0); s.ok {
		t.Errorf("no timeout sent, but the handler has a deadline %v", s.deadline)
	}
	s := roundTrip("/", 90*time.Second)
	if left := s.deadline.Sub(s.start); !s.ok || left <= 89*time.Second || left > 90*time.Second {
		t.Errorf("deadline %v (ok %v), %v after the handler started; want 90s", s.deadline, s.ok, left)
	}
	if s := roundTrip("/wait", 100*time.Millisecond); !errors.Is(s.err, context.DeadlineExceeded) {
		t.Errorf("handler waiting past its deadline: ctx.Err() = %v, want DeadlineExceeded", s.err)
	}
	if s := roundTrip("/stream", 100*time.Millisecond); s.err != nil {
		t.Errorf("streaming handler's context ended at the head deadline: %v", s.err)
	}
}
