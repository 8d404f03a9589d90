package dispatcher

import (
	"fmt"
	"net/http"
	"strings"

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

// forwardHeader returns the request headers to send to a worker: h itself
// when it has no hop-by-hop header (the common case, no copy), else a copy
// without them.
func forwardHeader(h http.Header) http.Header {
	if !hasHop(h) {
		return h
	}
	h = h.Clone()
	removeHop(h)
	return h
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

// copyResponseHeader validates a worker's response headers and copies them
// into dst, leaving out hop-by-hop ones except Trailer, which announces the
// trailers the worker will send (net/http then frames the response so they
// can follow). Nothing is copied if any is invalid.
func copyResponseHeader(dst, src http.Header) error {
	for k, vs := range src {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid value for header %q: %q", k, v)
			}
		}
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
