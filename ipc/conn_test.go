package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
)

// echo plays a well-behaved worker until the dispatcher closes the
// connection: it answers pings, and echoes every request body in its
// response, whole for a whole request, streamed (granting window credit for
// every chunk) for a streamed one.
func echo(sc *ServerConn) error {
	for {
		f, err := sc.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch f.Kind {
		case KindPing:
			if err := sc.WritePong(f.ID); err != nil {
				return err
			}
		case KindRequest:
			if err := echoExchange(sc, f.Request); err != nil {
				return err
			}
		case KindBody, KindEnd, KindAbort, KindCancel:
			// Late frames of an exchange that ended (as the sdk does).
		default:
			return fmt.Errorf("unexpected %s frame between exchanges", f.Kind)
		}
	}
}

func echoHeader(r *Request) http.Header {
	return http.Header{"X-Method": {r.Method}, "X-Uri": {r.URI}, "X-Request-Id": {r.RequestID}}
}

func echoExchange(sc *ServerConn, r *Request) error {
	id := r.ID
	if r.EOF {
		return sc.WriteResponse(&Response{ID: id, Status: 200, Header: echoHeader(r), Body: r.Body, EOF: true,
			Trailer: http.Header{"X-Echo": {"whole"}}})
	}
	if err := sc.WriteResponse(&Response{ID: id, Status: 200, Header: echoHeader(r), Body: r.Body}); err != nil {
		return err
	}
	if len(r.Body) > 0 {
		if err := sc.WriteWindow(id, len(r.Body)); err != nil {
			return err
		}
	}
	for {
		f, err := sc.Next()
		if err != nil {
			return fmt.Errorf("reading the body of exchange %d: %w", id, err)
		}
		if f.ID != id {
			return fmt.Errorf("%s frame for exchange %d during %d", f.Kind, f.ID, id)
		}
		switch f.Kind {
		case KindBody:
			if len(f.Data) > ChunkSize {
				return fmt.Errorf("body frame of %d bytes", len(f.Data))
			}
			if err := sc.WriteWindow(id, len(f.Data)); err != nil {
				return err
			}
			if err := sc.WriteBody(id, f.Data); err != nil {
				return err
			}
		case KindEnd:
			return sc.WriteEnd(id, f.Trailer)
		case KindAbort:
			return sc.WriteAbort(id, "request body: "+f.Reason)
		case KindCancel:
		default:
			return fmt.Errorf("unexpected %s frame in a request body", f.Kind)
		}
	}
}

// startEcho returns a Conn to an echo worker.
func startEcho(tb testing.TB) *Conn {
	tb.Helper()
	h, w := socketpair(tb)
	sc := NewServerConn(w, 0)
	goWorker(tb, func() error { return echo(sc) }, h)
	return NewConn(h, 0)
}

// readAllNext reads a body with Next, checking that chunks are never empty.
func readAllNext(tb testing.TB, b *Body) ([]byte, error) {
	tb.Helper()
	var out []byte
	for {
		p, err := b.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if len(p) == 0 {
			tb.Fatal("Next returned an empty chunk")
		}
		out = append(out, p...)
	}
}

func TestConnSingleFrame(t *testing.T) {
	big := patterned(ChunkSize)
	tests := []struct {
		name string
		req  Request
	}{
		{"GET", Request{Method: "GET", URI: "/", Proto: "HTTP/1.1", EOF: true}},
		{"headers", Request{Method: "GET", URI: "/h", Header: http.Header{"A": {"1", "2"}, "B": {}, "C": nil}, EOF: true}},
		{"empty header", Request{Method: "HEAD", URI: "/e", Header: http.Header{}, Body: []byte{}, EOF: true}},
		{"small body", Request{Method: "POST", URI: "/p", ContentLength: 3, Body: []byte("abc"), EOF: true}},
		{"64 KiB body", Request{Method: "PUT", URI: "/big", ContentLength: int64(len(big)), Body: big, EOF: true}},
		{"unknown length", Request{Method: "POST", URI: "/u", ContentLength: -1, Body: []byte("x"), EOF: true}},
	}
	c := startEcho(t)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			req.RequestID = tt.name
			resp, body, err := c.RoundTrip(&req, nil)
			if err != nil {
				t.Fatal(err)
			}
			if req.ID != uint64(i+1) {
				t.Errorf("request id %d, want %d", req.ID, i+1)
			}
			if resp.ID != req.ID || resp.Status != 200 || !resp.EOF {
				t.Errorf("response head %+v", resp)
			}
			if want := echoHeader(&req); !reflect.DeepEqual(resp.Header, want) {
				t.Errorf("header %v, want %v", resp.Header, want)
			}
			got, err := readAllNext(t, body)
			if err != nil {
				t.Fatal(err)
			}
			if !c.Idle() {
				t.Error("a whole response read to its end left the connection busy")
			}
			if !bytes.Equal(got, tt.req.Body) {
				t.Errorf("body of %d bytes, want %d", len(got), len(tt.req.Body))
			}
			if got := c.Trailer(); !reflect.DeepEqual(got, http.Header{"X-Echo": {"whole"}}) {
				t.Errorf("trailer %v", got)
			}
			if n, err := body.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Errorf("Read after the end: %d, %v", n, err)
			}
			if c.Err() != nil {
				t.Errorf("Err() = %v", c.Err())
			}
		})
	}
}

func TestConnStreamedEcho(t *testing.T) {
	const MiB = 1 << 20
	tests := []struct {
		name    string
		size    int
		inline  int
		reader  func(io.Reader) io.Reader
		useNext bool
		trailer http.Header
	}{
		{name: "empty", size: 0},
		{name: "one byte inline", size: 1, inline: 1},
		{name: "one byte streamed", size: 1},
		{name: "window-1", size: Window - 1, inline: 1000},
		{name: "window", size: Window, inline: ChunkSize},
		{name: "window+1", size: Window + 1},
		{name: "1 MiB", size: MiB, inline: ChunkSize, trailer: http.Header{"X-Sum": {"abc"}}},
		{name: "1 MiB with Next", size: MiB + 123, inline: 7, useNext: true},
		{name: "1 MiB half reads", size: MiB, reader: iotest.HalfReader, trailer: http.Header{"A": {"1", "2"}}},
		{name: "small reads", size: 3000, reader: iotest.OneByteReader},
		{name: "data with EOF", size: 200 << 10, reader: iotest.DataErrReader},
	}
	c := startEcho(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := patterned(tt.size)
			var rd io.Reader = bytes.NewReader(data[tt.inline:])
			if tt.reader != nil {
				rd = tt.reader(rd)
			}
			req := &Request{Method: "POST", URI: "/stream", ContentLength: -1, Body: data[:tt.inline], Trailer: tt.trailer}
			resp, body, err := c.RoundTrip(req, rd)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != 200 || resp.EOF {
				t.Fatalf("head %+v", resp)
			}
			var got []byte
			if tt.useNext {
				got, err = readAllNext(t, body)
			} else {
				got, err = io.ReadAll(body)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("echoed %d bytes differ from the %d sent", len(got), len(data))
			}
			want := tt.trailer
			if len(want) == 0 {
				want = nil
			}
			if !reflect.DeepEqual(c.Trailer(), want) {
				t.Errorf("trailer %v, want %v", c.Trailer(), want)
			}
			if !c.Idle() || c.pump != nil {
				t.Errorf("Idle() = %v, pump %v after the end", c.Idle(), c.pump)
			}
		})
	}
}

// TestConnWindowLimit checks that the dispatcher never sends more request
// body than the worker has granted: the worker grants nothing, answers once
// it holds a full window, and must see no body frame after that.
func TestConnWindowLimit(t *testing.T) {
	for _, inline := range []int{0, 1, ChunkSize} {
		t.Run(fmt.Sprint("inline ", inline), func(t *testing.T) {
			h, w := socketpair(t)
			sc := NewServerConn(w, 0)
			wait := goWorker(t, func() error {
				f, err := sc.Next()
				if err != nil {
					return err
				}
				id, got := f.ID, len(f.Request.Body)
				for got < Window {
					f, err := sc.Next()
					if err != nil {
						return fmt.Errorf("after %d body bytes: %w", got, err)
					}
					if f.Kind != KindBody || f.ID != id {
						return fmt.Errorf("unexpected %s frame for %d", f.Kind, f.ID)
					}
					got += len(f.Data)
				}
				if got != Window {
					return fmt.Errorf("received %d body bytes without credit, window is %d", got, Window)
				}
				if err := sc.WriteResponse(&Response{ID: id, Status: 413, EOF: true}); err != nil {
					return err
				}
				// Nothing more may come but the end of the stream.
				if f, err := sc.Next(); err != io.EOF {
					return fmt.Errorf("after the response: %+v, %v", f, err)
				}
				return nil
			})
			c := NewConn(h, 0)
			data := patterned(4 * Window)
			resp, _, err := c.RoundTrip(&Request{Method: "PUT", ContentLength: -1, Body: data[:inline]}, bytes.NewReader(data[inline:]))
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != 413 || !c.Idle() {
				t.Errorf("status %d, idle %v", resp.Status, c.Idle())
			}
			h.Close()
			wait()
		})
	}
}

func TestConnRoundTripDuringExchange(t *testing.T) {
	c := startEcho(t)
	resp, body, err := c.RoundTrip(&Request{Method: "POST", Body: []byte("a")}, bytes.NewReader([]byte("b")))
	if err != nil {
		t.Fatal(err)
	}
	if resp.EOF || c.Idle() {
		t.Fatal("expected a streamed response")
	}
	if _, _, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil); err == nil {
		t.Fatal("a second RoundTrip during an exchange succeeded")
	}
	if err := c.Ping(); err == nil {
		t.Fatal("Ping during an exchange succeeded")
	}
	got, err := io.ReadAll(body)
	if err != nil || string(got) != "ab" {
		t.Fatalf("body %q, %v", got, err)
	}
	if c.Err() != nil {
		t.Fatalf("misuse broke the connection: %v", c.Err())
	}
}

// script plays a worker that answers the first request with fn.
func script(tb testing.TB, fn func(sc *ServerConn, nc net.Conn, r *Request) error) (*Conn, net.Conn) {
	tb.Helper()
	h, w := socketpair(tb)
	sc := NewServerConn(w, 0)
	goWorker(tb, func() error {
		f, err := sc.Next()
		if err != nil {
			return err
		}
		if f.Kind != KindRequest {
			return fmt.Errorf("got a %s frame", f.Kind)
		}
		if err := fn(sc, w, f.Request); err != nil {
			return err
		}
		return echo(sc)
	}, h)
	return NewConn(h, 0), w
}

func TestConnAbort(t *testing.T) {
	tests := []struct {
		name     string
		streamed bool // the request body is streamed
		worker   func(sc *ServerConn, r *Request) error
		headOK   bool // RoundTrip succeeds, the abort comes in the body
		wantBody string
	}{
		{
			name: "before the head",
			worker: func(sc *ServerConn, r *Request) error {
				return sc.WriteAbort(r.ID, "handler exploded")
			},
		},
		{
			name: "after the head",
			worker: func(sc *ServerConn, r *Request) error {
				if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200, Body: []byte("par")}); err != nil {
					return err
				}
				if err := sc.WriteBody(r.ID, []byte("tial")); err != nil {
					return err
				}
				return sc.WriteAbort(r.ID, "handler exploded")
			},
			headOK:   true,
			wantBody: "partial",
		},
		{
			name:     "after the head, request streaming",
			streamed: true,
			worker: func(sc *ServerConn, r *Request) error {
				if err := sc.WriteWindow(r.ID, 10); err != nil {
					return err
				}
				if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200}); err != nil {
					return err
				}
				// The dispatcher stops sending the request body when it
				// reads the abort: echo ignores what it sent before.
				return sc.WriteAbort(r.ID, "handler exploded")
			},
			headOK: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := script(t, func(sc *ServerConn, _ net.Conn, r *Request) error { return tt.worker(sc, r) })
			req := &Request{Method: "GET", EOF: true}
			var body io.Reader
			if tt.streamed {
				// Less than a window, so that the pump finishes on its own.
				req = &Request{Method: "POST", ContentLength: -1}
				body = bytes.NewReader(patterned(Window / 2))
			}
			_, b, err := c.RoundTrip(req, body)
			if tt.headOK {
				if err != nil {
					t.Fatal(err)
				}
				var got []byte
				got, err = io.ReadAll(b)
				if string(got) != tt.wantBody {
					t.Errorf("body before the abort %q, want %q", got, tt.wantBody)
				}
			}
			var ae *AbortError
			if !errors.As(err, &ae) || ae.Reason != "handler exploded" {
				t.Fatalf("got %v, want an AbortError", err)
			}
			if c.Err() != nil || !c.Idle() {
				t.Fatalf("after an abort: Err() = %v, Idle() = %v", c.Err(), c.Idle())
			}
			// The connection carries the next exchange.
			resp, b, err := c.RoundTrip(&Request{Method: "GET", Body: []byte("next"), EOF: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(b); err != nil || string(got) != "next" || resp.Status != 200 {
				t.Fatalf("next exchange: %d %q %v", resp.Status, got, err)
			}
		})
	}
}

// TestConnRequestBodyError checks that a failing client body reaches the
// worker as an abort frame, and that the exchange still ends cleanly.
func TestConnRequestBodyError(t *testing.T) {
	c := startEcho(t)
	boom := errors.New("client went away")
	body := io.MultiReader(bytes.NewReader([]byte("some")), iotest.ErrReader(boom))
	_, b, err := c.RoundTrip(&Request{Method: "POST", ContentLength: -1}, body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	var ae *AbortError
	if !errors.As(err, &ae) || ae.Reason != "request body: client body: client went away" {
		t.Fatalf("got %v, want the worker's abort", err)
	}
	if string(got) != "some" {
		t.Errorf("echoed %q before the abort", got)
	}
	if !c.Idle() {
		t.Fatal("connection not idle")
	}
	if err := c.Ping(); err != nil {
		t.Fatal(err)
	}
}

func TestConnPing(t *testing.T) {
	c := startEcho(t)
	for i := range 3 {
		if err := c.Ping(); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	// Pings use exchange ids too: the next request gets a fresh one.
	req := &Request{Method: "GET", EOF: true}
	if _, _, err := c.RoundTrip(req, nil); err != nil {
		t.Fatal(err)
	}
	if req.ID != 4 {
		t.Errorf("request id %d after 3 pings", req.ID)
	}
}

func TestConnPingProtocolErrors(t *testing.T) {
	tests := []struct {
		name  string
		reply func(sc *ServerConn, id uint64) error
	}{
		{"wrong id", func(sc *ServerConn, id uint64) error { return sc.WritePong(id + 1) }},
		{"not a pong", func(sc *ServerConn, id uint64) error { return sc.WriteWindow(id, 1) }},
		{"malformed pong", func(sc *ServerConn, id uint64) error {
			_, err := sc.nc.Write(rawFrame(KindPong, []byte{0x91, 0xa1, 'x'}))
			return err
		}},
		{"pong with features not an array", func(sc *ServerConn, id uint64) error {
			_, err := sc.nc.Write(rawFrame(KindPong, []byte{0x92, byte(id), 0x05}))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, w := socketpair(t)
			sc := NewServerConn(w, 0)
			goWorker(t, func() error {
				f, err := sc.Next()
				if err != nil {
					return err
				}
				return tt.reply(sc, f.ID)
			}, h)
			c := NewConn(h, 0)
			err := c.Ping()
			wantProtocolError(t, err)
			if c.Err() == nil || c.Idle() {
				t.Errorf("Err() = %v, Idle() = %v after a protocol error", c.Err(), c.Idle())
			}
			if _, _, err := c.RoundTrip(&Request{EOF: true}, nil); !errors.Is(err, ErrBroken) {
				t.Errorf("RoundTrip on a broken connection: %v", err)
			}
			if err := c.Ping(); err == nil {
				t.Error("Ping on a broken connection succeeded")
			}
		})
	}
}

func TestConnCancel(t *testing.T) {
	t.Run("waiting for the head", func(t *testing.T) {
		h, w := socketpair(t)
		sc := NewServerConn(w, 0)
		got := make(chan uint64, 1)
		goWorker(t, func() error {
			f, err := sc.Next()
			if err != nil {
				return err
			}
			got <- f.ID
			cf, err := sc.Next()
			if err != nil {
				return err
			}
			if cf.Kind != KindCancel || cf.ID != f.ID {
				return fmt.Errorf("got %s frame for %d, want cancel for %d", cf.Kind, cf.ID, f.ID)
			}
			if err := sc.WriteResponse(&Response{ID: f.ID, Status: 503, EOF: true}); err != nil {
				return err
			}
			return echo(sc)
		}, h)
		c := NewConn(h, 0)
		type result struct {
			resp *Response
			err  error
		}
		res := make(chan result, 1)
		go func() {
			resp, _, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
			res <- result{resp, err}
		}()
		id := recvOrFail(t, got, "the request")
		if err := c.Cancel(); err != nil {
			t.Fatal(err)
		}
		r := recvOrFail(t, res, "RoundTrip")
		if r.err != nil || r.resp.Status != 503 || r.resp.ID != id {
			t.Fatalf("after cancel: %+v, %v", r.resp, r.err)
		}
		if err := c.Drain(); err != nil || !c.Idle() {
			t.Fatalf("Drain: %v, idle %v", err, c.Idle())
		}
		if err := c.Ping(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("in the body", func(t *testing.T) {
		c, _ := script(t, func(sc *ServerConn, _ net.Conn, r *Request) error {
			if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200, Body: []byte("first")}); err != nil {
				return err
			}
			for i := 0; ; i++ {
				if err := sc.WriteBody(r.ID, []byte("more")); err != nil {
					return err
				}
				if i == 2 {
					break
				}
			}
			f, err := sc.Next()
			if err != nil {
				return err
			}
			if f.Kind != KindCancel || f.ID != r.ID {
				return fmt.Errorf("got %s frame for %d, want cancel for %d", f.Kind, f.ID, r.ID)
			}
			return sc.WriteEnd(r.ID, http.Header{"X-Cancelled": {"yes"}})
		})
		_, b, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := b.Next(); err != nil || string(p) != "first" {
			t.Fatalf("first chunk %q, %v", p, err)
		}
		if err := c.Cancel(); err != nil {
			t.Fatal(err)
		}
		if err := c.Drain(); err != nil {
			t.Fatal(err)
		}
		if !c.Idle() || c.Trailer().Get("X-Cancelled") != "yes" {
			t.Fatalf("after Drain: idle %v, trailer %v", c.Idle(), c.Trailer())
		}
		if p, err := b.Next(); err != io.EOF {
			t.Fatalf("Next after Drain: %q, %v", p, err)
		}
		if err := c.Ping(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConnDrain(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		c := startEcho(t)
		if err := c.Drain(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unread body", func(t *testing.T) {
		c, _ := script(t, func(sc *ServerConn, _ net.Conn, r *Request) error {
			if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200, Body: []byte("a")}); err != nil {
				return err
			}
			for range 5 {
				if err := sc.WriteBody(r.ID, patterned(ChunkSize)); err != nil {
					return err
				}
			}
			return sc.WriteEnd(r.ID, http.Header{"T": {"1"}})
		})
		_, b, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Drain(); err != nil {
			t.Fatal(err)
		}
		if !c.Idle() || c.Trailer().Get("T") != "1" {
			t.Fatalf("idle %v, trailer %v", c.Idle(), c.Trailer())
		}
		if n, err := b.Read(make([]byte, 10)); n != 0 || err != io.EOF {
			t.Fatalf("Read after Drain: %d, %v", n, err)
		}
		resp, b, err := c.RoundTrip(&Request{Method: "GET", Body: []byte("z"), EOF: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := io.ReadAll(b); string(got) != "z" || resp.Status != 200 {
			t.Fatalf("next exchange %d %q", resp.Status, got)
		}
	})
	t.Run("streamed request", func(t *testing.T) {
		c := startEcho(t)
		data := patterned(3 * Window)
		_, _, err := c.RoundTrip(&Request{Method: "POST", ContentLength: -1}, bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Drain(); err != nil {
			t.Fatal(err)
		}
		if !c.Idle() || c.pump != nil {
			t.Fatalf("idle %v, pump %v", c.Idle(), c.pump)
		}
		if err := c.Ping(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConnPeerClosed(t *testing.T) {
	tests := []struct {
		name     string
		worker   func(sc *ServerConn, nc net.Conn, r *Request) error
		headOK   bool
		wantBody string
		also     error // another error the result must match
	}{
		{
			name: "before the head",
			worker: func(*ServerConn, net.Conn, *Request) error {
				return nil
			},
			also: io.EOF,
		},
		{
			name: "inside the head",
			worker: func(_ *ServerConn, nc net.Conn, r *Request) error {
				f := clone(newFrameWriter().response(&Response{ID: r.ID, Status: 200, Body: []byte("abc")}))
				_, err := nc.Write(f[:len(f)-2])
				return err
			},
			also: io.ErrUnexpectedEOF,
		},
		{
			name: "in the body",
			worker: func(sc *ServerConn, _ net.Conn, r *Request) error {
				if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200, Body: []byte("a")}); err != nil {
					return err
				}
				return sc.WriteBody(r.ID, []byte("b"))
			},
			headOK:   true,
			wantBody: "ab",
			also:     io.EOF,
		},
		{
			name: "inside a body frame",
			worker: func(sc *ServerConn, nc net.Conn, r *Request) error {
				if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200, Body: []byte("a")}); err != nil {
					return err
				}
				_, err := nc.Write(clone(newFrameWriter().body(r.ID, []byte("bcd")))[:7])
				return err
			},
			headOK:   true,
			wantBody: "a",
			also:     io.ErrUnexpectedEOF,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, w := socketpair(t)
			sc := NewServerConn(w, 0)
			goWorker(t, func() error {
				f, err := sc.Next()
				if err != nil {
					return err
				}
				if err := tt.worker(sc, w, f.Request); err != nil {
					return err
				}
				return w.Close()
			}, h)
			c := NewConn(h, 0)
			_, b, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
			if tt.headOK {
				if err != nil {
					t.Fatal(err)
				}
				var got []byte
				got, err = io.ReadAll(b)
				if string(got) != tt.wantBody {
					t.Errorf("body %q, want %q", got, tt.wantBody)
				}
			}
			if !errors.Is(err, ErrPeerClosed) || !errors.Is(err, tt.also) {
				t.Fatalf("got %v, want %v wrapping %v", err, ErrPeerClosed, tt.also)
			}
			if errors.Is(err, ErrNotDelivered) {
				t.Errorf("the worker read the request, yet %v", err)
			}
			if c.Err() == nil || c.Idle() {
				t.Fatalf("Err() = %v, Idle() = %v", c.Err(), c.Idle())
			}
			if _, _, err := c.RoundTrip(&Request{EOF: true}, nil); !errors.Is(err, ErrBroken) || !errors.Is(err, ErrPeerClosed) {
				t.Errorf("next RoundTrip: %v", err)
			}
			if err := c.Drain(); !errors.Is(err, ErrPeerClosed) {
				t.Errorf("Drain: %v", err)
			}
		})
	}
}

// TestConnPeerClosedStreaming closes the worker end while the request body
// is still streaming: the failure is not ErrNotDelivered (the body reader
// was consumed), and the pump goroutine must not outlive the exchange.
func TestConnPeerClosedStreaming(t *testing.T) {
	tests := []struct {
		name string
		// received is how many request body bytes the worker reads before
		// closing (the window is exhausted at Window).
		received int
	}{
		{"request frame only", 0},
		{"window exhausted", Window},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, w := socketpair(t)
			sc := NewServerConn(w, 0)
			goWorker(t, func() error {
				f, err := sc.Next()
				if err != nil {
					return err
				}
				for got := len(f.Request.Body); got < tt.received; {
					f, err := sc.Next()
					if err != nil {
						return err
					}
					got += len(f.Data)
				}
				return w.Close()
			}, h)
			c := NewConn(h, 0)
			data := patterned(4 * Window)
			_, _, err := c.RoundTrip(&Request{Method: "POST", ContentLength: -1, Body: data[:100]}, bytes.NewReader(data[100:]))
			if !errors.Is(err, ErrPeerClosed) || errors.Is(err, ErrNotDelivered) {
				t.Fatalf("got %v, want %v and not %v", err, ErrPeerClosed, ErrNotDelivered)
			}
			if c.Err() == nil {
				t.Fatal("Err() = nil")
			}
			if p := c.pump; p != nil {
				select {
				case <-p.done:
				case <-time.After(testTimeout):
					t.Fatal("the body pump outlived the broken connection")
				}
			}
		})
	}
}

// TestConnClosePump checks that Close releases a body pump waiting for
// credit after a deadline left the exchange unfinished (the dispatcher gives
// up on a timed out worker by closing its connection).
func TestConnClosePump(t *testing.T) {
	h, w := socketpair(t)
	sc := NewServerConn(w, 0)
	exhausted := make(chan struct{})
	goWorker(t, func() error {
		f, err := sc.Next()
		if err != nil {
			return err
		}
		for got := len(f.Request.Body); got < Window; {
			f, err := sc.Next()
			if err != nil {
				return err
			}
			got += len(f.Data)
		}
		close(exhausted)
		_, _ = sc.Next() // until the dispatcher closes
		return nil
	}, h)
	c := NewConn(h, 0)
	res := make(chan error, 1)
	go func() {
		_, _, err := c.RoundTrip(&Request{Method: "POST", ContentLength: -1}, bytes.NewReader(patterned(2*Window)))
		res <- err
	}()
	recvOrFail(t, exhausted, "the window to be used up")
	if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	if err := recvOrFail(t, res, "RoundTrip"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	p := c.pump
	if p == nil {
		t.Fatal("no pump during the exchange")
	}
	c.Close()
	select {
	case <-p.done:
	case <-time.After(testTimeout):
		t.Fatal("the body pump outlived Close")
	}
}

func TestConnNotDelivered(t *testing.T) {
	t.Run("peer closed before the write", func(t *testing.T) {
		h, w := socketpair(t)
		w.Close()
		c := NewConn(h, 0)
		_, _, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
		if !errors.Is(err, ErrNotDelivered) || !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("got %v, want %v wrapping EPIPE", err, ErrNotDelivered)
		}
		if c.Err() == nil {
			t.Error("Err() = nil")
		}
	})
	t.Run("peer closed before the write, streamed", func(t *testing.T) {
		h, w := socketpair(t)
		w.Close()
		c := NewConn(h, 0)
		_, _, err := c.RoundTrip(&Request{Method: "POST"}, bytes.NewReader([]byte("body")))
		if !errors.Is(err, ErrNotDelivered) {
			t.Fatalf("got %v, want %v", err, ErrNotDelivered)
		}
	})
	for _, streamed := range []bool{false, true} {
		t.Run(fmt.Sprintf("peer closed with the request unread, streamed %v", streamed), func(t *testing.T) {
			hfd, wfd := rawSocketpair(t)
			h := fdConn(t, hfd, "host")
			// Once the request is queued, close without reading it:
			// AF_UNIX resets the connection.
			closed := closeWhenReadable(wfd)
			c := NewConn(h, 0)
			req := &Request{Method: "GET", EOF: !streamed}
			var body io.Reader
			if streamed {
				body = bytes.NewReader(patterned(Window))
			}
			_, _, err := c.RoundTrip(req, body)
			if err := recvOrFail(t, closed, "the worker to close"); err != nil {
				t.Fatal(err)
			}
			if !streamed {
				if !errors.Is(err, ErrNotDelivered) || !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("got %v, want %v wrapping ECONNRESET", err, ErrNotDelivered)
				}
			} else if !errors.Is(err, ErrPeerClosed) || errors.Is(err, ErrNotDelivered) {
				// The pump consumed the body: the request cannot be retried.
				t.Fatalf("got %v, want %v and not %v", err, ErrPeerClosed, ErrNotDelivered)
			}
			if c.Err() == nil {
				t.Error("Err() = nil")
			}
		})
	}
}

// notifyConn reports every successful read of the wrapped connection.
type notifyConn struct {
	net.Conn
	reads chan int
}

func (n *notifyConn) Read(p []byte) (int, error) {
	k, err := n.Conn.Read(p)
	if k > 0 {
		n.reads <- k
	}
	return k, err
}

func TestConnReadDeadline(t *testing.T) {
	t.Run("between frames", func(t *testing.T) {
		h, w := socketpair(t)
		sc := NewServerConn(w, 0)
		got := make(chan uint64, 1)
		goWorker(t, func() error {
			f, err := sc.Next()
			if err != nil {
				return err
			}
			got <- f.ID
			cf, err := sc.Next()
			if err != nil {
				return err
			}
			if cf.Kind != KindCancel || cf.ID != f.ID {
				return fmt.Errorf("got %s frame for %d, want cancel for %d", cf.Kind, cf.ID, f.ID)
			}
			if err := sc.WriteResponse(&Response{ID: f.ID, Status: 200, Body: []byte("late")}); err != nil {
				return err
			}
			if err := sc.WriteBody(f.ID, []byte("r")); err != nil {
				return err
			}
			if err := sc.WriteEnd(f.ID, nil); err != nil {
				return err
			}
			return echo(sc)
		}, h)
		c := NewConn(h, 0)
		res := make(chan error, 1)
		go func() {
			_, _, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
			res <- err
		}()
		recvOrFail(t, got, "the request")
		if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		err := recvOrFail(t, res, "RoundTrip")
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v, want %v", err, os.ErrDeadlineExceeded)
		}
		if c.Err() != nil {
			t.Fatalf("a deadline between frames broke the connection: %v", c.Err())
		}
		if c.Idle() {
			t.Fatal("the exchange is not over: Idle() must be false")
		}
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Cancel(); err != nil {
			t.Fatal(err)
		}
		if err := c.Drain(); err != nil {
			t.Fatal(err)
		}
		if !c.Idle() {
			t.Fatal("not idle after Drain")
		}
		resp, b, err := c.RoundTrip(&Request{Method: "GET", Body: []byte("fresh"), EOF: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := io.ReadAll(b); string(got) != "fresh" || resp.Status != 200 {
			t.Fatalf("next exchange %d %q", resp.Status, got)
		}
	})
	t.Run("between body frames", func(t *testing.T) {
		release := make(chan struct{})
		c, _ := script(t, func(sc *ServerConn, _ net.Conn, r *Request) error {
			if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200, Body: []byte("a")}); err != nil {
				return err
			}
			<-release
			return sc.WriteEnd(r.ID, nil)
		})
		_, b, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := b.Next(); err != nil || string(p) != "a" {
			t.Fatalf("%q, %v", p, err)
		}
		if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Next(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
		if c.Err() != nil {
			t.Fatalf("Err() = %v", c.Err())
		}
		close(release)
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Drain(); err != nil || !c.Idle() {
			t.Fatalf("Drain: %v, idle %v", err, c.Idle())
		}
	})
	t.Run("inside a frame", func(t *testing.T) {
		// The deadline strikes with half a frame read (a client that went
		// away, or a body over the limit, interrupting the exchange): the
		// connection stays usable and the frame is resumed.
		h, w := socketpair(t)
		nc := &notifyConn{Conn: h, reads: make(chan int, 16)}
		release := make(chan struct{})
		var once sync.Once
		rest := func() { once.Do(func() { close(release) }) }
		defer rest()
		goWorker(t, func() error {
			sc := NewServerConn(w, 0)
			f, err := sc.Next()
			if err != nil {
				return err
			}
			frame := clone(newFrameWriter().response(&Response{ID: f.ID, Status: 200, Body: []byte("whole"), EOF: true}))
			if _, err := w.Write(frame[:6]); err != nil {
				return err
			}
			<-release
			_, err = w.Write(frame[6:])
			return err
		}, h)
		c := NewConn(nc, 0)
		res := make(chan error, 1)
		go func() {
			_, _, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
			res <- err
		}()
		if n := recvOrFail(t, nc.reads, "the partial frame"); n != 6 {
			t.Fatalf("read %d bytes, want 6", n)
		}
		if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		err := recvOrFail(t, res, "RoundTrip")
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
		if c.Err() != nil {
			t.Fatalf("a deadline inside a frame broke the connection: %v", c.Err())
		}
		if !c.fr.inFrame() {
			t.Fatal("the frame in progress was dropped")
		}
		rest()
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Drain(); err != nil || !c.Idle() {
			t.Fatalf("Drain: %v, idle %v", err, c.Idle())
		}
	})
	t.Run("inside a frame, then the worker dies", func(t *testing.T) {
		h, w := socketpair(t)
		nc := &notifyConn{Conn: h, reads: make(chan int, 16)}
		c := NewConn(nc, 0)
		sc := NewServerConn(w, 0)
		res := make(chan error, 1)
		go func() {
			_, _, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
			res <- err
		}()
		f, err := sc.Next()
		if err != nil {
			t.Fatal(err)
		}
		frame := clone(newFrameWriter().response(&Response{ID: f.ID, Status: 200, EOF: true}))
		if _, err := w.Write(frame[:3]); err != nil {
			t.Fatal(err)
		}
		if n := recvOrFail(t, nc.reads, "the partial header"); n != 3 {
			t.Fatalf("read %d bytes, want 3", n)
		}
		if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
			t.Fatal(err)
		}
		if err := recvOrFail(t, res, "RoundTrip"); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
		// Queued requests cannot be retried: the worker wrote part of an
		// answer.
		if !c.wroteMore() {
			t.Error("wroteMore = false with a frame in progress")
		}
		w.Close()
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Drain(); !errors.Is(err, ErrPeerClosed) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Drain: %v, want %v with %v", err, ErrPeerClosed, io.ErrUnexpectedEOF)
		}
	})
}

func TestConnProtocolErrors(t *testing.T) {
	fw := newFrameWriter()
	tests := []struct {
		name   string
		frames func(id uint64) [][]byte
	}{
		{"response for another exchange", func(id uint64) [][]byte {
			return [][]byte{clone(fw.response(&Response{ID: id + 1, Status: 200, EOF: true}))}
		}},
		{"body before the head", func(id uint64) [][]byte { return [][]byte{clone(fw.body(id, []byte("x")))} }},
		{"end before the head", func(id uint64) [][]byte { return [][]byte{clone(fw.end(id, nil))} }},
		{"pong before the head", func(id uint64) [][]byte { return [][]byte{clone(fw.idFrame(KindPong, id))} }},
		{"request from the worker", func(id uint64) [][]byte { return [][]byte{clone(fw.request(&Request{ID: id, EOF: true}, false))} }},
		{"unknown kind", func(id uint64) [][]byte { return [][]byte{rawFrame(77, []byte{0x91, 0x01})} }},
		{"bad status", func(id uint64) [][]byte {
			return [][]byte{clone(fw.response(&Response{ID: id, Status: 42, EOF: true}))}
		}},
		{"abort for another exchange", func(id uint64) [][]byte { return [][]byte{clone(fw.abort(id+1, "x"))} }},
		{"malformed window", func(id uint64) [][]byte { return [][]byte{clone(fw.window(id, WideWindow+1))} }},
		{"oversized frame", func(id uint64) [][]byte { return [][]byte{{0x7f, 0xff, 0xff, 0xff, byte(KindResponse)}} }},
		{"empty frame", func(id uint64) [][]byte { return [][]byte{{0, 0, 0, 0}} }},
		{"body for another exchange", func(id uint64) [][]byte {
			return [][]byte{clone(fw.response(&Response{ID: id, Status: 200})), clone(fw.body(id+1, []byte("x")))}
		}},
		{"end for another exchange", func(id uint64) [][]byte {
			return [][]byte{clone(fw.response(&Response{ID: id, Status: 200})), clone(fw.end(id+1, nil))}
		}},
		{"second head", func(id uint64) [][]byte {
			return [][]byte{clone(fw.response(&Response{ID: id, Status: 200})), clone(fw.response(&Response{ID: id, Status: 200}))}
		}},
		{"malformed body", func(id uint64) [][]byte {
			return [][]byte{clone(fw.response(&Response{ID: id, Status: 200})), rawFrame(KindBody, []byte{0x92, 0x01, 0xc6, 0xff, 0xff, 0xff, 0xff})}
		}},
		{"malformed abort in the body", func(id uint64) [][]byte {
			return [][]byte{clone(fw.response(&Response{ID: id, Status: 200})), rawFrame(KindAbort, []byte{0x92, 0x01})}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, w := socketpair(t)
			sc := NewServerConn(w, 0)
			goWorker(t, func() error {
				f, err := sc.Next()
				if err != nil {
					return err
				}
				for _, fr := range tt.frames(f.ID) {
					if _, err := w.Write(fr); err != nil {
						return err
					}
				}
				// Read until the dispatcher gives up on the connection.
				for {
					if _, err := sc.Next(); err != nil {
						return nil
					}
				}
			}, h)
			c := NewConn(h, 0)
			_, b, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil)
			if err == nil {
				_, err = io.ReadAll(b)
			}
			wantProtocolError(t, err)
			if c.Err() == nil || c.Idle() {
				t.Fatalf("Err() = %v, Idle() = %v", c.Err(), c.Idle())
			}
			if _, _, err := c.RoundTrip(&Request{EOF: true}, nil); !errors.Is(err, ErrBroken) {
				t.Errorf("next RoundTrip: %v", err)
			}
		})
	}
}

// TestConnLateWindow checks that credit for a finished exchange, arriving
// before the next response head, is ignored.
func TestConnLateWindow(t *testing.T) {
	c, _ := script(t, func(sc *ServerConn, _ net.Conn, r *Request) error {
		if err := sc.WriteResponse(&Response{ID: r.ID, Status: 200, EOF: true}); err != nil {
			return err
		}
		f, err := sc.Next()
		if err != nil {
			return err
		}
		if err := sc.WriteWindow(r.ID, 100); err != nil {
			return err
		}
		return echoExchange(sc, f.Request)
	})
	if _, _, err := c.RoundTrip(&Request{Method: "GET", EOF: true}, nil); err != nil {
		t.Fatal(err)
	}
	resp, b, err := c.RoundTrip(&Request{Method: "GET", Body: []byte("2"), EOF: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(b); string(got) != "2" || resp.Status != 200 {
		t.Fatalf("%d %q", resp.Status, got)
	}
}

// TestConnSmallMaxFrame checks that the host's frame limit applies to what
// the worker sends.
func TestConnSmallMaxFrame(t *testing.T) {
	h, w := socketpair(t)
	sc := NewServerConn(w, 0)
	goWorker(t, func() error {
		f, err := sc.Next()
		if err != nil {
			return err
		}
		if err := sc.WriteResponse(&Response{ID: f.ID, Status: 200, Body: make([]byte, MinMaxFrame), EOF: true}); err != nil {
			return err
		}
		// The dispatcher closes with the response unread: EOF or ECONNRESET.
		if _, err := sc.Next(); err == nil {
			return errors.New("a frame after the response")
		}
		return nil
	}, h)
	c := NewConn(h, MinMaxFrame)
	_, _, err := c.RoundTrip(&Request{EOF: true}, nil)
	wantProtocolError(t, err)
}

func TestServerConnNext(t *testing.T) {
	fw := newFrameWriter()
	tests := []struct {
		name  string
		frame []byte
		want  Frame
		proto bool
	}{
		{name: "request", frame: clone(fw.request(&Request{ID: 3, Method: "GET", Body: []byte("b"), EOF: true}, false)),
			want: Frame{Kind: KindRequest, ID: 3, Request: &Request{ID: 3, Method: "GET", Body: []byte("b"), EOF: true}}},
		{name: "body", frame: clone(fw.body(3, []byte("d"))), want: Frame{Kind: KindBody, ID: 3, Data: []byte("d")}},
		{name: "end", frame: clone(fw.end(3, http.Header{"T": {"v"}})), want: Frame{Kind: KindEnd, ID: 3, Trailer: http.Header{"T": {"v"}}}},
		{name: "cancel", frame: clone(fw.idFrame(KindCancel, 3)), want: Frame{Kind: KindCancel, ID: 3}},
		{name: "ping", frame: clone(fw.idFrame(KindPing, 4)), want: Frame{Kind: KindPing, ID: 4}},
		{name: "abort", frame: clone(fw.abort(3, "why")), want: Frame{Kind: KindAbort, ID: 3, Reason: "why"}},
		{name: "response", frame: clone(fw.response(&Response{ID: 1, Status: 200})), proto: true},
		{name: "pong", frame: clone(fw.idFrame(KindPong, 1)), proto: true},
		{name: "window", frame: clone(fw.window(1, 1)), proto: true},
		{name: "kind 0", frame: rawFrame(0, []byte{0x91, 0x01}), proto: true},
		{name: "malformed request", frame: rawFrame(KindRequest, []byte{0x91, 0x01}), proto: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, w := socketpair(t)
			sc := NewServerConn(w, 0)
			if _, err := h.Write(tt.frame); err != nil {
				t.Fatal(err)
			}
			h.Close()
			f, err := sc.Next()
			if tt.proto {
				pe := wantProtocolError(t, err)
				if pe.Kind != Kind(tt.frame[lenPrefix]) {
					t.Errorf("ProtocolError.Kind %s", pe.Kind)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(f, tt.want) {
				t.Errorf("got %+v, want %+v", f, tt.want)
			}
			if _, err := sc.Next(); err != io.EOF {
				t.Errorf("at the end: %v, want io.EOF", err)
			}
		})
	}
}

// TestServerConnConcurrentWrites checks that frames written from several
// goroutines at once arrive whole.
func TestServerConnConcurrentWrites(t *testing.T) {
	h, w := socketpair(t)
	sc := NewServerConn(w, 0)
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte(g)}, 1000+g*997)
			for i := range each {
				var err error
				switch i % 4 {
				case 0:
					err = sc.WriteBody(uint64(g), data)
				case 1:
					err = sc.WriteWindow(uint64(g), len(data))
				case 2:
					err = sc.WritePong(uint64(g))
				case 3:
					err = sc.WriteResponse(&Response{ID: uint64(g), Status: 200, Body: data})
				}
				if err != nil {
					t.Errorf("writer %d: %v", g, err)
					return
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		sc.Close()
	}()
	fr := newFrameReader(h, DefaultMaxFrame)
	pd := newPayloadDecoder()
	counts := make(map[uint64]int)
	for {
		k, p, err := fr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		d, err := decodePayload(pd, k, p)
		if err != nil {
			t.Fatalf("%s frame: %v", k, err)
		}
		id := d.ID
		switch k {
		case KindResponse:
			id = d.Response.ID
			if len(d.Response.Body) != 1000+int(id)*997 {
				t.Fatalf("response of writer %d with %d body bytes", id, len(d.Response.Body))
			}
		case KindBody:
			if len(d.Data) != 1000+int(id)*997 || d.Data[0] != byte(id) {
				t.Fatalf("body of writer %d corrupted", id)
			}
		}
		counts[id]++
	}
	for g := range writers {
		if counts[uint64(g)] != each {
			t.Errorf("writer %d: %d frames arrived, want %d", g, counts[uint64(g)], each)
		}
	}
}

// TestConnInterruptWhileFinishing interrupts exchanges from another
// goroutine (a client going away) while the reader finishes them: under
// -race, this caught Interrupt reading Ticket.done while finish wrote it
// without the lock.
func TestConnInterruptWhileFinishing(t *testing.T) {
	c := startEcho(t)
	for range 200 {
		var tk Ticket
		if err := c.Send(&tk, &Request{Method: "GET", Body: []byte("x"), EOF: true}, nil); err != nil {
			t.Fatal(err)
		}
		interrupted := make(chan struct{})
		go func() {
			tk.Interrupt()
			close(interrupted)
		}()
		_, b, err := tk.Head()
		if err == nil {
			_, err = io.ReadAll(b)
		}
		<-interrupted
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			t.Fatal(err)
		}
		if err := tk.Drain(); err != nil {
			t.Fatal(err)
		}
	}
}
