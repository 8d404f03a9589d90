package ipc

import (
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

type informer struct{ got []string }

func (i *informer) Informational(status int, h http.Header) {
	i.got = append(i.got, http.StatusText(status)+" "+h.Get("Link"))
}

// Informational frames before the head reach the request's Informer in
// order; one after the head, or with a status that is no informational
// one, is a protocol violation.
func TestInformational(t *testing.T) {
	for _, tc := range []struct {
		name   string
		worker func(sc *ServerConn, id uint64) error
		want   []string
		err    string // a protocol violation naming this
	}{
		{
			name: "before the head",
			worker: func(sc *ServerConn, id uint64) error {
				if err := sc.WriteInformational(id, 102, nil); err != nil {
					return err
				}
				if err := sc.WriteInformational(id, 103, http.Header{"Link": {"</a.css>; rel=preload"}}); err != nil {
					return err
				}
				return sc.WriteResponse(&Response{ID: id, Status: 200, Body: []byte("ok"), EOF: true})
			},
			want: []string{"Processing ", "Early Hints </a.css>; rel=preload"},
		},
		{
			name: "status 101",
			worker: func(sc *ServerConn, id uint64) error {
				return sc.WriteInformational(id, 101, nil)
			},
			err: "informational status 101",
		},
		{
			name: "status 200",
			worker: func(sc *ServerConn, id uint64) error {
				return sc.WriteInformational(id, 200, nil)
			},
			err: "informational status 200",
		},
		{
			name: "another exchange",
			worker: func(sc *ServerConn, id uint64) error {
				return sc.WriteInformational(id+1, 103, nil)
			},
			err: "informational response for exchange 2 during 1",
		},
		{
			name: "after the head",
			worker: func(sc *ServerConn, id uint64) error {
				if err := sc.WriteResponse(&Response{ID: id, Status: 200, Body: []byte("o")}); err != nil {
					return err
				}
				return sc.WriteInformational(id, 103, nil)
			},
			want: []string{},
			err:  "informational",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, worker := socketpair(t)
			sc := NewServerConn(worker, DefaultMaxFrame)
			go func() {
				f, err := sc.Next()
				if err == nil {
					err = tc.worker(sc, f.ID)
				}
				if err != nil {
					t.Error(err)
				}
			}()
			c := NewConn(host, DefaultMaxFrame)
			inf := &informer{}
			resp, body, err := c.RoundTrip(&Request{Method: "GET", URI: "/", Proto: "HTTP/1.1", EOF: true, Informer: inf}, nil)
			if err == nil {
				_, err = io.ReadAll(body)
			}
			var pe *ProtocolError
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("RoundTrip: %v", err)
			case tc.err != "" && (!errors.As(err, &pe) || !strings.Contains(pe.Error(), tc.err)):
				t.Fatalf("RoundTrip: %v, want a protocol violation about %q", err, tc.err)
			case tc.err == "" && resp.Status != 200:
				t.Errorf("status %d", resp.Status)
			}
			if tc.want != nil && !slices.Equal(inf.got, tc.want) {
				t.Errorf("informational responses %q, want %q", inf.got, tc.want)
			}
		})
	}
}
