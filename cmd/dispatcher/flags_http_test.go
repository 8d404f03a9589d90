package main

// The HTTP front's flags (flags_http.go), end to end through the real
// binary: limits, forwarding headers, TLS with HTTP/2, h2c, timeouts.

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"65536", 65536, true}, {"64K", 64 << 10, true}, {"64k", 64 << 10, true},
		{"32M", 32 << 20, true}, {"32MiB", 32 << 20, true}, {"32MB", 32 << 20, true}, {"1.5G", 3 << 29, true},
		{"1T", 1 << 40, true}, {" 2K ", 2 << 10, true}, {"7B", 7, true},
		{"", 0, false}, {"K", 0, false}, {"-1", 0, false}, {"-1M", 0, false}, {"1X", 0, false}, {"1e3", 0, false},
		{"0x10", 0, false}, {"inf", 0, false}, {"NaN", 0, false}, {"99999999T", 0, false}, {"1,5M", 0, false},
	} {
		got, err := parseByteSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	for n, want := range map[byteSize]string{0: "0", 100: "100", 64 << 10: "64K", 32 << 20: "32M", 3 << 29: "1536M", 1 << 40: "1T"} {
		if got := n.String(); got != want {
			t.Errorf("byteSize(%d).String() = %q, want %q", int64(n), got, want)
		}
	}
}

func TestPrefixList(t *testing.T) {
	var l prefixList
	if err := l.Set("10.0.0.0/8, 192.0.2.7,fd00::/8"); err != nil {
		t.Fatal(err)
	}
	if err := l.Set("::ffff:198.51.100.1"); err != nil {
		t.Fatal(err)
	}
	if got, want := l.String(), "10.0.0.0/8,192.0.2.7/32,fd00::/8,198.51.100.1/32"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0/8"} {
		if err := new(prefixList).Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its key
// to dir and returns their paths and a pool trusting the certificate.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dispatcher test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestHTTPUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key, _ := writeTestCert(t, dir)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	hello := bin(t, "hello")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string // substrings of stderr
	}{
		{"max-body not a size", []string{"--max-body", "lots"}, 2, []string{`--max-body "lots": want a size`}},
		{"max-body negative", []string{"--max-body", "-1"}, 2, []string{"-max-body"}},
		{"max-response not a size", []string{"--max-response", "1Q"}, 2, []string{"-max-response"}},
		{"max-header-bytes too small", []string{"--max-header-bytes", "100"}, 2, []string{"--max-header-bytes 100: must be 1K-512K"}},
		{"max-header-bytes too large", []string{"--max-header-bytes", "1M"}, 2, []string{"--max-header-bytes 1M: must be 1K-512K"}},
		{"max-headers negative", []string{"--max-headers", "-2"}, 2, []string{"--max-headers -2"}},
		{"trusted-proxies not a CIDR", []string{"--trusted-proxies", "10.0.0.0/8,proxy.example"}, 2, []string{"-trusted-proxies", `"proxy.example"`}},
		{"tls-cert without key", []string{"--tls-cert", cert}, 2, []string{"--tls-cert and --tls-key go together"}},
		{"tls-key without cert", []string{"--tls-key", key}, 2, []string{"--tls-cert and --tls-key go together"}},
		{"tls-cert unreadable", []string{"--tls-cert", garbage, "--tls-key", key}, 2, []string{"--tls-cert", garbage}},
		{"tls-cert missing", []string{"--tls-cert", dir + "/none.pem", "--tls-key", key}, 2, []string{"--tls-cert", "none.pem"}},
		{"h2c with TLS", []string{"--h2c", "--tls-cert", cert, "--tls-key", key}, 2, []string{"--h2c: only without --tls-cert"}},
		{"read-header-timeout zero", []string{"--read-header-timeout", "0s"}, 2, []string{"--read-header-timeout 0s: must be positive"}},
		{"read-timeout negative", []string{"--read-timeout", "-1s"}, 2, []string{"--read-timeout -1s"}},
		{"write-timeout negative", []string{"--write-timeout", "-1s"}, 2, []string{"--write-timeout -1s"}},
		{"keepalive-timeout zero", []string{"--keepalive-timeout", "0s"}, 2, []string{"--keepalive-timeout 0s: must be positive"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"--workers", hello, "--listen", "127.0.0.1:0"}, tc.args...)
			code, stderr, _ := run(t, args...)
			if code != tc.code {
				t.Errorf("exit status %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "dispatcher listening") {
				t.Errorf("started despite the usage error:\n%s", stderr)
			}
		})
	}
}

// rawWait bounds rawRequest: far above the timeouts under test, well below
// their defaults.
const rawWait = 5 * time.Second

// rawRequest sends raw on a new connection to d and returns everything the
// server sends until it closes the connection (bounded by rawWait).
func rawRequest(t *testing.T, d *dproc, raw string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", d.addr, rawWait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(rawWait))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading until the server closes: %v (got %q)", err, b)
	}
	return string(b)
}

// The limit and forwarding flags reach the dispatcher, and the timeout
// flags the HTTP server.
func TestHTTPLimitFlags(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "fidelity"), "--pool-size", "1",
		"--max-body", "1K", "--max-response", "8K", "--max-header-bytes", "4K", "--max-headers", "20",
		"--trusted-proxies", "192.0.2.0/24, 127.0.0.1", "--read-header-timeout", "300ms", "--keepalive-timeout", "300ms")

	t.Run("max-body", func(t *testing.T) {
		for _, n := range []int{1024, 1025} {
			req, _ := http.NewRequest("POST", d.url+"/count", strings.NewReader(strings.Repeat("b", n)))
			resp, err := d.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := map[bool]int{true: 200, false: 413}[n <= 1024]
			if resp.StatusCode != want {
				t.Errorf("%d bytes: %d %q, want %d", n, resp.StatusCode, body, want)
			}
		}
	})
	t.Run("max-response", func(t *testing.T) {
		if resp, body := d.get("/big?n=8192"); resp.StatusCode != 200 || len(body) != 8192 {
			t.Errorf("at the limit: %d, %d bytes", resp.StatusCode, len(body))
		}
		resp, err := d.client.Get(d.url + "/big?n=100000")
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil {
				t.Fatalf("a response over --max-response arrived whole: %d, %d bytes", resp.StatusCode, len(b))
			}
		}
		d.waitLog("level=error", "response larger than the limit; connection cut", "limit=8192")
	})
	t.Run("max-header-bytes", func(t *testing.T) {
		resp, _ := d.get("/status?code=200", "X-Big", strings.Repeat("h", 16<<10))
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("16 KiB of headers: %d, want 431", resp.StatusCode)
		}
	})
	t.Run("max-headers", func(t *testing.T) {
		req, _ := http.NewRequest("GET", d.url+"/status?code=200", nil)
		for i := range 30 {
			req.Header.Add(fmt.Sprintf("X-H%d", i), "v")
		}
		resp, err := d.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || resp.Header.Get("X-Dispatcher-Error") != "true" {
			t.Errorf("30 header fields: %d, want 431 from the dispatcher", resp.StatusCode)
		}
	})
	t.Run("trusted-proxies", func(t *testing.T) {
		resp, body := d.get("/hop", "X-Forwarded-For", "203.0.113.5", "X-Forwarded-Proto", "https")
		var seen http.Header
		if err := json.Unmarshal([]byte(body), &seen); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%d %q: %v", resp.StatusCode, body, err)
		}
		if got := seen.Get("X-Forwarded-For"); got != "203.0.113.5, 127.0.0.1" {
			t.Errorf("X-Forwarded-For %q from a trusted proxy", got)
		}
		if got := seen.Get("X-Forwarded-Proto"); got != "https" {
			t.Errorf("X-Forwarded-Proto %q from a trusted proxy", got)
		}
	})
	t.Run("read-header-timeout", func(t *testing.T) {
		// Half a request head, then nothing: the server hangs up.
		start := time.Now()
		got := rawRequest(t, d, "GET / HTTP/1.1\r\nHost: x\r\n")
		t.Logf("connection closed %s after a stalled head; server sent %q", time.Since(start).Round(time.Millisecond), got)
		if strings.Contains(got, "200 OK") {
			t.Errorf("answered a request whose head never ended: %q", got)
		}
	})
	t.Run("keepalive-timeout", func(t *testing.T) {
		// One request on a keep-alive connection, then nothing: the server
		// closes the connection once it has been idle.
		got := rawRequest(t, d, "GET /status?code=200 HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
		if err != nil || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("%v, %q: want a keep-alive 200 before the close", err, got)
		}
	})
}

// --tls-cert/--tls-key serve HTTPS with HTTP/2 and HTTP/1.1; the handler
// sees the protocol and X-Forwarded-Proto: https.
func TestTLSAndHTTP2(t *testing.T) {
	t.Parallel()
	cert, key, pool := writeTestCert(t, t.TempDir())
	d := startDispatcher(t, "--workers", bin(t, "echo"), "--pool-size", "1", "--tls-cert", cert, "--tls-key", key)
	url := "https://" + d.addr + "/json"
	for _, tc := range []struct {
		name  string
		tr    *http.Transport
		proto string
	}{
		{"HTTP/2", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}, "HTTP/2.0"},
		{"HTTP/1.1", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}, "HTTP/1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.tr.CloseIdleConnections()
			c := &http.Client{Transport: tc.tr, Timeout: logWait}
			resp, err := c.Post(url, "text/plain", strings.NewReader("over TLS"))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got struct {
				Proto, Body string
				Header      http.Header
			}
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if resp.Proto != tc.proto || got.Proto != tc.proto {
				t.Errorf("client saw %s, handler saw %s; want %s", resp.Proto, got.Proto, tc.proto)
			}
			if got.Body != "over TLS" || got.Header.Get("X-Forwarded-Proto") != "https" {
				t.Errorf("handler saw body %q, X-Forwarded-Proto %q", got.Body, got.Header.Get("X-Forwarded-Proto"))
			}
		})
	}
	// Plain HTTP on the TLS port is refused by net/http.
	resp, body := d.get("/json")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "HTTPS") {
		t.Errorf("plain HTTP to the TLS port: %d %q", resp.StatusCode, body)
	}
}

// --h2c serves HTTP/2 without TLS next to HTTP/1.1; without it, HTTP/2
// prior knowledge is refused.
func TestH2C(t *testing.T) {
	t.Parallel()
	h2c := func() *http.Transport {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		return &http.Transport{Protocols: &p}
	}
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("h2c=%v", on), func(t *testing.T) {
			t.Parallel()
			args := []string{"--workers", bin(t, "echo"), "--pool-size", "1"}
			if on {
				args = append(args, "--h2c")
			}
			d := startDispatcher(t, args...)
			tr := h2c()
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: logWait}).Get(d.url + "/json")
			if !on {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("HTTP/2 prior knowledge accepted without --h2c: %s", resp.Proto)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got struct{ Proto string }
			err = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if err != nil || resp.Proto != "HTTP/2.0" || got.Proto != "HTTP/2.0" {
				t.Errorf("client %s, handler %s (%v), want HTTP/2.0", resp.Proto, got.Proto, err)
			}
			if r, _ := d.get("/json"); r.StatusCode != 200 || r.Proto != "HTTP/1.1" {
				t.Errorf("HTTP/1.1 next to h2c: %d %s", r.StatusCode, r.Proto)
			}
		})
	}
}

func TestHTTPHelpShowsDefaults(t *testing.T) {
	t.Parallel()
	code, stdout, _ := runStdout(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, w := range []string{"--max-body SIZE", "(default 32M)", "--max-header-bytes SIZE", "(default 64K)",
		"--max-headers N", "(default 100)", "--read-header-timeout DURATION", "(default 10s)", "--keepalive-timeout DURATION", "(default 2m0s)",
		"--trusted-proxies CIDR,...", "--tls-cert FILE", "--h2c\n"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("--help lacks %q:\n%s", w, stdout)
		}
	}
}

// A request with both Content-Length and Transfer-Encoding is answered, and
// its connection then closed (RFC 9112 §6.1): a request pipelined after it
// on the same connection is never served. The same pair with only
// Transfer-Encoding keeps the connection.
func TestAmbiguousFramingClosesConnection(t *testing.T) {
	t.Parallel()
	d := startDispatcher(t, "--workers", bin(t, "echo"), "--pool-size", "1")
	const (
		chunked = "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
		both    = "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
		next    = "GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
	)
	for _, tc := range []struct {
		name      string
		first     string
		responses int
	}{{"chunked", chunked, 2}, {"content-length and chunked", both, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			out := rawRequest(t, d, tc.first+next)
			br := bufio.NewReader(strings.NewReader(out))
			resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
			if err != nil {
				t.Fatalf("first response: %v; got %q", err, out)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(body) != "hello" {
				t.Fatalf("first response: %d %q, want 200 hello", resp.StatusCode, body)
			}
			if want := tc.responses == 1; resp.Close != want {
				t.Errorf("first response: Connection: close %v, want %v", resp.Close, want)
			}
			n := 1 + strings.Count(out[len(out)-br.Buffered():], "HTTP/1.1 ")
			if n != tc.responses {
				t.Errorf("%d responses on the connection, want %d:\n%s", n, tc.responses, out)
			}
		})
	}
}
