package dispatcher

// HTTP fidelity through real workers: limits, forwarding headers, HEAD,
// 100-continue, trailers, status codes, hop-by-hop headers, streaming in
// both directions, cancellation, http.ResponseController in the worker, over
// HTTP/1.1 and HTTP/2 (TLS). The worker is testdata/workers/fidelity unless
// said otherwise.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/workers"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// protos are the front protocols the streaming and fidelity tests run on.
var protos = []struct {
	name  string
	http2 bool
}{{"HTTP1", false}, {"HTTP2", true}}

// wait bounds every wait for an event in these tests: generous, because the
// machine may be small and busy (-race, -count).
const wait = 20 * time.Second

// dialRaw opens a plain TCP connection to the front, for requests that
// net/http's client cannot be made to send or read precisely.
func dialRaw(tb testing.TB, f *front) (net.Conn, *bufio.Reader) {
	tb.Helper()
	c, err := net.DialTimeout("tcp", f.addr, wait)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(wait)); err != nil {
		tb.Fatal(err)
	}
	return c, bufio.NewReader(c)
}

func writeRaw(tb testing.TB, c net.Conn, s string) {
	tb.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		tb.Fatal(err)
	}
}

// readResponse reads one response for method from br, with its body.
func readResponse(tb testing.TB, br *bufio.Reader, method string) (*http.Response, string) {
	tb.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		tb.Fatalf("reading the %s response: %v", method, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("reading the %s response body: %v", method, err)
	}
	return resp, string(b)
}

// expectClosed checks that the server closes the raw connection after its
// response: it reads nothing more and wants nothing more.
func expectClosed(tb testing.TB, br *bufio.Reader) {
	tb.Helper()
	if b, err := br.ReadByte(); err == nil {
		tb.Fatalf("read %q after the response; want the connection closed", b)
	} else if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		tb.Fatal("the connection stayed open after the response")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A Content-Length over MaxBody is refused before any of the body is read:
// the client sends headers only and gets 413 (no 100 Continue when it
// asked for one), then the connection is closed. The worker never sees the
// request.
func TestMaxBodyContentLength(t *testing.T) {
	f := startFrontWith(t, "fidelity", frontOpts{server: Config{MaxBody: 1 << 20}})
	for _, expect := range []bool{false, true} {
		t.Run(fmt.Sprintf("expect-100-continue=%v", expect), func(t *testing.T) {
			c, br := dialRaw(t, f)
			head := "POST /count HTTP/1.1\r\nHost: front\r\nContent-Length: 1073741824\r\n"
			if expect {
				head += "Expect: 100-continue\r\n"
			}
			writeRaw(t, c, head+"\r\n") // and not a byte of the body
			resp, body := readResponse(t, br, "POST")
			if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get(HeaderError) != "true" ||
				!strings.Contains(body, "too large") {
				t.Fatalf("%d %v %q, want a 413 from the dispatcher", resp.StatusCode, resp.Header, body)
			}
			if !resp.Close {
				t.Error("the response does not announce Connection: close")
			}
			expectClosed(t, br)
			e := waitEntry(t, f.hook, "request body refused: over the limit")
			if e.Data["req_id"] != resp.Header.Get(HeaderRequestID) {
				f.hook.Reset()
				t.Fatalf("log entry %v for another request", e.Data)
			}
			f.hook.Reset()
		})
	}
	if entry(f.hook, "count:") != nil {
		t.Error("the worker saw a refused request")
	}
	if r, body := mustGet(t, f.url+"/status?code=200"); r.StatusCode != 200 {
		t.Fatalf("next request: %d %q", r.StatusCode, body)
	}
}

// A chunked body is refused with 413 as soon as it crosses MaxBody, while
// the client still has more to send: its terminating chunk is never needed.
// A handler reading the body sees it fail, and the worker serves on.
func TestMaxBodyChunked(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
	}{
		{"within the first chunk", 1000},
		// Beyond the flow-control window: the handler must have started
		// reading for the body to get there.
		{"while the worker reads", 512 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFrontWith(t, "fidelity", frontOpts{server: Config{MaxBody: tc.limit}})
			before, _ := mustGet(t, f.url+"/status?code=200")
			c, br := dialRaw(t, f)
			writeRaw(t, c, "POST /count HTTP/1.1\r\nHost: front\r\nTransfer-Encoding: chunked\r\n\r\n")
			sent := make(chan error, 1)
			go func() {
				// Past the limit by one 32 KiB chunk or more, then stall
				// without the last chunk.
				chunk := fmt.Sprintf("%x\r\n%s\r\n", 32<<10, strings.Repeat("z", 32<<10))
				var err error
				for n := int64(0); n <= tc.limit && err == nil; n += 32 << 10 {
					_, err = io.WriteString(c, chunk)
				}
				sent <- err
			}()
			resp, body := readResponse(t, br, "POST")
			if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get(HeaderError) != "true" {
				t.Fatalf("%d %v %q, want a 413 from the dispatcher", resp.StatusCode, resp.Header, body)
			}
			if err := <-sent; err != nil {
				t.Logf("client write: %v", err)
			}
			expectClosed(t, br)
			if tc.limit > ipc.Window {
				// The handler was reading: its read failed.
				waitEntry(t, f.hook, "count: read failed")
			}
			after, _ := mustGet(t, f.url+"/status?code=200")
			if after.StatusCode != 200 || after.Header.Get("X-Worker-Pid") != before.Header.Get("X-Worker-Pid") {
				t.Fatalf("next request: %d from pid %s, want 200 from %s", after.StatusCode,
					after.Header.Get("X-Worker-Pid"), before.Header.Get("X-Worker-Pid"))
			}
		})
	}
}

// A client still sending a body far over MaxBody, with Go's own client,
// reads the 413: the connection is half-closed and closed after a delay,
// not closed at once with unread data, which resets it (the client would
// see "connection reset by peer" instead of the answer). The same for a
// body of known length, refused before it is read, and for a worker that
// answers early.
func TestOverLimitClientGetsAnswer(t *testing.T) {
	f := startFrontWith(t, "fidelity", frontOpts{server: Config{MaxBody: 64 << 10}})
	unlimited := startFrontWith(t, "fidelity", frontOpts{})
	data := bytes.Repeat([]byte("z"), 8<<20)
	for i := range 10 {
		for _, tc := range []struct {
			name, path string
			body       io.Reader
			want       int
		}{
			{"chunked", "/count", io.MultiReader(bytes.NewReader(data)), http.StatusRequestEntityTooLarge},
			{"length", "/count", bytes.NewReader(data), http.StatusRequestEntityTooLarge},
			// No limit, answered before the body is read.
			{"early answer", "/status?code=201", io.MultiReader(bytes.NewReader(data)), http.StatusCreated},
		} {
			url := f.url
			if tc.want == http.StatusCreated {
				url = unlimited.url
			}
			req, err := http.NewRequest("POST", url+tc.path, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := f.client.Do(req)
			if err != nil {
				t.Fatalf("%s, try %d: %v, want a %d", tc.name, i, err, tc.want)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%s, try %d: %d, want %d", tc.name, i, resp.StatusCode, tc.want)
			}
		}
	}
}

// Over HTTP/2, a body crossing MaxBody gets 413 while the client is still
// sending it; the stream is reset and the connection serves on.
func TestMaxBodyHTTP2(t *testing.T) {
	f := startFrontWith(t, "fidelity", frontOpts{http2: true, server: Config{MaxBody: 512 << 10}})
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		chunk := strings.Repeat("z", 32<<10)
		for range 20 { // 640 KiB, then the pipe stays open
			if _, err := io.WriteString(pw, chunk); err != nil {
				return
			}
		}
	}()
	req, _ := http.NewRequest("POST", f.url+"/count", pr)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get(HeaderError) != "true" {
		t.Fatalf("%s %d %q, want a 413 from the dispatcher over HTTP/2", resp.Proto, resp.StatusCode, body)
	}
	var reused bool
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }}
	next, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", f.url+"/status?code=200", nil)
	r, err := f.client.Do(next)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 200 || !reused {
		t.Errorf("next request: %d, on the same connection: %v", r.StatusCode, reused)
	}
}

// A body still streaming into a worker that already answers (an echo) is
// cut, not answered 413, when it crosses the limit after the response head
// went out: the client can never take it for a complete response.
func TestMaxBodyAfterResponseStarted(t *testing.T) {
	f := startFrontWith(t, "echo", frontOpts{server: Config{MaxBody: 256 << 10}})
	pr, pw := io.Pipe()
	go func() {
		chunk := strings.Repeat("e", 16<<10)
		for i := 0; i < 64; i++ { // 1 MiB
			if _, err := io.WriteString(pw, chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	defer pr.Close()
	req, _ := http.NewRequest("POST", f.url+"/", pr)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Logf("request failed: %v", err) // cut before the head reached the client
		return
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusRequestEntityTooLarge:
		t.Logf("413 before the echo started")
	case resp.StatusCode == 200 && err != nil && len(b) < 1<<20:
		t.Logf("echo cut after %d bytes: %v", len(b), err)
		waitEntry(t, f.hook, "request body refused after the response started; connection cut")
	default:
		t.Fatalf("%d, %d bytes, err %v: want 413 or a cut response", resp.StatusCode, len(b), err)
	}
}

func TestMaxHeaders(t *testing.T) {
	f := startFrontWith(t, "fidelity", frontOpts{server: Config{MaxHeaders: 20}})
	for _, tc := range []struct {
		extra int
		want  int
	}{{5, 200}, {30, http.StatusRequestHeaderFieldsTooLarge}} {
		req, _ := http.NewRequest("GET", f.url+"/status?code=200", nil)
		for i := range tc.extra {
			req.Header.Add("X-Many", strconv.Itoa(i)) // each value counts
		}
		resp, body := mustDo(t, req)
		if resp.StatusCode != tc.want {
			t.Fatalf("%d extra fields: %d %q, want %d", tc.extra, resp.StatusCode, body, tc.want)
		}
		if tc.want != 200 && resp.Header.Get(HeaderError) != "true" {
			t.Errorf("431 without %s", HeaderError)
		}
	}
}

func TestNewRefusesBadTrustedProxies(t *testing.T) {
	_, err := New(Config{Invoker: &workers.Pool{}, TrustedProxies: []netip.Prefix{{}}})
	if err == nil || !strings.Contains(err.Error(), "TrustedProxies[0]") {
		t.Fatalf("New: %v, want an error naming TrustedProxies[0]", err)
	}
}

// The handler sees X-Forwarded-For/-Proto/-Host computed by the dispatcher,
// believing incoming ones only from a trusted proxy, and RemoteAddr is
// always the real peer.
func TestForwardedHeadersReachTheHandler(t *testing.T) {
	spoof := map[string]string{
		"X-Forwarded-For":   "203.0.113.9",
		"X-Forwarded-Proto": "https",
		"X-Forwarded-Host":  "spoofed.example",
		"Forwarded":         "for=203.0.113.9",
	}
	for _, tc := range []struct {
		name    string
		trusted []netip.Prefix
		http2   bool
		want    map[string]string
	}{
		{"untrusted peer", nil, false, map[string]string{
			"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "front.example", "Forwarded": "",
		}},
		{"untrusted peer over TLS", []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, true, map[string]string{
			"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "front.example", "Forwarded": "",
		}},
		{"trusted proxy", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, false, map[string]string{
			"X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "https",
			"X-Forwarded-Host": "spoofed.example", "Forwarded": "for=203.0.113.9",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFrontWith(t, "echo", frontOpts{server: Config{TrustedProxies: tc.trusted}, http2: tc.http2})
			req, _ := http.NewRequest("GET", f.url+"/json", nil)
			req.Host = "front.example"
			for k, v := range spoof {
				req.Header.Set(k, v)
			}
			resp, err := f.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got struct {
				Header     http.Header
				RemoteAddr string
			}
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			for k, want := range tc.want {
				if g := strings.Join(got.Header[k], " | "); g != want {
					t.Errorf("%s %q, want %q", k, g, want)
				}
			}
			if ap, err := netip.ParseAddrPort(got.RemoteAddr); err != nil || ap.Addr().String() != "127.0.0.1" {
				t.Errorf("RemoteAddr %q, want the real peer 127.0.0.1:port", got.RemoteAddr)
			}
		})
	}
}

// A HEAD response carries the GET response's headers and no body: a GET
// pipelined behind it on the same connection parses cleanly.
func TestHeadHasNoBody(t *testing.T) {
	f := startFront(t, "fidelity", workers.Config{})
	for _, tc := range []struct {
		path string
		want int64 // Content-Length
	}{
		{"/big?n=1000&cl=1", 1000}, // declared by the handler
		{"/big?n=1000", 1000},      // counted by the sdk
		{"/big?n=200000", 200000},  // more than one chunk, counted by the sdk
	} {
		t.Run(tc.path, func(t *testing.T) {
			c, br := dialRaw(t, f)
			writeRaw(t, c, "HEAD "+tc.path+" HTTP/1.1\r\nHost: front\r\n\r\nGET /status?code=200 HTTP/1.1\r\nHost: front\r\n\r\n")
			head, body := readResponse(t, br, "HEAD")
			if head.StatusCode != 200 || body != "" || head.ContentLength != tc.want {
				t.Fatalf("HEAD: %d, Content-Length %d (want %d), body %q", head.StatusCode, head.ContentLength, tc.want, body)
			}
			get, body := readResponse(t, br, "GET")
			if get.StatusCode != 200 || body != "status 200\n" {
				t.Fatalf("GET after HEAD: %d %q: the HEAD response carried a body", get.StatusCode, body)
			}
		})
	}
}

// Expect: 100-continue: the client gets 100 Continue before it sends the
// body, then the worker's answer.
func TestExpectContinue(t *testing.T) {
	f := startFront(t, "fidelity", workers.Config{})
	c, br := dialRaw(t, f)
	writeRaw(t, c, "POST /count HTTP/1.1\r\nHost: front\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusContinue {
		t.Fatalf("first response %d, want 100 Continue before the body is sent", resp.StatusCode)
	}
	writeRaw(t, c, "hello world")
	resp, body := readResponse(t, br, "POST")
	if resp.StatusCode != 200 || body != "read 11 bytes\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

// Expect: 100-continue, to a handler that answers without reading the
// body: the client gets the answer and no 100 Continue, so it never sends
// the body (the 100 comes when the handler reads, not when the request is
// forwarded). The connection then closes: the body was announced, and not
// read.
func TestExpectContinueRefusedWithoutBody(t *testing.T) {
	f := startFront(t, "fidelity", workers.Config{})
	for _, te := range []string{"Content-Length: 1048576", "Transfer-Encoding: chunked"} {
		c, br := dialRaw(t, f)
		writeRaw(t, c, "PUT /status?code=401 HTTP/1.1\r\nHost: front\r\n"+te+"\r\nExpect: 100-continue\r\n\r\n")
		resp, body := readResponse(t, br, "PUT")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s: first response %d %q, want the handler's 401 without 100 Continue", te, resp.StatusCode, body)
		}
		expectClosed(t, br)
	}
	// The worker served on.
	if r, body := mustGet(t, f.url+"/status?code=200"); r.StatusCode != 200 {
		t.Fatalf("next request: %d %q", r.StatusCode, body)
	}
}

// sendWithTrailer POSTs size bytes of chunked body to path with the request
// trailer X-Req-Trailer: sum-<size>, and returns the response and its body.
func sendWithTrailer(tb testing.TB, c *http.Client, url string, size int) (*http.Response, string) {
	tb.Helper()
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte(strings.Repeat("t", size)))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", url, pr)
	req.Trailer = http.Header{"X-Req-Trailer": {"sum-" + strconv.Itoa(size)}}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		tb.Fatal(err)
	}
	return resp, string(body)
}

// Trailers pass both ways. Response trailers reach the client; request
// trailers reach the handler, whether the body fits in the request frame or
// streams.
func TestTrailersBothWays(t *testing.T) {
	for _, p := range protos {
		t.Run(p.name, func(t *testing.T) {
			f := startFrontWith(t, "fidelity", frontOpts{http2: p.http2})
			for _, size := range []int{0, 5, 200 << 10} {
				resp, body := sendWithTrailer(t, f.client, f.url+"/trailers", size)
				if resp.ProtoMajor != map[bool]int{false: 1, true: 2}[p.http2] {
					t.Errorf("protocol %s", resp.Proto)
				}
				if resp.StatusCode != 200 || body != fmt.Sprintf("read %d bytes\n", size) {
					t.Fatalf("size %d: %d %q", size, resp.StatusCode, body)
				}
				if got := resp.Trailer.Get("X-Body-Bytes"); got != strconv.Itoa(size) {
					t.Errorf("size %d: response trailer X-Body-Bytes %q", size, got)
				}
				if got := resp.Trailer.Get("X-Echo-Trailer"); got != "sum-"+strconv.Itoa(size) {
					t.Errorf("size %d: the handler saw request trailer %q", size, got)
				}
			}
		})
	}
}

type invokerFunc func(ctx context.Context, req *ipc.Request, body io.Reader) (*workers.Response, error)

func (f invokerFunc) RoundTrip(ctx context.Context, req *ipc.Request, body io.Reader) (*workers.Response, error) {
	return f(ctx, req, body)
}

// The dispatcher forwards request trailers in the exchange's end frame:
// ipc.Request.Trailer holds them once the body reached EOF, and a body with
// trailers is streamed even when it would fit in the request frame. (A fake
// Invoker stands in for the worker; TestTrailersBothWays checks that the
// handler sees them.)
func TestRequestTrailersForwarded(t *testing.T) {
	type seen struct {
		eof     bool
		n       int
		trailer http.Header
		err     error
	}
	got := make(chan seen, 1)
	logger, _ := test.NewNullLogger()
	srv, err := New(Config{Logger: logrus.NewEntry(logger), Invoker: invokerFunc(func(ctx context.Context, req *ipc.Request, body io.Reader) (*workers.Response, error) {
		s := seen{eof: req.EOF, n: len(req.Body)}
		if !req.EOF {
			rest, err := io.ReadAll(body)
			s.n += len(rest)
			s.err = err
		}
		s.trailer = req.Trailer.Clone()
		got <- s
		return nil, errors.New("recorded")
	})})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	for _, size := range []int{0, 5, 200 << 10} {
		resp, _ := sendWithTrailer(t, ts.Client(), ts.URL+"/", size)
		if resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("status %d", resp.StatusCode)
		}
		s := <-got
		if s.eof || s.n != size || s.err != nil {
			t.Errorf("size %d: EOF in the request frame %v, %d bytes, error %v", size, s.eof, s.n, s.err)
		}
		if v := s.trailer.Get("X-Req-Trailer"); v != "sum-"+strconv.Itoa(size) {
			t.Errorf("size %d: trailer %q in %v", size, v, s.trailer)
		}
	}
}

// Every status a handler may write reaches the client unchanged, without
// the dispatcher's error marker. 1xx responses are not relayed (the final
// status is); 101 is refused, since a worker cannot take over a connection.
func TestStatusCodesPassUnchanged(t *testing.T) {
	f := startFront(t, "fidelity", workers.Config{})
	for _, code := range []int{200, 201, 202, 203, 204, 205, 206, 226, 299, 300, 301, 302, 303, 304, 307, 308,
		400, 401, 403, 404, 405, 409, 410, 413, 418, 422, 429, 431, 451, 499, 500, 501, 502, 503, 504, 599, 600, 999} {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/status?code=%d", f.url, code), nil)
		resp, err := f.client.Transport.RoundTrip(req) // no redirects followed
		if err != nil {
			t.Fatalf("%d: %v", code, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("status %d\n", code)
		if code == 204 || code == 304 {
			want = ""
		}
		if resp.StatusCode != code || string(body) != want || resp.Header.Get(HeaderError) != "" {
			t.Errorf("status %d: got %d %q (%s=%q)", code, resp.StatusCode, body, HeaderError, resp.Header.Get(HeaderError))
		}
	}
	resp, _ := mustGet(t, f.url+"/switch")
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(HeaderError) != "true" {
		t.Errorf("101 from a worker: %d, want 502 from the dispatcher", resp.StatusCode)
	}
	if e := waitEntry(t, f.hook, "worker failed"); !strings.Contains(fmt.Sprint(e.Data["error"]), "101") {
		t.Errorf("log does not say why: %v", e.Data)
	}
}

// Informational responses reach the client as the worker sends them: a
// 103 Early Hints arrives while the handler still works on the final
// response, over HTTP/1.1 and HTTP/2.
func TestInformationalResponsesRelayed(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) {
			f := startFrontWith(t, "fidelity", frontOpts{workers: workers.Config{Concurrency: 2}, http2: h2})
			type info struct {
				code int
				link string
			}
			got := make(chan info, 4)
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
					got <- info{code, h.Get("Link")}
					return nil
				},
			})
			req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/early?hold=1", nil)
			final := make(chan *http.Response, 1)
			go func() {
				resp, err := f.client.Do(req)
				if err != nil {
					t.Error(err)
					close(final)
					return
				}
				final <- resp
			}()
			select {
			case i := <-got:
				if i.code != http.StatusEarlyHints || i.link != "</style.css>; rel=preload" {
					t.Errorf("informational response: %d with Link %q", i.code, i.link)
				}
			case resp := <-final:
				t.Fatalf("final response (%v) before any 103", resp)
			case <-time.After(10 * time.Second):
				t.Fatal("no 103 while the handler holds its final response")
			}
			rel, err := f.client.Get(f.url + "/early/release")
			if err != nil {
				t.Fatal(err)
			}
			rel.Body.Close()
			if rel.StatusCode != 200 {
				t.Fatalf("release: %d", rel.StatusCode)
			}
			resp := <-final
			if resp == nil {
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "final\n" || len(resp.Header.Values("Link")) != 1 {
				t.Errorf("final response: %d %q, Link %q", resp.StatusCode, body, resp.Header.Values("Link"))
			}

			req, _ = http.NewRequestWithContext(ctx, "GET", f.url+"/processing", nil)
			resp, err = f.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "done\n" {
				t.Errorf("after 102: %d %q", resp.StatusCode, body)
			}
			select {
			case i := <-got:
				if i.code != http.StatusProcessing {
					t.Errorf("informational response: %d, want 102", i.code)
				}
			default:
				t.Error("no 102 Processing before the final response")
			}
		})
	}
}

// Hop-by-hop headers (RFC 9110 section 7.6.1) go neither to the worker nor
// from it to the client, including those Connection names; end-to-end ones
// pass.
func TestHopByHopHeaders(t *testing.T) {
	f := startFront(t, "fidelity", workers.Config{})
	req, _ := http.NewRequest("GET", f.url+"/hop", nil)
	req.Header.Set("Connection", "X-Hop-Req")
	req.Header.Set("X-Hop-Req", "secret")
	req.Header.Set("Keep-Alive", "300")
	req.Header.Set("Proxy-Connection", "keep-alive")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Upgrade", "foo/1")
	req.Header.Set("X-End-To-End-Req", "kept")
	resp, body := mustDo(t, req)
	var seen http.Header
	if err := json.Unmarshal([]byte(body), &seen); err != nil {
		t.Fatalf("%v: %q", err, body)
	}
	for _, k := range []string{"Connection", "X-Hop-Req", "Keep-Alive", "Proxy-Connection", "Te", "Upgrade"} {
		if v, ok := seen[k]; ok {
			t.Errorf("the worker saw request header %s: %q", k, v)
		}
	}
	if seen.Get("X-End-To-End-Req") != "kept" {
		t.Errorf("end-to-end request header lost: %v", seen)
	}
	for _, k := range []string{"X-Conn-Listed", "Keep-Alive", "Proxy-Connection", "Upgrade", "Te"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("the client got response header %s: %q", k, v)
		}
	}
	if resp.Close || resp.Header.Get("Connection") != "" {
		t.Errorf("the worker's Connection: close reached the client: %v", resp.Header)
	}
	if len(resp.TransferEncoding) != 0 || resp.ContentLength != int64(len(body)) {
		t.Errorf("the worker's Transfer-Encoding was relayed: %v, Content-Length %d", resp.TransferEncoding, resp.ContentLength)
	}
	if resp.Header.Get("X-End-To-End") != "kept" {
		t.Errorf("end-to-end response header lost: %v", resp.Header)
	}
}

// sseReader reads server-sent events from a response body, one per call to
// next, in a goroutine so that a test can bound its waits.
type sseReader struct {
	events chan string
	errc   chan error
}

func readEvents(body io.Reader) *sseReader {
	s := &sseReader{events: make(chan string), errc: make(chan error, 1)}
	go func() {
		br := bufio.NewReader(body)
		var ev strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				s.errc <- err
				return
			}
			if line == "\n" {
				s.events <- ev.String()
				ev.Reset()
				continue
			}
			ev.WriteString(line)
		}
	}()
	return s
}

func (s *sseReader) next(tb testing.TB, what string) string {
	tb.Helper()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case ev := <-s.events:
		return ev
	case err := <-s.errc:
		tb.Fatalf("%s: stream ended: %v", what, err)
	case <-t.C:
		tb.Fatalf("%s: not received within %s: the stream is buffered somewhere", what, wait)
	}
	return ""
}

// Server-sent events reach a streaming client one by one: the worker sends
// event i+1 only after the client has received event i and said so, so a
// single buffered event stalls the test.
func TestSSEEventByEvent(t *testing.T) {
	for _, p := range protos {
		t.Run(p.name, func(t *testing.T) {
			f := startFrontWith(t, "fidelity", frontOpts{http2: p.http2, workers: workers.Config{Concurrency: 2}})
			const n = 5
			resp, err := f.client.Get(f.url + "/sse?n=" + strconv.Itoa(n))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
				t.Errorf("Content-Type %q", ct)
			}
			events := readEvents(resp.Body)
			for i := 1; i <= n; i++ {
				ev := events.next(t, fmt.Sprintf("event %d", i))
				if want := fmt.Sprintf("id: %d\ndata: event %d\n", i, i); ev != want {
					t.Fatalf("event %d: %q, want %q", i, ev, want)
				}
				if i < n {
					if r, body := mustDoWith(t, f.client, "GET", f.url+"/sse/next"); r.StatusCode != 200 {
						t.Fatalf("/sse/next: %d %q", r.StatusCode, body)
					}
				}
			}
			select {
			case err := <-events.errc:
				if err != io.EOF {
					t.Errorf("end of stream: %v", err)
				}
			case <-time.After(wait):
				t.Fatal("the stream did not end after the last event")
			}
		})
	}
}

func mustDoWith(tb testing.TB, c *http.Client, method, url string) (*http.Response, string) {
	tb.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp, string(b)
}

// A client that goes away in the middle of a stream cancels the handler's
// context at once (well within CancelGrace: the worker is not killed) and
// the same worker serves the next request.
func TestClientDisconnectMidStream(t *testing.T) {
	for _, p := range protos {
		t.Run(p.name, func(t *testing.T) {
			const grace = 10 * time.Second
			f := startFrontWith(t, "fidelity", frontOpts{http2: p.http2, workers: workers.Config{CancelGrace: grace}})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/sse?n=100", nil)
			resp, err := f.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			pid := resp.Header.Get("X-Worker-Pid")
			events := readEvents(resp.Body)
			events.next(t, "event 1")
			start := time.Now()
			cancel()
			resp.Body.Close()
			waitEntry(t, f.hook, "sse: cancelled after 1 events")
			took := time.Since(start)
			t.Logf("handler context cancelled %s after the client went away", took.Round(time.Microsecond))
			if took > grace/2 {
				t.Errorf("handler cancelled only after %s", took)
			}
			r, body := mustDoWith(t, f.client, "GET", f.url+"/status?code=200")
			if r.StatusCode != 200 || r.Header.Get("X-Worker-Pid") != pid {
				t.Fatalf("next request: %d %q from pid %s, want 200 from the same worker %s", r.StatusCode, body, r.Header.Get("X-Worker-Pid"), pid)
			}
			if e := entry(f.hook, "did not return within"); e != nil {
				t.Errorf("worker killed: %s", e.Message)
			}
		})
	}
}

// A chunked request body and the response stream interleave: each line the
// client sends is answered before it sends the next.
func TestFullDuplexStreaming(t *testing.T) {
	for _, p := range protos {
		t.Run(p.name, func(t *testing.T) {
			f := startFrontWith(t, "fidelity", frontOpts{http2: p.http2})
			pr, pw := io.Pipe()
			defer pw.Close()
			req, _ := http.NewRequest("POST", f.url+"/duplex", pr)
			type result struct {
				resp *http.Response
				err  error
			}
			done := make(chan result, 1)
			go func() {
				resp, err := f.client.Do(req)
				done <- result{resp, err}
			}()
			if _, err := io.WriteString(pw, "line 1\n"); err != nil {
				t.Fatal(err)
			}
			var res result
			select {
			case res = <-done:
			case <-time.After(wait):
				t.Fatal("no response head while the body is still open")
			}
			if res.err != nil {
				t.Fatal(res.err)
			}
			defer res.resp.Body.Close()
			lines := make(chan string)
			go func() {
				br := bufio.NewReader(res.resp.Body)
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						close(lines)
						return
					}
					lines <- l
				}
			}()
			for i := 1; i <= 3; i++ {
				if i > 1 {
					if _, err := fmt.Fprintf(pw, "line %d\n", i); err != nil {
						t.Fatal(err)
					}
				}
				select {
				case l := <-lines:
					if want := fmt.Sprintf("echo: line %d\n", i); l != want {
						t.Fatalf("%q, want %q", l, want)
					}
				case <-time.After(wait):
					t.Fatalf("line %d not echoed while the body is still open", i)
				}
			}
			pw.Close()
			select {
			case l, ok := <-lines:
				if ok {
					t.Fatalf("unexpected %q after the body ended", l)
				}
			case <-time.After(wait):
				t.Fatal("the response did not end after the body did")
			}
		})
	}
}

// http.ResponseController's read deadline works in the worker: a body read
// blocked on a client that sends nothing more fails at the deadline.
func TestReadDeadlineInWorker(t *testing.T) {
	for _, p := range protos {
		t.Run(p.name, func(t *testing.T) {
			f := startFrontWith(t, "fidelity", frontOpts{http2: p.http2})
			pr, pw := io.Pipe()
			defer pw.Close()
			go io.WriteString(pw, "partial") // then nothing, until the test ends
			req, _ := http.NewRequest("POST", f.url+"/readdeadline?ms=100", pr)
			resp, err := f.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if want := `read "partial"; deadline exceeded: true;`; resp.StatusCode != 200 || !strings.HasPrefix(string(body), want) {
				t.Fatalf("%d %q, want %q...", resp.StatusCode, body, want)
			}
		})
	}
}

// http.ResponseController's write deadline works in the worker: once past,
// a flush fails with os.ErrDeadlineExceeded and the response is cut.
func TestWriteDeadlineInWorker(t *testing.T) {
	f := startFront(t, "fidelity", workers.Config{})
	resp, err := f.client.Get(f.url + "/writedeadline")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || string(body) != "first\n" {
		t.Fatalf("%q, %v: want the response cut after its first line", body, err)
	}
	e := waitEntry(t, f.hook, "writedeadline:")
	if !strings.Contains(e.Message, "write error <nil>") || !strings.Contains(e.Message, "deadline exceeded true") {
		t.Fatalf("worker saw: %s", e.Message)
	}
	if r, _ := mustGet(t, f.url+"/status?code=200"); r.StatusCode != 200 {
		t.Fatalf("next request: %d", r.StatusCode)
	}
}

// MaxResponse: a response within it passes; one declaring more gets 502; one
// growing past it is cut with an error logged; the worker serves on.
func TestMaxResponse(t *testing.T) {
	const limit = 100 << 10
	f := startFrontWith(t, "fidelity", frontOpts{server: Config{MaxResponse: limit}})
	if r, body := mustGet(t, f.url+"/big?n="+strconv.Itoa(limit)); r.StatusCode != 200 || len(body) != limit {
		t.Fatalf("at the limit: %d, %d bytes", r.StatusCode, len(body))
	}
	r, body := mustGet(t, f.url+"/big?cl=1&n="+strconv.Itoa(limit+1))
	if r.StatusCode != http.StatusBadGateway || r.Header.Get(HeaderError) != "true" {
		t.Fatalf("declared over the limit: %d %q, want 502", r.StatusCode, body)
	}
	e := waitEntry(t, f.hook, "worker response refused: over the size limit")
	if e.Data["pid"] == nil || e.Level != logrus.ErrorLevel {
		t.Errorf("log entry %v %v", e.Level, e.Data)
	}

	resp, err := f.client.Get(f.url + "/big?n=" + strconv.Itoa(4*limit))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || len(b) > limit {
		t.Fatalf("over the limit while streaming: %d bytes, err %v: want a cut after at most %d", len(b), err, limit)
	}
	e = waitEntry(t, f.hook, "response larger than the limit; connection cut")
	if e.Level != logrus.ErrorLevel || e.Data["req_id"] != resp.Header.Get(HeaderRequestID) {
		t.Errorf("log entry %v %v", e.Level, e.Data)
	}
	// The cut response has its access log entry too.
	var access *logrus.Entry
	for _, e := range f.hook.AllEntries() {
		if e.Message == "request" && e.Data["req_id"] == resp.Header.Get(HeaderRequestID) {
			access = e
		}
	}
	if access == nil || access.Data["status"] != 200 || access.Data["bytes"].(int64) > limit {
		t.Errorf("access log entry of the cut response: %v", access)
	}
	if r, _ := mustGet(t, f.url+"/status?code=200"); r.StatusCode != 200 {
		t.Fatalf("next request: %d", r.StatusCode)
	}
}

// Responses that cannot be relayed faithfully once their head is out are
// cut, with the reason logged: an invalid trailer, more bytes than the
// declared Content-Length.
func TestInvalidResponseTailIsCut(t *testing.T) {
	f := startFront(t, "fidelity", workers.Config{})
	for _, tc := range []struct{ path, log string }{
		{"/badtrailer", `invalid value for trailer "X-Bad"`},
		{"/badlength", "Content-Length"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			f.hook.Reset()
			resp, err := f.client.Get(f.url + tc.path)
			if err == nil {
				var b []byte
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Fatalf("response read whole: %q, trailers %v; want it cut", b, resp.Trailer)
				}
				if resp.Trailer.Get("X-Injected") != "" {
					t.Fatal("a trailer was injected")
				}
			}
			t.Logf("client: %v", err)
			e := waitEntry(t, f.hook, "response failed after its head was sent; connection cut")
			if !strings.Contains(fmt.Sprint(e.Data["error"]), tc.log) {
				t.Errorf("log entry does not name the problem (%s): %v", tc.log, e.Data)
			}
		})
	}
}

// A worker that answers without reading the body of a client that then
// stops sending frees its slot at once: the next request is served while
// the stalled client still holds its connection open.
func TestStalledClientBodyFreesTheWorker(t *testing.T) {
	f := startFront(t, "hello", workers.Config{Size: 1, Pipeline: 1})
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("x", 70000)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "hello world\n" {
		t.Fatalf("stalled client's answer: %d %q", resp.StatusCode, body)
	}
	// The stalled connection stays open; the only worker must be free.
	client := &http.Client{Timeout: 5 * time.Second}
	r2, err := client.Get(f.url + "/")
	if err != nil {
		t.Fatalf("next request while a client stalls mid-body: %v", err)
	}
	r2.Body.Close()
	if r2.StatusCode != 200 {
		t.Fatalf("next request: %d", r2.StatusCode)
	}
}

// A body the worker does not read to its end leaves the client's
// connection in sync: the next request on it is parsed from its own first
// byte, not from the middle of the unread body (net/http discards the rest
// or closes the connection).
func TestUnreadBodyKeepsConnectionInSync(t *testing.T) {
	f := startFront(t, "hello", workers.Config{Size: 1})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 60 {
		body := make([]byte, 70000+rng.IntN(400000))
		resp, err := client.Post(f.url+"/", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		resp, err = client.Get(f.url + "/")
		if err != nil {
			t.Fatalf("GET %d after a POST of %d bytes: %v", i, len(body), err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != "hello world\n" {
			t.Fatalf("GET %d after a POST of %d bytes: %d %q", i, len(body), resp.StatusCode, got)
		}
	}
}
