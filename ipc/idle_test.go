package ipc

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

// TestCheckIdle: what a worker writes between exchanges is read before the
// next request goes out. Late credit for an exchange that is over is
// normal; anything else makes the request undeliverable (it may go to
// another worker) and the connection unusable.
func TestCheckIdle(t *testing.T) {
	fw := newFrameWriter()
	late := clone(fw.window(1, 4096))
	tests := []struct {
		name    string
		written []byte // by the worker after the first exchange
		ok      bool
	}{
		{"nothing", nil, true},
		{"late credit", late, true},
		{"late credit twice", append(clone(late), late...), true},
		{"a response nobody asked for", clone(fw.response(&Response{ID: 2, Status: 200, EOF: true})), false},
		{"a pong", clone(fw.pong(2, nil)), false},
		{"credit for an exchange never sent", clone(fw.window(9, 1)), false},
		{"late credit, then junk", append(clone(late), 0, 0, 0, 3, 9, 9, 9), false},
		{"half a frame", late[:5], false},
		{"a frame over the limit", []byte{0xff, 0xff, 0xff, 0xff, 4}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, sc := connPair(t)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			wait := goWorker(t, func() error {
				f, err := sc.Next()
				if err != nil {
					return err
				}
				if err := sc.WriteResponse(&Response{ID: f.ID, Status: 200, Header: http.Header{}, EOF: true}); err != nil {
					return err
				}
				if len(tt.written) > 0 {
					if _, err := sc.nc.Write(tt.written); err != nil {
						return err
					}
				}
				_, err = sc.nc.Write(clone(fw.window(1, 0))) // the marker: all was written
				return err
			})
			if _, _, err := c.RoundTrip(&Request{Method: "GET", URI: "/", EOF: true}, nil); err != nil {
				t.Fatal(err)
			}
			wait()
			// Everything the worker wrote has arrived once the marker can
			// be peeked.
			deadline := time.Now().Add(5 * time.Second)
			for !c.pending() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			err := c.CheckIdle()
			if tt.ok {
				if err != nil {
					t.Fatalf("CheckIdle: %v", err)
				}
				if c.pending() {
					t.Fatal("late credit left unread")
				}
				if err := c.CheckIdle(); err != nil {
					t.Fatalf("second CheckIdle: %v", err)
				}
				return
			}
			var pe *ProtocolError
			if !errors.Is(err, ErrNotDelivered) || !errors.As(err, &pe) {
				t.Fatalf("CheckIdle: %v, want a protocol error wrapping ErrNotDelivered", err)
			}
			if c.Err() == nil {
				t.Fatal("connection still usable after junk")
			}
		})
	}
}
