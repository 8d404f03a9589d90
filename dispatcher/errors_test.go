package dispatcher

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/childproc/dispatcher/ipc"
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
		{"body unreadable", &ipc.BodyError{Err: io.ErrUnexpectedEOF}, http.StatusBadRequest},
		{"timeout", &workers.TimeoutError{PID: 1}, http.StatusGatewayTimeout},
		{"deadline", context.DeadlineExceeded, http.StatusGatewayTimeout},
		{"pool closed", workers.ErrClosed, http.StatusServiceUnavailable},
		{"worker died", &workers.ExitError{PID: 1, Err: ipc.ErrPeerClosed}, http.StatusBadGateway},
		{"worker did not start", &ipc.StartError{Path: "x", Err: io.EOF}, http.StatusBadGateway},
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

func TestForwardHeaderCopiesOnlyWhenNeeded(t *testing.T) {
	clean := http.Header{"Accept": {"*/*"}}
	if got := forwardHeader(clean); fmt.Sprintf("%p", got) != fmt.Sprintf("%p", clean) {
		t.Error("a header without hop-by-hop fields should be passed as is")
	}
	hop := http.Header{"Accept": {"*/*"}, "Connection": {"close, X-Private"}, "X-Private": {"1"}, "Te": {"trailers"}}
	got := forwardHeader(hop)
	if len(got) != 1 || got.Get("Accept") != "*/*" {
		t.Errorf("forwarded %v", got)
	}
	if len(hop) != 4 {
		t.Error("the incoming header was modified")
	}
}
