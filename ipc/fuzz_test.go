package ipc

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"runtime/metrics"
	"testing"
	"testing/iotest"
	"time"
)

// Fuzz targets. Seed corpora live in testdata/fuzz/<FuzzName>/; more seeds
// are added here from the frame writer so they follow the encoding.
//
//	go test -run=NONE -fuzz=FuzzDecodeRequest -fuzztime=20s ./ipc/

// fuzzAllocLimit is how much reading n input bytes may allocate: fixed for
// buffers plus a small multiple of the input (a header map of k entries needs
// at least 2k payload bytes and costs about 48 bytes per entry), plus
// metricsSlack. The bugs this guards against allocated what a frame declares
// (msgpack's decoder: 16 MiB for a 7-byte frame).
func fuzzAllocLimit(fixed, n int) uint64 { return uint64(fixed + 64*n + metricsSlack) }

// metricsSlack absorbs the imprecision of runtime/metrics: it counts a whole
// span of small objects as allocated when a P's cache is refilled with it.
const metricsSlack = 512 << 10

// checkAllocs runs fn once and fails if it allocated more than limit bytes.
// It reads runtime/metrics, which does not stop the world as ReadMemStats
// does; small allocations are counted a span at a time, large ones (the
// ones that matter here) at once.
func checkAllocs(t *testing.T, limit uint64, fn func()) {
	t.Helper()
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(sample)
	before := sample[0].Value.Uint64()
	fn()
	metrics.Read(sample)
	if n := sample[0].Value.Uint64() - before; n > limit {
		t.Fatalf("allocated %d bytes (limit %d)", n, limit)
	}
}

// checkDecodeError fails unless err is nil or a *ProtocolError of kind k.
func checkDecodeError(t *testing.T, k Kind, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		t.Fatalf("%s: error %v (%T) is not a *ProtocolError", k, err, err)
	}
	if pe.Kind != k {
		t.Fatalf("%s: ProtocolError.Kind = %s", k, pe.Kind)
	}
}

// reencode encodes a successfully decoded frame again.
func reencode(fw *frameWriter, d decoded) []byte {
	switch d.Kind {
	case KindRequest:
		return fw.request(d.Request, d.Request.Continue)
	case KindResponse:
		return fw.response(d.Response)
	case KindBody:
		return fw.body(d.ID, d.Data)
	case KindEnd:
		return fw.end(d.ID, d.Trailer)
	case KindCancel, KindPing, KindPong:
		return fw.idFrame(d.Kind, d.ID)
	case KindWindow:
		return fw.window(d.ID, d.Count)
	case KindAbort:
		return fw.abort(d.ID, d.Reason)
	}
	panic("unknown kind")
}

// fuzzDecode decodes b as a payload of each kind in kinds: it must not
// panic, must fail with a ProtocolError or succeed, must stay within the
// allocation bound, and what it decodes must survive re-encoding.
func fuzzDecode(t *testing.T, b []byte, kinds ...Kind) {
	pd := newPayloadDecoder()
	fw := newFrameWriter()
	for _, k := range kinds {
		var d decoded
		var err error
		checkAllocs(t, fuzzAllocLimit(32<<10, len(b)), func() { d, err = decodePayload(pd, k, b) })
		checkDecodeError(t, k, err)
		if err != nil {
			continue
		}
		frame := clone(reencode(fw, d))
		if Kind(frame[lenPrefix]) != k {
			t.Fatalf("re-encoded as kind %d", frame[lenPrefix])
		}
		again, err := decodePayload(newPayloadDecoder(), k, frame[lenPrefix+1:])
		if err != nil {
			t.Fatalf("%s: re-encoded frame rejected: %v", k, err)
		}
		if !reflect.DeepEqual(again, d) {
			t.Fatalf("%s: round trip changed the frame:\n first  %+v\n second %+v", k, d, again)
		}
	}
}

func addPayloadSeeds(f *testing.F, frames ...[]byte) {
	for _, fr := range frames {
		f.Add(clone(fr[lenPrefix+1:]))
	}
}

func FuzzDecodeRequest(f *testing.F) {
	fw := newFrameWriter()
	addPayloadSeeds(f,
		fw.request(&Request{ID: 1, Method: "GET", URI: "/", Proto: "HTTP/1.1", EOF: true}, false),
		fw.request(&Request{ID: 2, Method: "POST", URI: "/x?y", Header: http.Header{"A": {"1", "2"}, "B": nil, "C": {}},
			Host: "h", RemoteAddr: "1.2.3.4:5", ContentLength: -1, RequestID: "r", Body: []byte("body")}, false),
		fw.request(&Request{ID: 5, Method: "PUT", URI: "/up", Header: http.Header{"Expect": {"100-continue"}}, ContentLength: 10, Continue: true}, true),
		fw.body(3, []byte("data")),
		fw.end(3, http.Header{"T": {"v"}}),
		fw.idFrame(KindCancel, 4),
		fw.abort(5, "reason"),
	)
	f.Add([]byte{0x9b, 0x01, 0xa3, 'G', 'E', 'T', 0xa1, '/', 0xa0, 0xdf, 0x00, 0x0f, 0x42, 0x40})
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzDecode(t, b, KindRequest, KindBody, KindEnd, KindCancel, KindPing, KindAbort)
	})
}

func FuzzDecodeResponse(f *testing.F) {
	fw := newFrameWriter()
	addPayloadSeeds(f,
		fw.response(&Response{ID: 1, Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("ok"), EOF: true,
			Trailer: http.Header{"X": {"y"}}}),
		fw.response(&Response{ID: 2, Status: 404}),
		fw.body(3, []byte("data")),
		fw.end(3, nil),
		fw.idFrame(KindPong, 4),
		fw.window(5, Window),
		fw.abort(6, "handler panic"),
	)
	f.Add([]byte{0x96, 0x01, 0xcd, 0x03, 0xe8, 0xc0, 0xc0, 0xc3, 0xc0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzDecode(t, b, KindResponse, KindBody, KindEnd, KindPong, KindWindow, KindAbort)
	})
}

// readFrames reads r to its first error, returning the frames (copied) and
// that error.
func readFrames(t *testing.T, r io.Reader, max int) ([][]byte, error) {
	fr := newFrameReader(r, max)
	var frames [][]byte
	for {
		k, p, err := fr.next()
		if err != nil {
			return frames, err
		}
		if len(p)+1 > max {
			t.Fatalf("frame of %d bytes over the limit %d", len(p)+1, max)
		}
		frames = append(frames, append([]byte{byte(k)}, p...))
	}
}

func FuzzFrameReader(f *testing.F) {
	fw := newFrameWriter()
	var stream []byte
	stream = append(stream, fw.request(&Request{ID: 1, Method: "GET", EOF: true}, false)...)
	stream = append(stream, fw.body(1, []byte("abc"))...)
	stream = append(stream, fw.end(1, nil)...)
	f.Add(clone(stream))
	f.Add(clone(stream[:len(stream)-2]))
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Add([]byte{0, 0, 0, 1, 6, 0, 0})
	const max = 256
	f.Fuzz(func(t *testing.T, b []byte) {
		var frames [][]byte
		var err error
		checkAllocs(t, fuzzAllocLimit(200<<10, len(b)), func() {
			frames, err = readFrames(t, bytes.NewReader(b), max)
		})
		var pe *ProtocolError
		if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.As(err, &pe) {
			t.Fatalf("unexpected error %v (%T)", err, err)
		}
		// Frames consume exactly their bytes, in order.
		var consumed []byte
		for _, fr := range frames {
			consumed = append(consumed, byte(len(fr)>>24), byte(len(fr)>>16), byte(len(fr)>>8), byte(len(fr)))
			consumed = append(consumed, fr...)
		}
		if !bytes.HasPrefix(b, consumed) {
			t.Fatal("frames do not match the input")
		}
		if err == io.EOF && len(consumed) != len(b) {
			t.Fatalf("clean EOF with %d of %d bytes consumed", len(consumed), len(b))
		}
		// Read boundaries do not matter.
		frames2, err2 := readFrames(t, iotest.OneByteReader(bytes.NewReader(b)), max)
		if !reflect.DeepEqual(frames, frames2) || err.Error() != err2.Error() {
			t.Fatalf("one-byte reads differ: %d frames, %v; whole: %d frames, %v", len(frames2), err2, len(frames), err)
		}
		// Every frame's payload decodes or fails cleanly.
		pd := newPayloadDecoder()
		for _, fr := range frames {
			_, err := decodePayload(pd, Kind(fr[0]), fr[1:])
			if Kind(fr[0]) >= KindRequest && Kind(fr[0]) <= KindAbort {
				checkDecodeError(t, Kind(fr[0]), err)
			}
		}
	})
}

// bytesConn is a net.Conn that reads a fixed input and discards writes.
type bytesConn struct {
	r bytes.Reader
}

func (c *bytesConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) LocalAddr() net.Addr              { return &net.UnixAddr{Net: "unix"} }
func (c *bytesConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Net: "unix"} }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }

func FuzzServerConnNext(f *testing.F) {
	fw := newFrameWriter()
	var stream []byte
	stream = append(stream, fw.idFrame(KindPing, 1)...)
	stream = append(stream, fw.request(&Request{ID: 2, Method: "POST", URI: "/", Header: http.Header{"A": {"b"}}, ContentLength: -1, Body: []byte("a")}, false)...)
	stream = append(stream, fw.body(2, []byte("bc"))...)
	stream = append(stream, fw.end(2, http.Header{"T": {"1"}})...)
	stream = append(stream, fw.idFrame(KindCancel, 2)...)
	stream = append(stream, fw.abort(2, "x")...)
	f.Add(clone(stream))
	f.Add(clone(fw.response(&Response{ID: 1, Status: 200})))
	f.Add([]byte{0, 0, 0, 2, 1, 0xc1})
	const max = 4096
	f.Fuzz(func(t *testing.T, b []byte) {
		var frames []Frame
		var err error
		checkAllocs(t, fuzzAllocLimit(200<<10, len(b)), func() {
			nc := &bytesConn{}
			nc.r.Reset(b)
			sc := NewServerConn(nc, max)
			for {
				var fr Frame
				fr, err = sc.Next()
				if err != nil {
					return
				}
				frames = append(frames, fr)
				if len(frames) > len(b)/6 {
					t.Fatalf("%d frames from %d bytes", len(frames), len(b))
				}
			}
		})
		var pe *ProtocolError
		if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.As(err, &pe) {
			t.Fatalf("unexpected error %v (%T)", err, err)
		}
		for _, fr := range frames {
			switch fr.Kind {
			case KindRequest:
				if fr.Request == nil || fr.Request.ID != fr.ID {
					t.Fatalf("request frame %+v", fr)
				}
			case KindBody, KindEnd, KindCancel, KindPing, KindAbort, KindWithdraw:
				if fr.Request != nil {
					t.Fatalf("%s frame with a request", fr.Kind)
				}
			default:
				t.Fatalf("a worker accepted a %s frame", fr.Kind)
			}
		}
	})
}
