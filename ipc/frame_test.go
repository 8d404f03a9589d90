package ipc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"testing"
	"testing/iotest"
	"time"
)

func TestKindString(t *testing.T) {
	tests := []struct {
		k    Kind
		want string
	}{
		{KindRequest, "request"},
		{KindBody, "body"},
		{KindEnd, "end"},
		{KindResponse, "response"},
		{KindCancel, "cancel"},
		{KindPing, "ping"},
		{KindPong, "pong"},
		{KindWindow, "window"},
		{KindAbort, "abort"},
		{0, "kind(0)"},
		{200, "kind(200)"},
	}
	for _, tt := range tests {
		if got := tt.k.String(); got != tt.want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(tt.k), got, tt.want)
		}
	}
}

func TestProtocolErrorMessage(t *testing.T) {
	if got, want := (&ProtocolError{Reason: "x"}).Error(), "ipc: protocol violation: x"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := (&ProtocolError{Kind: KindBody, Reason: "y"}).Error(), "ipc: protocol violation in body frame: y"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRoundTripRequest(t *testing.T) {
	big := patterned(ChunkSize)
	tests := []struct {
		name string
		req  Request
	}{
		{"minimal", Request{Method: "GET", URI: "/", Proto: "HTTP/1.1", EOF: true}},
		{"nil header and body", Request{ID: 1, Method: "GET", URI: "/x", Header: nil, Body: nil, EOF: true}},
		{"empty header and body", Request{ID: 2, Method: "GET", URI: "/", Header: http.Header{}, Body: []byte{}, EOF: true}},
		{"multi-valued headers", Request{
			ID: 3, Method: "POST", URI: "/a/b?c=d&e=%20", Proto: "HTTP/2.0",
			Header: http.Header{
				"Accept":       {"text/html", "application/json", ""},
				"X-Empty":      {},
				"X-Nil":        nil,
				"X-Unicode-ü":  {"ünïcödé ✓", "\x00\xff"},
				"Content-Type": {"application/octet-stream"},
			},
			Host: "example.com:8080", RemoteAddr: "[::1]:4242", ContentLength: 5,
			RequestID: "req-123", Body: []byte("hello"), EOF: true,
		}},
		{"64 KiB body complete", Request{ID: 4, Method: "PUT", URI: "/up", ContentLength: int64(len(big)), Body: big, EOF: true}},
		{"64 KiB first chunk, unknown length", Request{ID: 5, Method: "PUT", URI: "/up", ContentLength: -1, Body: big, EOF: false}},
		{"no body, not EOF", Request{ID: 6, Method: "POST", ContentLength: -1, EOF: false}},
		{"max id and length", Request{ID: math.MaxUint64, ContentLength: math.MaxInt64, EOF: true}},
		{"trailer is not on the wire", Request{ID: 7, Method: "POST", Trailer: http.Header{"X-Sum": {"1"}}}},
		{"timeout", Request{ID: 8, Method: "GET", URI: "/", EOF: true, Timeout: 1500 * time.Millisecond}},
		{"timeout with continue", Request{ID: 9, Method: "PUT", ContentLength: 3, Continue: true, Timeout: time.Hour}},
	}
	fw := newFrameWriter()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.req
			frame := clone(fw.request(&in, in.Continue))
			d := decodeFrame(t, frame)
			if d.Kind != KindRequest {
				t.Fatalf("kind %s, want request", d.Kind)
			}
			want := tt.req
			want.Trailer = nil
			if len(want.Body) == 0 {
				want.Body = nil // an empty body travels as nil
			}
			if !reflect.DeepEqual(d.Request, &want) {
				t.Errorf("round trip mismatch:\n got  %+v\n want %+v", d.Request, &want)
			}
			if cap(d.Request.Body) != len(d.Request.Body) {
				t.Errorf("body capacity %d exceeds its length %d: an append would overwrite the frame", cap(d.Request.Body), len(d.Request.Body))
			}
		})
	}
}

func TestRoundTripResponse(t *testing.T) {
	big := patterned(ChunkSize)
	tests := []struct {
		name string
		resp Response
	}{
		{"status 100", Response{ID: 1, Status: 100}},
		{"status 200 EOF", Response{ID: 2, Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("ok"), EOF: true}},
		{"status 204 empty header", Response{ID: 3, Status: 204, Header: http.Header{}, EOF: true}},
		{"status 404", Response{ID: 4, Status: 404, Body: []byte("not found"), EOF: true}},
		{"status 999", Response{ID: 5, Status: 999, EOF: true}},
		{"streamed head", Response{ID: 6, Status: 200, Header: http.Header{"Trailer": {"X-Sum"}}, Body: big}},
		{"trailers", Response{ID: 7, Status: 200, Body: []byte("x"), EOF: true,
			Trailer: http.Header{"X-Sum": {"a", "b"}, "X-Nil": nil, "X-Empty": {}}}},
		{"empty trailers", Response{ID: 8, Status: 500, EOF: true, Trailer: http.Header{}}},
		{"max id", Response{ID: math.MaxUint64, Status: 200}},
	}
	fw := newFrameWriter()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.resp
			d := decodeFrame(t, clone(fw.response(&in)))
			if d.Kind != KindResponse {
				t.Fatalf("kind %s, want response", d.Kind)
			}
			want := tt.resp
			if len(want.Body) == 0 {
				want.Body = nil
			}
			if !reflect.DeepEqual(d.Response, &want) {
				t.Errorf("round trip mismatch:\n got  %+v\n want %+v", d.Response, &want)
			}
		})
	}
}

func TestRoundTripSmallFrames(t *testing.T) {
	big := patterned(ChunkSize)
	tests := []struct {
		name  string
		build func(fw *frameWriter) []byte
		want  decoded
	}{
		{"body empty", func(fw *frameWriter) []byte { return fw.body(1, nil) },
			decoded{Kind: KindBody, ID: 1}},
		{"body small", func(fw *frameWriter) []byte { return fw.body(2, []byte("abc")) },
			decoded{Kind: KindBody, ID: 2, Data: []byte("abc")}},
		{"body chunk", func(fw *frameWriter) []byte { return fw.body(math.MaxUint64, big) },
			decoded{Kind: KindBody, ID: math.MaxUint64, Data: big}},
		{"end nil trailer", func(fw *frameWriter) []byte { return fw.end(3, nil) },
			decoded{Kind: KindEnd, ID: 3}},
		{"end empty trailer", func(fw *frameWriter) []byte { return fw.end(3, http.Header{}) },
			decoded{Kind: KindEnd, ID: 3, Trailer: http.Header{}}},
		{"end trailer", func(fw *frameWriter) []byte { return fw.end(4, http.Header{"X-A": {"1", "2"}, "X-B": nil}) },
			decoded{Kind: KindEnd, ID: 4, Trailer: http.Header{"X-A": {"1", "2"}, "X-B": nil}}},
		{"cancel", func(fw *frameWriter) []byte { return fw.idFrame(KindCancel, 5) },
			decoded{Kind: KindCancel, ID: 5}},
		{"cancel id 0", func(fw *frameWriter) []byte { return fw.idFrame(KindCancel, 0) },
			decoded{Kind: KindCancel}},
		{"ping", func(fw *frameWriter) []byte { return fw.idFrame(KindPing, 6) },
			decoded{Kind: KindPing, ID: 6}},
		{"pong", func(fw *frameWriter) []byte { return fw.idFrame(KindPong, math.MaxUint64) },
			decoded{Kind: KindPong, ID: math.MaxUint64}},
		{"pong without features", func(fw *frameWriter) []byte { return fw.pong(6, nil) },
			decoded{Kind: KindPong, ID: 6}},
		{"pong with features", func(fw *frameWriter) []byte { return fw.pong(6, []string{FeatureInformational, FeatureHeadAck}) },
			decoded{Kind: KindPong, ID: 6, HeadAck: true}},
		{"pong with other features", func(fw *frameWriter) []byte { return fw.pong(6, []string{FeatureInformational, "head-ack-v2"}) },
			decoded{Kind: KindPong, ID: 6}},
		{"window zero", func(fw *frameWriter) []byte { return fw.window(7, 0) },
			decoded{Kind: KindWindow, ID: 7}},
		{"window one", func(fw *frameWriter) []byte { return fw.window(7, 1) },
			decoded{Kind: KindWindow, ID: 7, Count: 1}},
		{"window full", func(fw *frameWriter) []byte { return fw.window(8, Window) },
			decoded{Kind: KindWindow, ID: 8, Count: Window}},
		{"abort empty", func(fw *frameWriter) []byte { return fw.abort(9, "") },
			decoded{Kind: KindAbort, ID: 9}},
		{"abort reason", func(fw *frameWriter) []byte { return fw.abort(10, "handler panic: boom ✗") },
			decoded{Kind: KindAbort, ID: 10, Reason: "handler panic: boom ✗"}},
	}
	fw := newFrameWriter()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decodeFrame(t, clone(tt.build(fw)))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("round trip mismatch:\n got  %+v\n want %+v", got, tt.want)
			}
		})
	}
}

// TestFrameStream sends every kind of frame in one stream, read back through
// readers that split it at arbitrary boundaries.
func TestFrameStream(t *testing.T) {
	big := patterned(3 * ChunkSize)
	fw := newFrameWriter()
	var stream []byte
	var want []decoded
	add := func(frame []byte, d decoded) {
		stream = append(stream, frame...)
		want = append(want, d)
	}
	req := Request{ID: 1, Method: "POST", URI: "/", Header: http.Header{"A": {"b"}}, ContentLength: -1, Body: big[:10]}
	add(fw.request(&req, false), decoded{Kind: KindRequest, Request: &Request{ID: 1, Method: "POST", URI: "/", Header: http.Header{"A": {"b"}}, ContentLength: -1, Body: big[:10]}})
	add(fw.body(1, big[:ChunkSize]), decoded{Kind: KindBody, ID: 1, Data: big[:ChunkSize]})
	add(fw.window(1, 1000), decoded{Kind: KindWindow, ID: 1, Count: 1000})
	resp := Response{ID: 1, Status: 201, Body: big}
	add(fw.response(&resp), decoded{Kind: KindResponse, Response: &Response{ID: 1, Status: 201, Body: big}})
	add(fw.body(1, []byte("x")), decoded{Kind: KindBody, ID: 1, Data: []byte("x")})
	add(fw.end(1, http.Header{"T": {"v"}}), decoded{Kind: KindEnd, ID: 1, Trailer: http.Header{"T": {"v"}}})
	add(fw.idFrame(KindPing, 2), decoded{Kind: KindPing, ID: 2})
	add(fw.idFrame(KindPong, 2), decoded{Kind: KindPong, ID: 2})
	add(fw.abort(3, "gone"), decoded{Kind: KindAbort, ID: 3, Reason: "gone"})
	add(fw.idFrame(KindCancel, 3), decoded{Kind: KindCancel, ID: 3})

	readers := []struct {
		name string
		r    func([]byte) io.Reader
	}{
		{"whole", func(b []byte) io.Reader { return bytes.NewReader(b) }},
		{"half reads", func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) }},
		{"one byte reads", func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) }},
		{"data with EOF", func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) }},
	}
	for _, rt := range readers {
		t.Run(rt.name, func(t *testing.T) {
			fr := newFrameReader(rt.r(stream), DefaultMaxFrame)
			pd := newPayloadDecoder()
			for i, w := range want {
				k, p, err := fr.next()
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				got, err := decodePayload(pd, k, p)
				if err != nil {
					t.Fatalf("frame %d (%s): %v", i, k, err)
				}
				if !reflect.DeepEqual(got, w) {
					t.Fatalf("frame %d mismatch:\n got  %+v\n want %+v", i, got, w)
				}
			}
			if _, _, err := fr.next(); err != io.EOF {
				t.Fatalf("after the last frame: %v, want io.EOF", err)
			}
			if fr.partial {
				t.Error("a clean end of stream marked the reader partial")
			}
		})
	}
}

// TestFrameBuffersShrink checks that one large frame does not pin a large
// buffer in the reader or the writer for the life of the connection.
func TestFrameBuffersShrink(t *testing.T) {
	fw := newFrameWriter()
	big := patterned(DefaultMaxFrame - 64)
	var stream []byte
	stream = append(stream, fw.body(1, big)...)
	if fw.buf.Cap() < len(big) {
		t.Fatalf("writer buffer %d smaller than the frame", fw.buf.Cap())
	}
	stream = append(stream, fw.body(2, []byte("small"))...)
	if c := fw.buf.Cap(); c > 4*ChunkSize {
		t.Errorf("writer buffer still holds %d bytes after a small frame", c)
	}
	fr := newFrameReader(bytes.NewReader(stream), DefaultMaxFrame)
	if _, _, err := fr.next(); err != nil {
		t.Fatal(err)
	}
	if cap(fr.buf) < len(big) {
		t.Fatalf("reader buffer %d smaller than the frame", cap(fr.buf))
	}
	k, p, err := fr.next()
	if err != nil {
		t.Fatal(err)
	}
	if c := cap(fr.buf); c > 4*ChunkSize {
		t.Errorf("reader buffer still holds %d bytes after a small frame", c)
	}
	d, err := decodePayload(newPayloadDecoder(), k, p)
	if err != nil || string(d.Data) != "small" {
		t.Errorf("small frame decoded as %+v, %v", d, err)
	}
}

func TestFrameReaderLimits(t *testing.T) {
	const max = 100
	header := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	frameOf := func(n int) []byte { return rawFrame(KindBody, bytes.Repeat([]byte{0xc0}, n-1)) }
	ioErr := errors.New("disk on fire")
	tests := []struct {
		name      string
		r         io.Reader
		wantLen   int   // payload length of a good frame
		wantErr   error // matched with errors.Is
		wantProto bool
		partial   bool
	}{
		{"empty stream", bytes.NewReader(nil), 0, io.EOF, false, false},
		{"exactly max", bytes.NewReader(frameOf(max)), max - 1, nil, false, false},
		{"one byte frame", bytes.NewReader(frameOf(1)), 0, nil, false, false},
		{"max+1", bytes.NewReader(frameOf(max + 1)), 0, nil, true, false},
		{"4 GiB declared", bytes.NewReader(header(math.MaxUint32)), 0, nil, true, false},
		{"zero length", bytes.NewReader(header(0)), 0, nil, true, false},
		{"1 header byte", bytes.NewReader([]byte{0}), 0, io.ErrUnexpectedEOF, false, true},
		{"3 header bytes", bytes.NewReader([]byte{0, 0, 0}), 0, io.ErrUnexpectedEOF, false, true},
		{"header only", bytes.NewReader(header(10)), 0, io.ErrUnexpectedEOF, false, true},
		{"truncated payload", bytes.NewReader(frameOf(50)[:30]), 0, io.ErrUnexpectedEOF, false, true},
		{"one byte short", bytes.NewReader(frameOf(50)[:53]), 0, io.ErrUnexpectedEOF, false, true},
		{"I/O error between frames", iotest.ErrReader(ioErr), 0, ioErr, false, false},
		{"I/O error in a frame", io.MultiReader(bytes.NewReader(frameOf(50)[:20]), iotest.ErrReader(ioErr)), 0, ioErr, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := newFrameReader(tt.r, max)
			k, p, err := fr.next()
			switch {
			case tt.wantProto:
				wantProtocolError(t, err)
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
			default:
				if err != nil {
					t.Fatalf("got %v, want a frame", err)
				}
				if k != KindBody || len(p) != tt.wantLen {
					t.Fatalf("got %s frame of %d bytes, want body of %d", k, len(p), tt.wantLen)
				}
			}
			// Only I/O errors are classified; after a protocol error the
			// caller drops the stream whatever partial says.
			if !tt.wantProto && fr.partial != tt.partial {
				t.Errorf("partial = %v, want %v", fr.partial, tt.partial)
			}
			if tt.partial {
				// A desynchronised stream must not be read again.
				_, _, err := fr.next()
				wantProtocolError(t, err)
			}
		})
	}
}

// stallReader reads data, failing once with a read deadline when it reaches
// byte at.
type stallReader struct {
	data    []byte
	pos, at int
	stalled bool
}

func (r *stallReader) Read(p []byte) (int, error) {
	if r.pos == r.at && !r.stalled {
		r.stalled = true
		return 0, os.ErrDeadlineExceeded
	}
	end := len(r.data)
	if !r.stalled {
		end = r.at
	}
	if r.pos == len(r.data) {
		return 0, io.EOF
	}
	n := copy(p, r.data[r.pos:end])
	r.pos += n
	return n, nil
}

// TestFrameReaderResumesAfterDeadline: a read deadline anywhere, between
// frames, in a header or in a payload, loses nothing: the next call
// returns the frame it interrupted.
func TestFrameReaderResumesAfterDeadline(t *testing.T) {
	fw := newFrameWriter()
	var stream []byte
	stream = append(stream, fw.response(&Response{ID: 1, Status: 200, Header: http.Header{"A": {"b"}}})...)
	stream = append(stream, fw.body(1, patterned(300))...)
	stream = append(stream, fw.end(1, nil)...)
	want, err := readFrames(t, bytes.NewReader(stream), 1000)
	if err != io.EOF || len(want) != 3 {
		t.Fatalf("%d frames, %v", len(want), err)
	}
	for at := 0; at <= len(stream); at++ {
		fr := newFrameReader(&stallReader{data: stream, at: at}, 1000)
		var got [][]byte
		stalls := 0
		for {
			k, p, err := fr.next()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				stalls++
				if fr.partial {
					t.Fatalf("stall at %d: the deadline desynchronised the stream", at)
				}
				if fr.inFrame() != (at > 0 && at < len(stream) && !isFrameStart(stream, at)) {
					t.Fatalf("stall at %d: inFrame() = %v", at, fr.inFrame())
				}
				continue
			}
			if err != nil {
				if err != io.EOF {
					t.Fatalf("stall at %d: %v", at, err)
				}
				break
			}
			got = append(got, append([]byte{byte(k)}, p...))
		}
		if stalls != 1 || !reflect.DeepEqual(got, want) {
			t.Fatalf("stall at %d: %d stalls, frames differ: %d, want %d", at, stalls, len(got), len(want))
		}
	}
}

// isFrameStart reports whether a frame of stream starts at offset at.
func isFrameStart(stream []byte, at int) bool {
	for i := 0; i < len(stream); i += lenPrefix + int(binary.BigEndian.Uint32(stream[i:])) {
		if i == at {
			return true
		}
	}
	return false
}

// TestFrameReaderHugeLengthAllocs checks that a declared length is checked
// before any buffer is allocated for it.
func TestFrameReaderHugeLengthAllocs(t *testing.T) {
	in := binary.BigEndian.AppendUint32(nil, math.MaxUint32)
	var r bytes.Reader
	fr := newFrameReader(&r, DefaultMaxFrame)
	n := allocBytes(20, func() {
		r.Reset(in)
		fr.partial = false
		if _, _, err := fr.next(); err == nil {
			t.Fatal("no error")
		}
	})
	if n > 4<<10 {
		t.Errorf("rejecting an oversized frame allocated %d bytes", n)
	}
}

func TestFrameWriterLengthPrefix(t *testing.T) {
	fw := newFrameWriter()
	for _, n := range []int{0, 1, 100, ChunkSize} {
		b := fw.body(1, make([]byte, n))
		if got := int(binary.BigEndian.Uint32(b)); got != len(b)-lenPrefix {
			t.Errorf("body of %d: length prefix %d, frame has %d bytes after it", n, got, len(b)-lenPrefix)
		}
		if Kind(b[lenPrefix]) != KindBody {
			t.Errorf("kind byte %d, want %d", b[lenPrefix], KindBody)
		}
	}
}

// A body frame written in two parts is, byte for byte, the frame body
// builds, on a socket (one writev) as on a pipe (two writes).
func TestBodyPartsSameBytes(t *testing.T) {
	for _, n := range []int{0, 1, splitBody - 1, splitBody, splitBody + 1, 40000, ChunkSize} {
		data := patterned(n)
		want := append([]byte(nil), newFrameWriter().body(7, data)...)
		head, tail := newFrameWriter().bodyParts(7, data)
		if split := len(tail) > 0; split != (n >= splitBody) {
			t.Errorf("%d bytes: split %v", n, split)
		}
		if got := append(append([]byte(nil), head...), tail...); !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: parts differ from the whole frame", n)
		}
		for name, pair := range map[string]func() (net.Conn, net.Conn){
			"socket": func() (net.Conn, net.Conn) { return socketpair(t) },
			"pipe":   net.Pipe,
		} {
			a, b := pair()
			errc := make(chan error, 1)
			go func() { errc <- writeFrame(a, head, tail); a.Close() }()
			got, err := io.ReadAll(b)
			b.Close()
			if err != nil || <-errc != nil {
				t.Fatalf("%s, %d bytes: %v", name, n, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s, %d bytes: %d bytes arrived, want the %d of the frame", name, n, len(got), len(want))
			}
		}
	}
}

// The dispatcher announces wide-chunk only with a frame limit that holds a
// wide chunk, and every other feature whatever its limit.
func TestAnnounced(t *testing.T) {
	for _, tc := range []struct {
		maxFrame int
		wide     bool
	}{{DefaultMaxFrame, true}, {WideChunkMaxFrame, true}, {WideChunkMaxFrame - 1, false}, {MinMaxFrame, false}} {
		got := Announced(tc.maxFrame)
		var want []string
		for _, f := range Features {
			if f != FeatureWideChunk || tc.wide {
				want = append(want, f)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Announced(%d) = %v, want %v", tc.maxFrame, got, want)
		}
	}
	if !slices.Contains(Features, FeatureWideChunk) {
		t.Errorf("Features %v lack %s", Features, FeatureWideChunk)
	}
}
