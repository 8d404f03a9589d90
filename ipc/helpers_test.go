package ipc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// testTimeout bounds every wait of a test on another goroutine, so that a
// bug shows up as a failure instead of a hung test binary.
const testTimeout = 10 * time.Second

// rawSocketpair returns the two descriptors of a connected AF_UNIX stream
// socketpair, closed at cleanup unless the test already closed them.
func rawSocketpair(tb testing.TB) (int, int) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socketpair: %v", err)
	}
	return fds[0], fds[1]
}

// fdConn turns a socket descriptor into a net.Conn (which duplicates it) and
// closes the original descriptor.
func fdConn(tb testing.TB, fd int, name string) net.Conn {
	tb.Helper()
	f := os.NewFile(uintptr(fd), name)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		tb.Fatalf("FileConn(%s): %v", name, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// socketpair returns the host and worker ends of a slot connection, as the
// dispatcher makes them, closed at cleanup.
func socketpair(tb testing.TB) (host, worker net.Conn) {
	tb.Helper()
	h, w := rawSocketpair(tb)
	return fdConn(tb, h, "host"), fdConn(tb, w, "worker")
}

// connPair returns a Conn and the ServerConn at the other end of a
// socketpair, both with the default frame limit.
func connPair(tb testing.TB) (*Conn, *ServerConn) {
	tb.Helper()
	h, w := socketpair(tb)
	return NewConn(h, 0), NewServerConn(w, 0)
}

// goWorker runs fn in a goroutine playing the worker and returns a function
// that waits for it (bounded) and reports its error. At cleanup, closers
// (typically the host end, so that the worker sees end of stream) are closed
// and then the worker is waited for.
func goWorker(tb testing.TB, fn func() error, closers ...io.Closer) (wait func()) {
	tb.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	waited := false
	wait = func() {
		tb.Helper()
		if waited {
			return
		}
		waited = true
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("worker: %v", err)
			}
		case <-time.After(testTimeout):
			tb.Errorf("worker goroutine did not finish within %s", testTimeout)
		}
	}
	tb.Cleanup(func() {
		for _, c := range closers {
			c.Close()
		}
		wait()
	})
	return wait
}

// recvOrFail waits (bounded) for a value on ch.
func recvOrFail[T any](tb testing.TB, ch <-chan T, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		tb.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// clone copies the bytes a frameWriter returns: they alias its buffer.
func clone(b []byte) []byte { return append([]byte(nil), b...) }

// rawFrame builds a frame of kind k around an arbitrary payload.
func rawFrame(k Kind, payload []byte) []byte {
	b := make([]byte, lenPrefix, lenPrefix+1+len(payload))
	binary.BigEndian.PutUint32(b, uint32(1+len(payload)))
	b = append(b, byte(k))
	return append(b, payload...)
}

// mp builds a msgpack payload with the encoder calls in fn, followed by the
// raw bytes in tail.
func mp(tb testing.TB, fn func(e *msgpack.Encoder), tail ...byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	fn(e)
	return append(buf.Bytes(), tail...)
}

// decoded is any frame decoded with the payloadDecoder method of its kind.
type decoded struct {
	Kind     Kind
	ID       uint64
	Request  *Request
	Response *Response
	Data     []byte
	Trailer  map[string][]string
	Count    int
	Reason   string
	HeadAck  bool // a pong lists FeatureHeadAck
}

// decodePayload decodes the payload of a frame of kind k.
func decodePayload(pd *payloadDecoder, k Kind, p []byte) (decoded, error) {
	pd.reset(k, p)
	d := decoded{Kind: k}
	var err error
	switch k {
	case KindRequest:
		d.Request, err = pd.request()
	case KindResponse:
		d.Response, err = pd.response()
	case KindBody:
		d.ID, d.Data, err = pd.idData()
	case KindEnd:
		d.ID, d.Trailer, err = pd.idHeader()
	case KindCancel, KindPing:
		d.ID, err = pd.idOnly()
	case KindPong:
		var f pongFeatures
		d.ID, f, err = pd.pong()
		d.HeadAck = f.headAck
	case KindWindow:
		d.ID, d.Count, err = pd.idCount()
	case KindAbort:
		d.ID, d.Reason, err = pd.idString()
	default:
		err = protoErr(k, "unknown kind")
	}
	return d, err
}

// decodeFrame reads one frame from b and decodes it.
func decodeFrame(tb testing.TB, b []byte) decoded {
	tb.Helper()
	fr := newFrameReader(bytes.NewReader(b), DefaultMaxFrame)
	k, p, err := fr.next()
	if err != nil {
		tb.Fatalf("frameReader.next: %v", err)
	}
	d, err := decodePayload(newPayloadDecoder(), k, p)
	if err != nil {
		tb.Fatalf("decode %s: %v", k, err)
	}
	if _, _, err := fr.next(); err != io.EOF {
		tb.Fatalf("after the frame: got %v, want io.EOF", err)
	}
	return d
}

// wantProtocolError fails unless err is a *ProtocolError.
func wantProtocolError(tb testing.TB, err error) *ProtocolError {
	tb.Helper()
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		tb.Fatalf("got error %v (%T), want a *ProtocolError", err, err)
	}
	return pe
}

// allocBytes returns the average number of bytes fn allocates per call.
func allocBytes(runs int, fn func()) uint64 {
	fn() // warm up buffers and lazily initialised state
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		fn()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// patterned returns n bytes of a non-repeating-looking pattern, so that a
// reordered or dropped chunk changes the result.
func patterned(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}
