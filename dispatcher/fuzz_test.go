package dispatcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzServer writes arbitrary bytes to a real TCP listener served by an
// http.Server configured as cmd/dispatcher configures it (HTTP/1.1 and h2c)
// around the real Server (with small body and response limits), backed by a
// real pool running testdata/workers/echo. Every input goes to one of two fronts sharing the
// pool: one trusting the fuzzer's address as a proxy (its forwarding
// headers are parsed and passed on), one trusting nobody.
//
// With halfClose, the fuzzer shuts its sending side right after the bytes
// (the server sees a client that sent and left: cancellations). Otherwise
// it appends a request with "Connection: close", so that well-formed
// HTTP/1.1 input is answered in full before the server closes; if the
// server still waits for bytes after a short quiet time (a body shorter
// than announced), the fuzzer shuts its side then.
//
// It checks that the server closes the connection within a deadline, that
// nothing panics (the http.Server's error log is watched, handler panics
// other than http.ErrAbortHandler included), that no request ends in a
// 5xx status (no client input is the worker's or the dispatcher's fault),
// and that the pool stays healthy: afterwards a normal GET gets 200 from
// the same worker process, which was neither killed nor replaced.
//
//	go test -run=NONE -fuzz=FuzzServer -fuzztime=1m ./dispatcher/
func FuzzServer(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /json?x=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\nAccept: */*\r\n\r\n",
		"POST /json HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
		"POST /echo?trailer=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n" +
			"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-T: v\r\n\r\n",
		"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\n" +
			"PUT /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nxyDELETE /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nshort",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\nabc",
		"GET http://other:8080/abs?q HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, ::1\r\n" +
			"X-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\nForwarded: for=1.2.3.4;proto=http\r\n" +
			"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nUpgrade: websocket\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nCONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("v", 70<<10) + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-Many: 1\r\n", 120) + "\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: " + strings.Repeat("i", 200) + "\r\n\r\n",
		"\x16\x03\x01\x00\x05hello",
	} {
		f.Add([]byte(s), false, false)
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"), true, true)
	f.Add([]byte("POST /json HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345"), true, false)
	f.Add(h2cSeed(f, "GET", "/json", nil), false, false)
	f.Add(h2cSeed(f, "POST", "/echo?trailer=1", []byte("streamed body")), true, true)

	fz := startFuzzFront(f)
	f.Fuzz(func(t *testing.T, raw []byte, halfClose, trusted bool) {
		fz.run(t, raw, halfClose, trusted)
	})
}

const (
	fuzzDeadline = 30 * time.Second       // for the server to close the connection
	fuzzQuiet    = 100 * time.Millisecond // without a byte from the server before the fuzzer leaves
	// fuzzEnd ends well-formed HTTP/1.1 input: the server closes after it.
	fuzzEnd = "GET /fuzz-end HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"
)

type fuzzFront struct {
	hook   *test.Hook
	errs   *lineLog  // the http.Servers' error log
	addrs  [2]string // untrusted, trusted
	client *http.Client
	pid    string // of the worker, which must stay the same
}

// lineLog collects the lines of an http.Server's error log.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

func (l *lineLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := l.lines
	l.lines = nil
	return lines
}

// startFuzzFront starts the pool (once per fuzzing process) and the two
// fronts.
func startFuzzFront(f *testing.F) *fuzzFront {
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	entry := logrus.NewEntry(logger)
	sockets, err := os.MkdirTemp("", "fz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(sockets) })
	pool, err := workers.NewPool(workers.Config{
		Path: bins["echo"], Logger: entry, SocketDir: sockets,
		Size: 1, Concurrency: 2, Timeout: 20 * time.Second,
		// No health pings: a busy machine could make the worker miss one
		// and be replaced, which this target reports.
		PingInterval: -1,
	})
	if err != nil {
		f.Fatal(err)
	}
	if err := pool.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	fz := &fuzzFront{hook: hook, errs: &lineLog{}}
	var servers []*http.Server
	for i, trusted := range [][]netip.Prefix{nil, {netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}} {
		srv, err := New(Config{Invoker: pool, Logger: entry, AccessLog: true, MaxBody: 100 << 10,
			MaxResponse: 200 << 10, TrustedProxies: trusted})
		if err != nil {
			f.Fatal(err)
		}
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		hs := &http.Server{
			Handler:           srv,
			Protocols:         &protos,
			MaxHeaderBytes:    64 << 10,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       time.Minute,
			ErrorLog:          log.New(fz.errs, "", 0),
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			f.Fatal(err)
		}
		go hs.Serve(ln)
		servers = append(servers, hs)
		fz.addrs[i] = ln.Addr().String()
	}
	fz.client = &http.Client{Timeout: fuzzDeadline}
	f.Cleanup(func() {
		for _, hs := range servers {
			hs.Close()
		}
		fz.client.CloseIdleConnections()
		if err := pool.Close(context.Background()); err != nil {
			f.Errorf("pool.Close: %v", err)
		}
	})
	fz.pid = fz.healthy(f)
	fz.hook.Reset()
	return fz
}

// healthy checks that a normal request gets 200 and returns the pid of the
// worker that answered.
func (fz *fuzzFront) healthy(tb testing.TB) string {
	tb.Helper()
	resp, err := fz.client.Get("http://" + fz.addrs[0] + "/health")
	if err != nil {
		tb.Fatalf("GET after the input: %v%s", err, fz.logs())
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		tb.Fatalf("GET after the input: body: %v%s", err, fz.logs())
	}
	pid := resp.Header.Get("X-Worker-Pid")
	if resp.StatusCode != 200 || pid == "" {
		tb.Fatalf("GET after the input: %s, worker pid %q%s", resp.Status, pid, fz.logs())
	}
	return pid
}

// logs returns the latest entries of the pool's and the dispatcher's log,
// for a failure message.
func (fz *fuzzFront) logs() string {
	var sb strings.Builder
	entries := fz.hook.AllEntries()
	for _, e := range entries[max(0, len(entries)-40):] {
		fmt.Fprintf(&sb, "\n  %s %s %v", e.Level, e.Message, e.Data)
	}
	return sb.String()
}

func (fz *fuzzFront) run(t *testing.T, raw []byte, halfClose, trusted bool) {
	addr := fz.addrs[0]
	if trusted {
		addr = fz.addrs[1]
	}
	c, err := net.DialTimeout("tcp", addr, fuzzDeadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	deadline := time.Now().Add(fuzzDeadline)
	tc.SetDeadline(deadline)

	in := raw
	if !halfClose && !bytes.HasPrefix(raw, []byte(http2.ClientPreface)) {
		in = append(raw[:len(raw):len(raw)], fuzzEnd...)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := tc.Write(in)
		if halfClose {
			tc.CloseWrite()
		}
		wrote <- err
	}()

	// Read until the server closes; leave after a quiet time if it waits.
	var buf [32 << 10]byte
	left := halfClose
	var n int64
	for {
		if !left {
			tc.SetReadDeadline(time.Now().Add(fuzzQuiet))
		}
		k, err := tc.Read(buf[:])
		n += int64(k)
		if err == nil {
			continue
		}
		var ne net.Error
		if !left && errors.As(err, &ne) && ne.Timeout() && time.Now().Before(deadline) {
			left = true
			tc.CloseWrite()
			tc.SetReadDeadline(deadline)
			continue
		}
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the server neither answered nor closed the connection within %s (%d bytes read)%s",
				fuzzDeadline, n, fz.logs())
		}
		break // EOF, or a reset after a response the server cut
	}
	c.Close() // unblocks a write the server did not read
	<-wrote

	for _, l := range fz.errs.take() {
		if strings.Contains(l, "panic") || strings.Contains(l, "superfluous") {
			t.Fatalf("http.Server: %s%s", l, fz.logs())
		}
	}
	for _, e := range fz.hook.AllEntries() {
		if e.Message != "request" {
			continue
		}
		if st, _ := e.Data["status"].(int); st >= 500 {
			t.Fatalf("a request ended with status %d: %v%s", st, e.Data, fz.logs())
		}
	}
	pid := fz.healthy(t)
	logs := fz.logs()
	// What happens from here on is the next input's, asynchronous effects
	// of this one included.
	fz.hook.Reset()
	if pid != fz.pid {
		old := fz.pid
		fz.pid = pid // for the next inputs (minimizing this one)
		t.Fatalf("the worker was replaced: pid %s, then %s%s", old, pid, logs)
	}
}

// h2cSeed returns an HTTP/2 prior-knowledge connection's first bytes: the
// preface, SETTINGS and one request, with its body if any.
func h2cSeed(tb testing.TB, method, path string, body []byte) []byte {
	var buf bytes.Buffer
	buf.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&buf, nil)
	if err := fr.WriteSettings(); err != nil {
		tb.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: method}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "a"}, {Name: ":path", Value: path},
		{Name: "content-length", Value: strconv.Itoa(len(body))},
	} {
		if err := enc.WriteField(f); err != nil {
			tb.Fatal(err)
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(),
		EndStream: len(body) == 0, EndHeaders: true}); err != nil {
		tb.Fatal(err)
	}
	if len(body) > 0 {
		if err := fr.WriteData(1, true, body); err != nil {
			tb.Fatal(err)
		}
	}
	return buf.Bytes()
}
