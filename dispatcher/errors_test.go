package dispatcher

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/childproc/dispatcher/workers"
)

func TestStatusFor(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"client gone", context.Canceled, StatusClientClosed},
		{"client gone, wrapped", fmt.Errorf("x: %w", context.Canceled), StatusClientClosed},
		{"body over limit", &ipc.BodyError{Err: &http.MaxBytesError{Limit: 10}}, http.StatusRequestEntityTooLarge},
		{"too many header fields", &HeaderLimitError{Count: 101, Limit: 100}, http.StatusRequestHeaderFieldsTooLarge},
		{"response over limit", &ResponseTooLargeError{PID: 1, Limit: 10, Size: 11}, http.StatusBadGateway},
		{"body unreadable", &ipc.BodyError{Err: io.ErrUnexpectedEOF}, http.StatusBadRequest},
		{"timeout", &workers.TimeoutError{PID: 1}, http.StatusGatewayTimeout},
		{"deadline", context.DeadlineExceeded, http.StatusGatewayTimeout},
		{"pool closed", workers.ErrClosed, http.StatusServiceUnavailable},
		{"worker died", &workers.ExitError{PID: 1, Err: ipc.ErrPeerClosed}, http.StatusBadGateway},
		{"worker did not start", &launch.StartError{Path: "x", Err: io.EOF}, http.StatusBadGateway},
		{"protocol violation", &ipc.ProtocolError{Reason: "x"}, http.StatusBadGateway},
		{"aborted", &ipc.AbortError{Reason: "x"}, http.StatusBadGateway},
		{"bad response", &BadResponseError{Err: io.EOF}, http.StatusBadGateway},
		{"no worker", fmt.Errorf("%w: x", workers.ErrNoWorker), http.StatusBadGateway},
		{"anything else", io.ErrClosedPipe, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := statusFor(tt.err); got != tt.want {
				t.Fatalf("statusFor(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

func TestForwardHeader(t *testing.T) {
	trusted := netip.MustParsePrefix("10.0.0.0/8")
	srv := &Server{trustedProxies: []netip.Prefix{trusted}}
	incoming := func() http.Header {
		return http.Header{
			"Accept":            {"*/*"},
			"Connection":        {"close, X-Private"},
			"X-Private":         {"1"},
			"Te":                {"trailers"},
			"X-Forwarded-For":   {"1.2.3.4", "5.6.7.8"},
			"X-Forwarded-Proto": {"https"},
			"X-Forwarded-Host":  {"public.example"},
			"Forwarded":         {"for=1.2.3.4"},
		}
	}
	tests := []struct {
		name   string
		remote string
		tls    bool
		header http.Header
		want   http.Header
	}{
		{"untrusted peer: its forwarding headers are replaced", "192.0.2.7:5555", false, incoming(), http.Header{
			"Accept": {"*/*"}, "X-Forwarded-For": {"192.0.2.7"}, "X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"front.example"},
		}},
		{"trusted proxy: kept, its address appended", "10.1.2.3:5555", false, incoming(), http.Header{
			"Accept": {"*/*"}, "X-Forwarded-For": {"1.2.3.4, 5.6.7.8, 10.1.2.3"}, "X-Forwarded-Proto": {"https"},
			"X-Forwarded-Host": {"public.example"}, "Forwarded": {"for=1.2.3.4"},
		}},
		{"trusted proxy without forwarding headers", "10.1.2.3:5555", true, http.Header{"Accept": {"*/*"}}, http.Header{
			"Accept": {"*/*"}, "X-Forwarded-For": {"10.1.2.3"}, "X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"front.example"},
		}},
		{"IPv4-mapped IPv6 peer in a trusted IPv4 network", "[::ffff:10.0.0.1]:5555", false, http.Header{"X-Forwarded-For": {"1.2.3.4"}}, http.Header{
			"X-Forwarded-For": {"1.2.3.4, 10.0.0.1"}, "X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"front.example"},
		}},
		{"IPv6 peer", "[2001:db8::1]:5555", true, http.Header{"X-Forwarded-For": {"1.2.3.4"}}, http.Header{
			"X-Forwarded-For": {"2001:db8::1"}, "X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"front.example"},
		}},
		{"not an ip:port", "@", false, nil, http.Header{
			"X-Forwarded-For": {"@"}, "X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"front.example"},
		}},
		{"untrusted peer, forwarding headers but no Forwarded", "192.0.2.7:5555", true,
			http.Header{"X-Forwarded-For": {"1.1.1.1"}, "X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"evil.example"}, "Connection-Less": {"x"}},
			http.Header{"Connection-Less": {"x"}, "X-Forwarded-For": {"192.0.2.7"}, "X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"front.example"}}},
		{"hop-by-hop fields", "192.0.2.7:5555", false,
			http.Header{"Connection": {"X-Drop"}, "X-Drop": {"1"}, "Keep-Alive": {"5"}, "Accept": {"*/*"}},
			http.Header{"Accept": {"*/*"}, "X-Forwarded-For": {"192.0.2.7"}, "X-Forwarded-Proto": {"http"}, "X-Forwarded-Host": {"front.example"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.Host, r.RemoteAddr, r.Header = "front.example", tt.remote, tt.header
			if !tt.tls {
				r.TLS = nil
			} else if r.TLS == nil {
				r.TLS = &tls.ConnectionState{}
			}
			before := fmt.Sprint(tt.header)
			got := srv.forwardHeader(r)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("forwarded\n%v\nwant\n%v", got, tt.want)
			}
			// The no-copy path sends the same fields.
			var buf [3]ipc.HeaderField
			h, set := srv.forwarding(r, &buf)
			eff := http.Header{}
			for k, vs := range h {
				eff[k] = vs
			}
			for _, f := range set {
				eff[f.Name] = []string{f.Value}
			}
			if fmt.Sprint(eff) != fmt.Sprint(tt.want) {
				t.Errorf("forwarding (no copy)\n%v\nwant\n%v", eff, tt.want)
			}
			if fmt.Sprint(r.Header) != before {
				t.Errorf("the incoming header was modified: %v", r.Header)
			}
		})
	}
}

func TestHeaderFields(t *testing.T) {
	if n := headerFields(http.Header{"A": {"1", "2"}, "B": {"3"}, "C": nil}); n != 3 {
		t.Fatalf("headerFields = %d, want 3", n)
	}
}
