package dispatcher

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

func TestFramingScan(t *testing.T) {
	for _, tc := range []struct {
		name            string
		in              string
		ambiguous, isTE bool
	}{
		{"get", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, false},
		{"content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", false, false},
		{"chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false, true},
		{"both", "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true, true},
		{"both, other case, bare LF", "POST / HTTP/1.1\ntransfer-ENCODING:chunked\nCONTENT-length:3\n\n0\n\n", true, true},
		{"second request both", "GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", true, true},
		{"in separate blocks", "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false, true},
		{"folded line is no field", "GET / HTTP/1.1\r\nX: a\r\n Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", false, true},
		{"name with a suffix", "GET / HTTP/1.1\r\nContent-Lengths: 1\r\nTransfer-Encoding: chunked\r\n\r\n", false, true},
		{"CR inside a line", "GET / HTTP/1.1\r\n\rContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", false, true},
		{"unfinished block", "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(how string, s *framingScan) {
				t.Helper()
				seen := s.seen.Load()
				if got := seen&seenAmbiguous != 0; got != tc.ambiguous {
					t.Errorf("%s: ambiguous %v, want %v", how, got, tc.ambiguous)
				}
				if got := seen&seenTE != 0; got != tc.isTE {
					t.Errorf("%s: transfer-encoding %v, want %v", how, got, tc.isTE)
				}
			}
			// Whole, byte by byte, and in two reads split at every byte.
			var s framingScan
			s.feed([]byte(tc.in))
			check("whole", &s)
			s = framingScan{}
			for i := range len(tc.in) {
				s.feed([]byte{tc.in[i]})
			}
			check("bytewise", &s)
			for i := range len(tc.in) {
				s = framingScan{}
				s.feed([]byte(tc.in[:i]))
				s.feed([]byte(tc.in[i:]))
				check("split at "+string(rune('0'+i%10)), &s)
			}
		})
	}
}

// startGuarded serves h on loopback behind GuardFraming, as cmd/dispatcher
// does.
func startGuarded(tb testing.TB, h http.Handler) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: wait}
	gln := GuardFraming(hs, ln)
	go hs.Serve(gln)
	tb.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// echoBody answers with the request's body, as read.
var echoBody = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.Header().Set("Connection", "keep-alive") // a hop-by-hop header the guard must override
	w.Write(b)
})

func TestGuardFraming(t *testing.T) {
	const next = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, tc := range []struct {
		name  string
		req   string
		body  string
		close bool
	}{
		{"content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "hello", false},
		{"chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "hello", false},
		{"both", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "hello", true},
		{"both, TE first", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "hello", true},
		{"HTTP/1.0 with TE", "POST / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello", "hello", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startGuarded(t, echoBody)
			c, err := net.DialTimeout("tcp", addr, wait)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(wait))
			// Both requests in one write: the second is pipelined.
			if _, err := io.WriteString(c, tc.req+next); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, body := readResponse(t, br, "POST")
			if resp.StatusCode != 200 || body != tc.body {
				t.Fatalf("first response: %d %q, want 200 %q", resp.StatusCode, body, tc.body)
			}
			// resp.Close: ReadResponse takes "Connection: close" out of
			// the header.
			if resp.Close != tc.close {
				t.Fatalf("Connection: close %v, want %v", resp.Close, tc.close)
			}
			if !tc.close {
				if resp, _ := readResponse(t, br, "GET"); resp.StatusCode != 200 {
					t.Fatalf("pipelined request: %d", resp.StatusCode)
				}
				return
			}
			rest, err := io.ReadAll(br)
			if len(rest) > 0 {
				t.Fatalf("after the response of an ambiguous request, the connection sent %q (err %v); want it closed", rest, err)
			}
		})
	}
}

// BenchmarkGuardFraming measures a small keep-alive GET through a real
// http.Server, with and without GuardFraming: what the guard costs the
// common path.
func BenchmarkGuardFraming(b *testing.B) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	for _, guarded := range []bool{false, true} {
		name := "guard=off"
		if guarded {
			name = "guard=on"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			hs := &http.Server{Handler: ok}
			sln := ln
			if guarded {
				sln = GuardFraming(hs, ln)
			}
			go hs.Serve(sln)
			defer hs.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			req := "GET /path?q=1 HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
			b.ReportAllocs()
			for b.Loop() {
				if _, err := io.WriteString(c, req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.Close {
					b.Fatal(resp.Status, resp.Header)
				}
			}
		})
	}
}

// BenchmarkFramingScan measures the scan of a body: what a large upload
// costs the guard per byte.
func BenchmarkFramingScan(b *testing.B) {
	for _, bc := range []struct{ name, line string }{
		{"json-lines", `{"id": 12345, "name": "something", "tags": ["a", "b"]}` + "\n"},
		{"headers", "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var buf []byte
			for len(buf) < 64<<10 {
				buf = append(buf, bc.line...)
			}
			b.SetBytes(int64(len(buf)))
			var s framingScan
			for b.Loop() {
				s.feed(buf)
			}
		})
	}
}
