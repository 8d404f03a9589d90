package dispatcher

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/childproc/dispatcher/ipc"
	"golang.org/x/net/http/httpguts"
)

// hopHeaders are the hop-by-hop headers of RFC 9110 section 7.6.1 (and the
// legacy ones proxies drop too). They describe one connection, so they are
// neither passed to a worker nor taken from its response.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// hasHop reports whether h holds any hop-by-hop header.
func hasHop(h http.Header) bool {
	for _, k := range hopHeaders {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// removeHop deletes hop-by-hop headers from h, including those that
// Connection names.
func removeHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// Forwarding headers: set for the worker on every request. Incoming ones are
// kept only from a trusted proxy; Forwarded (RFC 7239) is never set, only
// dropped when it comes from anyone else.
const (
	headerXFF       = "X-Forwarded-For"
	headerXFProto   = "X-Forwarded-Proto"
	headerXFHost    = "X-Forwarded-Host"
	headerForwarded = "Forwarded"
)

// forwardHeader returns the request headers to send to a worker: r's
// without hop-by-hop ones, with X-Forwarded-For, -Proto and -Host set. From
// an untrusted peer, incoming forwarding headers are replaced (or, for
// Forwarded, dropped); from a trusted proxy, the peer's address is appended
// to X-Forwarded-For and the incoming -Proto and -Host are kept. r.Header is
// not modified: the copy shares its value slices.
func (s *Server) forwardHeader(r *http.Request) http.Header {
	h := make(http.Header, len(r.Header)+3)
	for k, vs := range r.Header {
		h[k] = vs
	}
	if hasHop(h) {
		removeHop(h)
	}
	peer, xff := peerAddr(r.RemoteAddr)
	if s.trusted(peer) {
		if prior := joinNonEmpty(h[headerXFF]); prior != "" {
			xff = prior + ", " + xff
		}
	} else {
		delete(h, headerXFProto)
		delete(h, headerXFHost)
		delete(h, headerForwarded)
	}
	vals := make([]string, 3) // one allocation for the three values
	vals[0] = xff
	h[headerXFF] = vals[0:1:1]
	if _, ok := h[headerXFProto]; !ok {
		vals[1] = "http"
		if r.TLS != nil {
			vals[1] = "https"
		}
		h[headerXFProto] = vals[1:2:2]
	}
	if _, ok := h[headerXFHost]; !ok && r.Host != "" {
		vals[2] = r.Host
		h[headerXFHost] = vals[2:3:3]
	}
	return h
}

// forwarding returns what forwardHeader does, in the common case without a
// copy: r.Header as is, and the forwarding fields to send in place of its
// own (in buf). It falls back to forwardHeader when fields must be removed.
func (s *Server) forwarding(r *http.Request, buf *[3]ipc.HeaderField) (http.Header, []ipc.HeaderField) {
	h := r.Header
	if hasHop(h) {
		return s.forwardHeader(r), nil
	}
	peer, xff := peerAddr(r.RemoteAddr)
	trusted := s.trusted(peer)
	_, hasProto := h[headerXFProto]
	_, hasHost := h[headerXFHost]
	if !trusted {
		if _, ok := h[headerForwarded]; ok || (hasHost && r.Host == "") {
			return s.forwardHeader(r), nil // fields to drop
		}
	} else if prior := joinNonEmpty(h[headerXFF]); prior != "" {
		xff = prior + ", " + xff
	}
	set := append(buf[:0], ipc.HeaderField{Name: headerXFF, Value: xff})
	if !trusted || !hasProto {
		proto := "http"
		if r.TLS != nil {
			proto = "https"
		}
		set = append(set, ipc.HeaderField{Name: headerXFProto, Value: proto})
	}
	if (!trusted || !hasHost) && r.Host != "" {
		set = append(set, ipc.HeaderField{Name: headerXFHost, Value: r.Host})
	}
	return h, set
}

// trusted reports whether addr is in one of the trusted proxy networks.
func (s *Server) trusted(addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	for _, p := range s.trustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// peerAddr returns the IP of an "ip:port" remote address (IPv4-mapped IPv6
// addresses unmapped) and its text, or the zero Addr and the whole remote
// address if it is not one (a unix socket listener, a test).
func peerAddr(remote string) (netip.Addr, string) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}, remote
	}
	a := ap.Addr()
	if a.Is4In6() || a.Zone() != "" {
		a = a.Unmap().WithZone("")
		return a, a.String()
	}
	// The host part of remote as is: no allocation.
	host := remote[:strings.LastIndexByte(remote, ':')]
	return a, strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

func joinNonEmpty(vs []string) string {
	var parts []string
	for _, v := range vs {
		if v = strings.TrimSpace(v); v != "" {
			parts = append(parts, v)
		}
	}
	return strings.Join(parts, ", ")
}

// headerFields counts the fields of h, each value of a repeated one apart.
func headerFields(h http.Header) int {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	return n
}

// BadResponseError reports a response head a worker sent that cannot be
// relayed: an invalid header name or value. The client gets 502.
type BadResponseError struct {
	PID int
	Err error
}

func (e *BadResponseError) Error() string {
	return fmt.Sprintf("worker pid %d sent an invalid response: %v", e.PID, e.Err)
}

func (e *BadResponseError) Unwrap() error { return e.Err }

// validHeader returns an error naming the first invalid field name or value
// in h (what="header" or "trailer").
func validHeader(what string, h http.Header) error {
	for k, vs := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid %s name %q", what, k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid value for %s %q: %q", what, k, v)
			}
		}
	}
	return nil
}

// copyResponseHeader validates a worker's response headers and copies them
// into dst, leaving out hop-by-hop ones except Trailer, which announces the
// trailers the worker will send (net/http then frames the response so they
// can follow). Nothing is copied if any is invalid.
func copyResponseHeader(dst, src http.Header) error {
	if err := validHeader("header", src); err != nil {
		return err
	}
	hop := hasHop(src)
	for k, vs := range src {
		dst[k] = vs
	}
	if hop {
		removeHop(dst)
		if tr, ok := src["Trailer"]; ok {
			dst["Trailer"] = tr
		}
	}
	return nil
}
