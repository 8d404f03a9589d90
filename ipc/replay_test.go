package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// readN reads exactly n bytes of r in reads of at most ChunkSize, as the
// body pump does.
func readN(tb testing.TB, r io.Reader, n int) []byte {
	tb.Helper()
	out := make([]byte, 0, n)
	buf := make([]byte, ChunkSize)
	for len(out) < n {
		k, err := r.Read(buf[:min(ChunkSize, n-len(out))])
		out = append(out, buf[:k]...)
		if err != nil {
			tb.Fatalf("after %d bytes: %v", len(out), err)
		}
	}
	return out
}

// enteredReader reports calls of Read on entered before it reads, as many
// as the channel's buffer holds.
type enteredReader struct {
	r       io.Reader
	entered chan struct{}
}

func (e *enteredReader) Read(p []byte) (int, error) {
	select {
	case e.entered <- struct{}{}:
	default:
	}
	return e.r.Read(p)
}

func TestReplay(t *testing.T) {
	data := patterned(3 * Window)
	t.Run("rewound, the copy then the rest", func(t *testing.T) {
		r := NewReplay(bytes.NewReader(data))
		first := readN(t, r, 100_000)
		if !r.Rewind() {
			t.Fatal("Rewind refused before any acknowledgement")
		}
		again := readN(t, r, 50_000)
		if !r.Rewind() {
			t.Fatal("second Rewind refused")
		}
		all, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(all, data) || !bytes.Equal(first, data[:100_000]) || !bytes.Equal(again, data[:50_000]) {
			t.Fatalf("read %d bytes (%v), not the body", len(all), err)
		}
	})
	t.Run("acknowledged: the rest of the copy, then no rewind", func(t *testing.T) {
		r := NewReplay(bytes.NewReader(data))
		readN(t, r, 200_000)
		r.Rewind()
		head := readN(t, r, 10_000)
		r.acked()
		if r.Rewind() {
			t.Fatal("Rewind after the acknowledgement")
		}
		rest, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(append(head, rest...), data) {
			t.Fatalf("read %d bytes (%v), not the body", len(head)+len(rest), err)
		}
		if len(r.bufs) != 0 || r.n != 0 {
			t.Errorf("the copy is kept after it was read again: %d chunks, %d bytes", len(r.bufs), r.n)
		}
	})
	t.Run("acknowledged with everything read: dropped at once", func(t *testing.T) {
		r := NewReplay(bytes.NewReader(data))
		readN(t, r, 3*ChunkSize)
		r.acked()
		if len(r.bufs) != 0 {
			t.Errorf("%d chunks kept after the acknowledgement", len(r.bufs))
		}
		rest, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(rest, data[3*ChunkSize:]) {
			t.Fatalf("read %d bytes (%v)", len(rest), err)
		}
	})
	t.Run("the error of src comes again after the copy", func(t *testing.T) {
		r := NewReplay(bytes.NewReader(data[:1000]))
		if got, err := io.ReadAll(r); err != nil || len(got) != 1000 {
			t.Fatalf("%d bytes, %v", len(got), err)
		}
		r.Rewind()
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data[:1000]) {
			t.Fatalf("replayed %d bytes, %v", len(got), err)
		}
	})
	t.Run("more than a window: no rewind", func(t *testing.T) {
		r := NewReplay(bytes.NewReader(data))
		readN(t, r, Window+1)
		if r.Rewind() {
			t.Fatal("Rewind after more than a window")
		}
		if len(r.bufs) != 0 {
			t.Errorf("%d chunks kept", len(r.bufs))
		}
	})
	t.Run("closed", func(t *testing.T) {
		r := NewReplay(bytes.NewReader(data))
		readN(t, r, 1000)
		r.Close()
		if _, err := r.Read(make([]byte, 10)); err == nil {
			t.Error("Read after Close succeeded")
		}
		if r.Rewind() || len(r.bufs) != 0 {
			t.Errorf("after Close: Rewind, or %d chunks kept", len(r.bufs))
		}
		var none *Replay
		none.Close()
	})
	t.Run("an abandoned exchange's reader takes nothing of the copy", func(t *testing.T) {
		r := NewReplay(bytes.NewReader(data))
		old := r.view()
		readN(t, old, 2*ChunkSize)
		if !r.Rewind() {
			t.Fatal("Rewind refused")
		}
		// The abandoned pump reads once more, after the rewind.
		if n, err := old.Read(make([]byte, ChunkSize)); n != 0 || !errors.Is(err, errReplayRewound) {
			t.Fatalf("abandoned reader after Rewind: %d bytes, %v; want none, %v", n, err, errReplayRewound)
		}
		all, err := io.ReadAll(r.view())
		if err != nil || !bytes.Equal(all, data) {
			t.Fatalf("the next exchange read %d bytes (%v), not the body", len(all), err)
		}
	})
	t.Run("a read in flight when rewound goes to the next reader", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pr.Close()
		src := &enteredReader{r: pr, entered: make(chan struct{}, 2)}
		r := NewReplay(src)
		go pw.Write(data[:500])
		readN(t, r, 500)
		<-src.entered
		abandoned := make(chan error, 1)
		go func() {
			_, err := r.Read(make([]byte, ChunkSize))
			abandoned <- err
		}()
		recvOrFail(t, src.entered, "the read in flight")
		if !r.Rewind() {
			t.Fatal("Rewind refused")
		}
		next := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(r)
			next <- b
		}()
		go func() {
			pw.Write(data[500:2000])
			pw.Close()
		}()
		if err := recvOrFail(t, abandoned, "the abandoned read"); !errors.Is(err, errReplayRewound) {
			t.Errorf("the abandoned read returned %v, want %v", err, errReplayRewound)
		}
		if got := recvOrFail(t, next, "the next reader"); !bytes.Equal(got, data[:2000]) {
			t.Errorf("the next reader got %d bytes, not the body", len(got))
		}
	})
}

// ackPair returns a Conn whose worker listed features in the pong to its
// start ping, and the worker's raw descriptor, which the caller closes.
func ackPair(tb testing.TB, features ...string) (*Conn, int) {
	tb.Helper()
	hfd, wfd := rawSocketpair(tb)
	c := NewConn(fdConn(tb, hfd, "host"), 0)
	pinged := make(chan error, 1)
	go func() { pinged <- c.Ping() }()
	ping := make([]byte, 7)
	if _, err := io.ReadFull(fdReader(wfd), ping); err != nil {
		tb.Fatal(err)
	}
	if _, err := unix.Write(wfd, clone(newFrameWriter().pong(1, features))); err != nil {
		tb.Fatal(err)
	}
	if err := recvOrFail(tb, pinged, "the pong"); err != nil {
		tb.Fatal(err)
	}
	return c, wfd
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

type fdReader int

func (fd fdReader) Read(p []byte) (int, error) {
	n, err := unix.Read(int(fd), p)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	return max(n, 0), err
}

// closeWhenReadable closes fd, unread, once something arrived on it: a
// worker that died idle just as a request came.
func closeWhenReadable(fd int) <-chan error {
	closed := make(chan error, 1)
	go func() {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(testTimeout/time.Millisecond))
		for err == unix.EINTR { // the runtime preempts with signals
			n, err = unix.Poll(fds, int(testTimeout/time.Millisecond))
		}
		if err == nil && n != 1 {
			err = errors.New("poll timed out")
		}
		unix.Close(fd)
		closed <- err
	}()
	return closed
}

// ackEcho serves one connection as echo does, acknowledging the head of
// each streamed request first (FeatureHeadAck).
func ackEcho(tb testing.TB) *Conn {
	tb.Helper()
	h, w := socketpair(tb)
	sc := NewServerConn(w, 0)
	sc.SetFeatures([]string{FeatureHeadAck})
	goWorker(tb, func() error {
		for {
			f, err := sc.Next()
			if err == io.EOF || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if err != nil {
				return err
			}
			switch f.Kind {
			case KindPing:
				err = sc.WritePong(f.ID)
			case KindRequest:
				if !f.Request.EOF {
					if err := sc.WriteAck(f.ID); err != nil {
						return err
					}
				}
				err = echoExchange(sc, f.Request)
			}
			if err != nil {
				return err
			}
		}
	}, h)
	c := NewConn(h, 0)
	if err := c.Ping(); err != nil || !c.HeadAck() {
		tb.Fatalf("ping: %v, HeadAck %v", err, c.HeadAck())
	}
	return c
}

// roundTripAll sends a streamed request and reads the whole response body.
func roundTripAll(c *Conn, first []byte, body io.Reader) ([]byte, error) {
	_, b, err := c.RoundTrip(&Request{Method: "POST", ContentLength: -1, Body: first}, body)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(b)
}

// A worker that announced FeatureHeadAck and died without acknowledging a
// streamed request never ran its handler: the request, its body replayed,
// goes to another worker. Once it acknowledged, the request is not sent
// again.
func TestConnHeadAckRetry(t *testing.T) {
	for _, size := range []int{10, Window - 100, 4 * Window} {
		data := patterned(100 + size)
		t.Run(fmt.Sprintf("died with the request unread, %d bytes", len(data)), func(t *testing.T) {
			c, wfd := ackPair(t, FeatureInformational, FeatureHeadAck)
			if !c.HeadAck() {
				t.Fatal("HeadAck false after a pong listing it")
			}
			closed := closeWhenReadable(wfd)
			rp := NewReplay(bytes.NewReader(data[100:]))
			_, err := roundTripAll(c, data[:100], rp)
			if err := recvOrFail(t, closed, "the worker to close"); err != nil {
				t.Fatal(err)
			}
			if !errors.Is(err, ErrNotDelivered) {
				t.Fatalf("got %v, want %v", err, ErrNotDelivered)
			}
			retryEchoes(t, rp, data)
		})
	}
	data := patterned(3 * Window)
	tests := []struct {
		name      string
		worker    func(sc *ServerConn, id uint64) error // after reading the request frame
		delivered bool
	}{
		{"read the request, died before acknowledging", func(sc *ServerConn, id uint64) error { return nil }, false},
		{"read a body frame, died before acknowledging", func(sc *ServerConn, id uint64) error {
			_, err := sc.Next()
			return err
		}, false},
		{"acknowledged, then died", func(sc *ServerConn, id uint64) error { return sc.WriteAck(id) }, true},
		{"granted credit, then died", func(sc *ServerConn, id uint64) error { return sc.WriteWindow(id, 100) }, true},
		{"answered, then died", func(sc *ServerConn, id uint64) error {
			return sc.WriteResponse(&Response{ID: id, Status: 200})
		}, true},
		{"informational response, then died", func(sc *ServerConn, id uint64) error {
			return sc.WriteInformational(id, 103, nil)
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, wfd := ackPair(t, FeatureHeadAck)
			sc := NewServerConn(fdConn(t, wfd, "worker"), 0)
			goWorker(t, func() error {
				f, err := sc.Next()
				if err != nil {
					return err
				}
				if err := tt.worker(sc, f.ID); err != nil {
					return err
				}
				return sc.Close()
			})
			rp := NewReplay(bytes.NewReader(data[100:]))
			_, err := roundTripAll(c, data[:100], rp)
			if tt.delivered {
				if !errors.Is(err, ErrPeerClosed) || errors.Is(err, ErrNotDelivered) {
					t.Fatalf("got %v, want %v and not %v", err, ErrPeerClosed, ErrNotDelivered)
				}
				if rp.Rewind() {
					t.Error("Rewind after the worker had the request")
				}
				return
			}
			if !errors.Is(err, ErrNotDelivered) {
				t.Fatalf("got %v, want %v", err, ErrNotDelivered)
			}
			retryEchoes(t, rp, data)
		})
	}
	t.Run("trailers", func(t *testing.T) {
		// The client's trailers, read once at the end of its body, reach
		// the worker the request is sent again to.
		c, wfd := ackPair(t, FeatureHeadAck)
		closed := closeWhenReadable(wfd)
		req := &Request{Method: "POST", ContentLength: -1, Body: data[:100], Trailer: http.Header{}}
		rp := NewReplay(readerFunc(func(p []byte) (int, error) {
			req.Trailer.Set("X-Sum", "42") // as net/http fills them at EOF
			return 0, io.EOF
		}))
		if _, _, err := c.RoundTrip(req, rp); !errors.Is(err, ErrNotDelivered) {
			t.Fatalf("got %v, want %v", err, ErrNotDelivered)
		}
		if err := recvOrFail(t, closed, "the worker to close"); err != nil {
			t.Fatal(err)
		}
		if !rp.Rewind() {
			t.Fatal("Rewind refused")
		}
		c2 := ackEcho(t)
		_, b, err := c2.RoundTrip(req, rp)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(b)
		if err != nil || !bytes.Equal(got, data[:100]) || c2.Trailer().Get("X-Sum") != "42" {
			t.Fatalf("the retry echoed %d bytes (%v), trailers %v", len(got), err, c2.Trailer())
		}
	})
	t.Run("worker without the feature", func(t *testing.T) {
		c, wfd := ackPair(t, FeatureInformational)
		if c.HeadAck() {
			t.Fatal("HeadAck true after a pong without it")
		}
		closed := closeWhenReadable(wfd)
		rp := NewReplay(bytes.NewReader(data[100:]))
		_, err := roundTripAll(c, data[:100], rp)
		if err := recvOrFail(t, closed, "the worker to close"); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(err, ErrPeerClosed) || errors.Is(err, ErrNotDelivered) {
			t.Fatalf("got %v, want %v and not %v", err, ErrPeerClosed, ErrNotDelivered)
		}
		if rp.Rewind() {
			t.Error("Rewind of a body a worker without the feature may have read")
		}
	})
	t.Run("not a Replay", func(t *testing.T) {
		c, wfd := ackPair(t, FeatureHeadAck)
		closed := closeWhenReadable(wfd)
		_, err := roundTripAll(c, data[:100], bytes.NewReader(data[100:]))
		if err := recvOrFail(t, closed, "the worker to close"); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(err, ErrPeerClosed) || errors.Is(err, ErrNotDelivered) {
			t.Fatalf("got %v, want %v and not %v: the body read is gone", err, ErrPeerClosed, ErrNotDelivered)
		}
	})
	t.Run("a client that sends slowly", func(t *testing.T) {
		// The worker dies while the pump waits for more of the client's
		// body: the bytes of that read go to the retry.
		pr, pw := io.Pipe()
		defer pr.Close()
		src := &enteredReader{r: pr, entered: make(chan struct{}, 2)}
		c, wfd := ackPair(t, FeatureHeadAck)
		sc := NewServerConn(fdConn(t, wfd, "worker"), 0)
		goWorker(t, func() error {
			for _, want := range []Kind{KindRequest, KindBody} {
				if f, err := sc.Next(); err != nil || f.Kind != want {
					return fmt.Errorf("got %v %v, want a %s frame", f.Kind, err, want)
				}
			}
			for range 2 { // the read that got the body frame's bytes, and the next
				select {
				case <-src.entered:
				case <-time.After(testTimeout):
					return errors.New("the pump did not read the client's body again")
				}
			}
			return sc.Close()
		})
		go pw.Write(data[100:5000])
		rp := NewReplay(src)
		_, err := roundTripAll(c, data[:100], rp)
		if !errors.Is(err, ErrNotDelivered) {
			t.Fatalf("got %v, want %v", err, ErrNotDelivered)
		}
		if !rp.Rewind() {
			t.Fatal("Rewind refused")
		}
		go func() {
			pw.Write(data[5000:])
			pw.Close()
		}()
		got, err := roundTripAll(ackEcho(t), data[:100], rp)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("the retry echoed %d of %d bytes: %v", len(got), len(data), err)
		}
	})
}

// retryEchoes rewinds rp after a failed first attempt and checks that a
// retry on a fresh acknowledging echo worker sends the whole body again.
func retryEchoes(t *testing.T, rp *Replay, data []byte) {
	t.Helper()
	if !rp.Rewind() {
		t.Fatal("Rewind refused")
	}
	got, err := roundTripAll(ackEcho(t), data[:100], rp)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the retry echoed %d of %d bytes: %v", len(got), len(data), err)
	}
}

// featureWorker plays a worker on a new connection whose pongs list feature
// if listed: it answers pings and hands every other frame to handle, until
// the connection ends. It returns the dispatcher's end, pinged, so that it
// knows whether the worker lists the feature.
func featureWorker(t *testing.T, feature string, listed bool, handle func(*ServerConn, Frame) error) *Conn {
	t.Helper()
	h, w := socketpair(t)
	sc := NewServerConn(w, 0)
	if listed {
		sc.SetFeatures([]string{feature})
	}
	goWorker(t, func() error {
		for {
			f, err := sc.Next()
			if err != nil {
				return nil
			}
			if f.Kind == KindPing {
				err = sc.WritePong(f.ID)
			} else {
				err = handle(sc, f)
			}
			if err != nil {
				return err
			}
		}
	}, h)
	c := NewConn(h, 0)
	if err := c.Ping(); err != nil {
		t.Fatal(err)
	}
	return c
}

// FeatureContinue: a request marked Continue goes out with no credit, and
// nothing of its body is read until the worker grants its window; to a
// worker that does not list the feature, it goes out unmarked with the
// usual window, and the body is read at once.
func TestConnContinue(t *testing.T) {
	for _, listed := range []bool{true, false} {
		t.Run(fmt.Sprintf("worker lists it: %v", listed), func(t *testing.T) {
			grant := make(chan struct{})
			got := make(chan *Request, 1)
			c := featureWorker(t, FeatureContinue, listed, func(sc *ServerConn, f Frame) error {
				if f.Kind != KindRequest {
					return nil
				}
				r := *f.Request
				got <- &r
				if r.Continue {
					<-grant
					if err := sc.WriteWindow(r.ID, Window); err != nil {
						return err
					}
				}
				return echoExchange(sc, &r)
			})
			data := patterned(3 * ChunkSize)
			src := &enteredReader{r: bytes.NewReader(data), entered: make(chan struct{}, 1)}
			done := make(chan error, 1)
			var echoed []byte
			go func() {
				_, b, err := c.RoundTrip(&Request{Method: "PUT", ContentLength: int64(len(data)), Continue: true}, src)
				if err == nil {
					echoed, err = io.ReadAll(b)
				}
				done <- err
			}()
			r := recvOrFail(t, got, "the request")
			if r.Continue != listed {
				t.Fatalf("continue element %v, want %v", r.Continue, listed)
			}
			if listed {
				select {
				case <-src.entered:
					t.Fatal("the body was read before the worker granted credit")
				case <-time.After(50 * time.Millisecond):
				}
				close(grant)
			}
			recvOrFail(t, src.entered, "the first read of the body")
			if err := recvOrFail(t, done, "the exchange"); err != nil || !bytes.Equal(echoed, data) {
				t.Fatalf("echoed %d of %d bytes: %v", len(echoed), len(data), err)
			}
		})
	}
}

// A streamed request body goes out in chunks of up to WideChunkSize to a
// worker that lists FeatureWideChunk in its pongs, and of up to ChunkSize
// to one that does not.
func TestConnWideChunk(t *testing.T) {
	for _, listed := range []bool{true, false} {
		t.Run(fmt.Sprintf("worker lists it: %v", listed), func(t *testing.T) {
			largest := make(chan int, 1)
			most := 0
			var id uint64
			var got []byte
			c := featureWorker(t, FeatureWideChunk, listed, func(sc *ServerConn, f Frame) error {
				switch f.Kind {
				case KindRequest:
					id, got = f.ID, append(got[:0], f.Request.Body...)
					return sc.WriteWindow(id, WideWindow-Window)
				case KindBody:
					most = max(most, len(f.Data))
					got = append(got, f.Data...)
					return sc.WriteWindow(id, len(f.Data))
				case KindEnd:
					largest <- most
					return sc.WriteResponse(&Response{ID: id, Status: 200, Body: []byte(strconv.Itoa(len(got))), EOF: true})
				}
				return nil
			})
			data := patterned(4 << 20)
			_, b, err := c.RoundTrip(&Request{Method: "PUT", ContentLength: int64(len(data))}, bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.ReadAll(b)
			if err != nil || string(n) != strconv.Itoa(len(data)) {
				t.Fatalf("the worker read %s bytes of %d: %v", n, len(data), err)
			}
			seen := recvOrFail(t, largest, "the end of the body")
			want := ChunkSize
			if listed {
				want = WideChunkSize
			}
			if seen != want {
				t.Errorf("largest chunk %d bytes, want %d", seen, want)
			}
		})
	}
}

// A response body chunk over the limit the dispatcher announced is a
// protocol violation: over WideChunkSize with a frame limit that holds a
// wide chunk, over ChunkSize with a smaller one.
func TestConnChunkLimit(t *testing.T) {
	for _, maxFrame := range []int{DefaultMaxFrame, MinMaxFrame} {
		limit := ChunkSize
		if maxFrame >= WideChunkMaxFrame {
			limit = WideChunkSize
		}
		for _, n := range []int{limit, limit + 1} {
			t.Run(fmt.Sprintf("max frame %d, chunk %d", maxFrame, n), func(t *testing.T) {
				h, w := socketpair(t)
				sc := NewServerConn(w, maxFrame)
				goWorker(t, func() error {
					f, err := sc.Next()
					if err != nil {
						return err
					}
					if err := sc.WriteResponse(&Response{ID: f.ID, Status: 200}); err != nil {
						return err
					}
					if err := sc.WriteBody(f.ID, patterned(n)); err != nil {
						return err
					}
					sc.WriteEnd(f.ID, nil)
					sc.Next() // until the dispatcher's end closes
					return nil
				}, h)
				c := NewConn(h, maxFrame)
				_, b, err := c.RoundTrip(&Request{Method: "GET", URI: "/", EOF: true}, nil)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(b)
				var pe *ProtocolError
				switch {
				case n <= limit && (err != nil || len(got) != n):
					t.Fatalf("read %d of %d bytes: %v", len(got), n, err)
				case n > limit && !errors.As(err, &pe):
					t.Fatalf("a chunk of %d bytes over the limit of %d: err %v, want a protocol error", n, limit, err)
				}
			})
		}
	}
}
