package main

// Flags of the HTTP front: body and header limits, forwarding headers,
// protocols (TLS, HTTP/2, h2c) and server timeouts (README, "HTTP
// behaviour").

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	stdlog "log"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/childproc/dispatcher/dispatcher"
)

// Defaults of the HTTP front's flags.
const (
	defaultMaxHeaderBytes    = 64 << 10
	defaultReadHeaderTimeout = 10 * time.Second
	defaultIdleTimeout       = 120 * time.Second
	// maxHeaderBytesLimit keeps a request's head, which reaches the worker
	// in one frame together with up to 64 KiB of body, well within the
	// smallest frame limit a worker may have (ipc.DefaultMaxFrame).
	maxHeaderBytesLimit = 512 << 10
	minHeaderBytes      = 1 << 10
)

type httpFlags struct {
	maxBody        byteSize
	maxResponse    byteSize
	maxHeaderBytes byteSize
	maxHeaders     int
	trustedProxies prefixList
	tlsCert        string
	tlsKey         string
	h2c            bool

	readHeaderTimeout time.Duration
	readTimeout       time.Duration
	writeTimeout      time.Duration
	idleTimeout       time.Duration

	cert *tls.Certificate // loaded by check
}

func (f *httpFlags) register(fs *flag.FlagSet) {
	f.maxBody = dispatcher.DefaultMaxBody
	f.maxHeaderBytes = defaultMaxHeaderBytes
	fs.Var(&f.maxBody, "max-body", "largest request body, e.g. 512K, 32M, 1G (`SIZE`; 0: no limit); larger: 413, and the rest is not read")
	fs.Var(&f.maxResponse, "max-response", "largest response body relayed from a worker (`SIZE`; 0: no limit); larger: the response is cut and an error logged")
	fs.Var(&f.maxHeaderBytes, "max-header-bytes", "largest request head: request line and header fields (`SIZE`, 1K-512K); larger: 431")
	fs.IntVar(&f.maxHeaders, "max-headers", dispatcher.DefaultMaxHeaders, "most request header fields, each value of a repeated one counting (0: no limit); more: 431")
	fs.Var(&f.trustedProxies, "trusted-proxies", "proxies whose X-Forwarded-For/-Proto/-Host and Forwarded headers are believed (`CIDR,...`, or addresses; default none)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "serve HTTPS (HTTP/1.1 and HTTP/2) with the certificate chain in PEM `FILE`; needs --tls-key")
	fs.StringVar(&f.tlsKey, "tls-key", "", "private key in PEM `FILE` for --tls-cert")
	fs.BoolVar(&f.h2c, "h2c", false, "also serve HTTP/2 without TLS (prior knowledge, as curl --http2-prior-knowledge); not with --tls-cert")
	fs.DurationVar(&f.readHeaderTimeout, "read-header-timeout", defaultReadHeaderTimeout, "limit for a client to send a request's head")
	fs.DurationVar(&f.readTimeout, "read-timeout", 0, "limit for a client to send a whole request, body included (0: none)")
	fs.DurationVar(&f.writeTimeout, "write-timeout", 0, "limit for a whole response to be written, from the end of the request head (0: none; streams need none)")
	fs.DurationVar(&f.idleTimeout, "keepalive-timeout", defaultIdleTimeout, "how long a keep-alive connection may wait for its next request")
}

// check validates the flags and loads the TLS key pair; errors name the
// flag.
func (f *httpFlags) check() error {
	switch {
	case f.maxHeaderBytes < minHeaderBytes || f.maxHeaderBytes > maxHeaderBytesLimit:
		return usageErrorf("--max-header-bytes %s: must be 1K-512K", &f.maxHeaderBytes)
	case f.maxHeaders < 0:
		return usageErrorf("--max-headers %d: must not be negative", f.maxHeaders)
	case f.readHeaderTimeout <= 0:
		return usageErrorf("--read-header-timeout %s: must be positive", f.readHeaderTimeout)
	case f.readTimeout < 0:
		return usageErrorf("--read-timeout %s: must not be negative", f.readTimeout)
	case f.writeTimeout < 0:
		return usageErrorf("--write-timeout %s: must not be negative", f.writeTimeout)
	case f.idleTimeout <= 0:
		return usageErrorf("--keepalive-timeout %s: must be positive", f.idleTimeout)
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return usageErrorf("--tls-cert and --tls-key go together")
	case f.h2c && f.tlsCert != "":
		return usageErrorf("--h2c: only without --tls-cert (HTTP/2 is always on over TLS)")
	}
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return usageErrorf("--tls-cert %q, --tls-key %q: %v", f.tlsCert, f.tlsKey, err)
		}
		f.cert = &cert
	}
	return nil
}

// config sets the dispatcher's HTTP limits in c.
func (f *httpFlags) config(c dispatcher.Config) dispatcher.Config {
	c.MaxBody = noLimitIfZero(int64(f.maxBody))
	c.MaxResponse = int64(f.maxResponse)
	c.MaxHeaders = int(noLimitIfZero(int64(f.maxHeaders)))
	c.TrustedProxies = f.trustedProxies
	return c
}

// noLimitIfZero maps the flags' "0: no limit" to dispatcher.Config's
// negative values (zero there means the default).
func noLimitIfZero(n int64) int64 {
	if n == 0 {
		return -1
	}
	return n
}

// server returns the http.Server for h: protocols, TLS and timeouts.
func (f *httpFlags) server(h http.Handler, errorLog *stdlog.Logger) *http.Server {
	var protos http.Protocols
	protos.SetHTTP1(true)
	hs := &http.Server{
		Handler:           h,
		Protocols:         &protos,
		MaxHeaderBytes:    int(f.maxHeaderBytes),
		ReadHeaderTimeout: f.readHeaderTimeout,
		ReadTimeout:       f.readTimeout,
		WriteTimeout:      f.writeTimeout,
		IdleTimeout:       f.idleTimeout,
		ErrorLog:          errorLog,
	}
	switch {
	case f.cert != nil:
		protos.SetHTTP2(true)
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*f.cert}, MinVersion: tls.VersionTLS12}
	case f.h2c:
		protos.SetUnencryptedHTTP2(true)
	}
	return hs
}

// serve serves hs on ln, over TLS if configured, until hs is shut down.
func (f *httpFlags) serve(hs *http.Server, ln net.Listener) error {
	if hs.TLSConfig != nil {
		return hs.ServeTLS(ln, "", "")
	}
	return hs.Serve(ln)
}

// byteSize is a flag.Value for sizes in bytes: a number, optionally with a
// binary unit K, M, G or T (KiB, MiB, ... and KB, MB, ... mean the same).
type byteSize int64

func (s *byteSize) Set(v string) error {
	n, err := parseByteSize(v)
	if err != nil {
		return err
	}
	*s = byteSize(n)
	return nil
}

func (s *byteSize) String() string {
	if s == nil {
		return "0"
	}
	n := int64(*s)
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// parseByteSize parses a non-negative size: "0", "65536", "64K", "1.5M",
// "32MiB", "1GB".
func parseByteSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "B")
	t = strings.TrimSuffix(t, "I")
	mult := 1.0
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult = math.Pow(1024, float64(i+1))
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || math.IsNaN(v) || v*mult >= math.MaxInt64/2 || t == "" || strings.ContainsAny(t, "+-eEpPxX_") {
		return 0, errors.New("want a size in bytes such as 0, 65536, 512K, 32M or 1G")
	}
	return int64(v * mult), nil
}

// prefixList is a flag.Value for a comma-separated list of CIDR prefixes or
// bare addresses; it may be repeated.
type prefixList []netip.Prefix

func (l *prefixList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		var p netip.Prefix
		if strings.Contains(s, "/") {
			var err error
			if p, err = netip.ParsePrefix(s); err != nil {
				return fmt.Errorf("%q: want CIDR such as 10.0.0.0/8 or fd00::/8, or an address", s)
			}
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("%q: want CIDR such as 10.0.0.0/8 or fd00::/8, or an address", s)
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		*l = append(*l, p.Masked())
	}
	return nil
}

func (l *prefixList) String() string {
	if l == nil {
		return ""
	}
	parts := make([]string, len(*l))
	for i, p := range *l {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}
