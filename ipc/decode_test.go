package ipc

import (
	"bytes"
	"errors"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Raw msgpack headers with declared lengths that the payload does not hold.
var (
	map32Huge   = []byte{0xdf, 0x00, 0x0f, 0x42, 0x40} // map of 1e6 entries
	map16Many   = []byte{0xde, 0x01, 0x00}             // map of 256 entries
	array32Huge = []byte{0xdd, 0xff, 0xff, 0xff, 0xff} // array of 4Gi-1 elements
	str32Huge   = []byte{0xdb, 0xff, 0xff, 0xff, 0xff} // string of 4 GiB - 1
	bin32Huge   = []byte{0xc6, 0xff, 0xff, 0xff, 0xff} // bin of 4 GiB - 1
	ext32Huge   = []byte{0xc9, 0xff, 0xff, 0xff, 0xff} // ext of 4 GiB - 1
	str16Short  = []byte{0xda, 0x01, 0x00, 'a', 'b'}   // string of 256 bytes, 2 present
)

type fieldEnc = func(e *msgpack.Encoder)

func raw(b ...byte) fieldEnc {
	return func(e *msgpack.Encoder) { _ = e.Encode(msgpack.RawMessage(b)) }
}

func str(s string) fieldEnc { return func(e *msgpack.Encoder) { _ = e.EncodeString(s) } }
func uintF(v uint64) fieldEnc {
	return func(e *msgpack.Encoder) { _ = e.EncodeUint(v) }
}
func intF(v int64) fieldEnc { return func(e *msgpack.Encoder) { _ = e.EncodeInt(v) } }
func boolF(v bool) fieldEnc { return func(e *msgpack.Encoder) { _ = e.EncodeBool(v) } }
func binF(b []byte) fieldEnc {
	return func(e *msgpack.Encoder) { _ = e.EncodeBytes(b) }
}
func hdrF(h http.Header) fieldEnc { return func(e *msgpack.Encoder) { encodeHeader(e, h) } }

// nested returns a value nested depth arrays deep.
func nested(depth int) fieldEnc {
	b := append(bytes.Repeat([]byte{0x91}, depth), 0xc0)
	return raw(b...)
}

func requestFieldsEnc() []fieldEnc {
	return []fieldEnc{
		uintF(7), str("GET"), str("/p?q"), str("HTTP/1.1"),
		hdrF(http.Header{"A": {"1", "2"}}), str("h"), str("1.2.3.4:5"),
		intF(-1), str("rid"), binF([]byte("body")), boolF(true),
	}
}

func responseFieldsEnc() []fieldEnc {
	return []fieldEnc{
		uintF(7), intF(200), hdrF(http.Header{"A": {"1"}}), binF([]byte("b")), boolF(true), hdrF(nil),
	}
}

// payload encodes an array of n elements holding fields (n may differ from
// len(fields)), with field i replaced by repl[i], then the tail bytes.
func payload(tb testing.TB, n int, fields []fieldEnc, repl map[int]fieldEnc, tail ...byte) []byte {
	tb.Helper()
	return mp(tb, func(e *msgpack.Encoder) {
		_ = e.EncodeArrayLen(n)
		for i, f := range fields {
			if r, ok := repl[i]; ok {
				f = r
			}
			f(e)
		}
	}, tail...)
}

type decodeCase struct {
	name    string
	kind    Kind
	payload []byte
	ok      bool
	check   func(tb testing.TB, d decoded)
}

func decodeCases(tb testing.TB) []decodeCase {
	tb.Helper()
	req := requestFieldsEnc()
	resp := responseFieldsEnc()
	two := func(a, b fieldEnc) []fieldEnc { return []fieldEnc{a, b} }
	withExtra := func(fields []fieldEnc, extra ...fieldEnc) []fieldEnc {
		return append(append([]fieldEnc(nil), fields...), extra...)
	}
	reqCase := func(name string, repl map[int]fieldEnc) decodeCase {
		return decodeCase{name: "request/" + name, kind: KindRequest, payload: payload(tb, len(req), req, repl)}
	}
	respCase := func(name string, repl map[int]fieldEnc, ok bool) decodeCase {
		return decodeCase{name: "response/" + name, kind: KindResponse, payload: payload(tb, len(resp), resp, repl), ok: ok}
	}
	// The twelfth element (continue) is a bool, the thirteenth (timeout_ms)
	// a uint; later ones are unknown.
	extraReq := withExtra(req, boolF(false), uintF(30000), hdrF(http.Header{"x": {"y"}}), raw(0xd4, 0x01, 0x02), nested(8),
		func(e *msgpack.Encoder) { _ = e.EncodeFloat64(1.5) }, str(strings.Repeat("z", 300)), binF(make([]byte, 70000)))
	deep := withExtra(req, boolF(false), uintF(0), nested(10000))

	return []decodeCase{
		// Requests.
		{name: "request/valid", kind: KindRequest, payload: payload(tb, len(req), req, nil), ok: true,
			check: func(tb testing.TB, d decoded) {
				want := &Request{ID: 7, Method: "GET", URI: "/p?q", Proto: "HTTP/1.1", Header: http.Header{"A": {"1", "2"}},
					Host: "h", RemoteAddr: "1.2.3.4:5", ContentLength: -1, RequestID: "rid", Body: []byte("body"), EOF: true}
				if !reflect.DeepEqual(d.Request, want) {
					tb.Errorf("got %+v, want %+v", d.Request, want)
				}
			}},
		{name: "request/extra trailing fields", kind: KindRequest, payload: payload(tb, len(extraReq), extraReq, nil), ok: true,
			check: func(tb testing.TB, d decoded) {
				if d.Request.ID != 7 || string(d.Request.Body) != "body" || !d.Request.EOF {
					tb.Errorf("fields lost to the trailing ones: %+v", d.Request)
				}
			}},
		{name: "request/deeply nested trailing field", kind: KindRequest, payload: payload(tb, len(deep), deep, nil), ok: true},
		{name: "request/10 fields", kind: KindRequest, payload: payload(tb, 10, req[:10], nil)},
		{name: "request/0 fields", kind: KindRequest, payload: payload(tb, 0, nil, nil)},
		{name: "request/declares more fields than present", kind: KindRequest, payload: payload(tb, 12, req, nil)},
		{name: "request/continue not a bool", kind: KindRequest, payload: payload(tb, 12, withExtra(req, str("yes")), nil)},
		{name: "request/continue on a whole body", kind: KindRequest, payload: payload(tb, 12, withExtra(req, boolF(true)), nil)},
		{name: "request/continue", kind: KindRequest, ok: true,
			payload: payload(tb, 12, withExtra(req, boolF(true)), map[int]fieldEnc{9: binF(nil), 10: boolF(false)}),
			check: func(tb testing.TB, d decoded) {
				if !d.Request.Continue || d.Request.EOF {
					tb.Errorf("continue lost: %+v", d.Request)
				}
			}},
		{name: "request/timeout_ms", kind: KindRequest, ok: true,
			payload: payload(tb, 13, withExtra(withExtra(req, boolF(false)), uintF(2500)), nil),
			check: func(tb testing.TB, d decoded) {
				if d.Request.Timeout != 2500*time.Millisecond || d.Request.Continue {
					tb.Errorf("timeout_ms lost: %+v", d.Request)
				}
			}},
		{name: "request/timeout_ms not a uint", kind: KindRequest, payload: payload(tb, 13, withExtra(withExtra(req, boolF(false)), str("1s")), nil)},
		{name: "request/timeout_ms overflows a duration", kind: KindRequest, payload: payload(tb, 13, withExtra(withExtra(req, boolF(false)), uintF(math.MaxUint64)), nil)},
		{name: "request/empty payload", kind: KindRequest, payload: nil},
		{name: "request/nil", kind: KindRequest, payload: []byte{0xc0}},
		{name: "request/map", kind: KindRequest, payload: []byte{0x80}},
		{name: "request/never-used code", kind: KindRequest, payload: []byte{0xc1}},
		{name: "request/array32 of 4Gi", kind: KindRequest, payload: array32Huge},
		{name: "request/truncated", kind: KindRequest, payload: func() []byte { p := payload(tb, len(req), req, nil); return p[:len(p)-1] }()},
		{name: "request/bytes after the payload", kind: KindRequest, payload: payload(tb, len(req), req, nil, 0x00)},
		reqCase("id is a string", map[int]fieldEnc{0: str("7")}),
		reqCase("id is a float", map[int]fieldEnc{0: func(e *msgpack.Encoder) { _ = e.EncodeFloat64(7) }}),
		reqCase("method is an int", map[int]fieldEnc{1: intF(1)}),
		reqCase("method str32 of 4 GiB", map[int]fieldEnc{1: raw(str32Huge...)}),
		reqCase("uri str16 past the end", map[int]fieldEnc{2: raw(str16Short...)}),
		reqCase("header map32 of 1e6 entries", map[int]fieldEnc{4: raw(map32Huge...)}),
		reqCase("header map16 of 256 entries", map[int]fieldEnc{4: raw(map16Many...)}),
		reqCase("header key is an int", map[int]fieldEnc{4: raw(0x81, 0x01, 0x90)}),
		reqCase("header key str32 of 4 GiB", map[int]fieldEnc{4: raw(append([]byte{0x81}, str32Huge...)...)}),
		reqCase("header values are a string", map[int]fieldEnc{4: raw(0x81, 0xa1, 'a', 0xa1, 'b')}),
		reqCase("header values array32 of 4Gi", map[int]fieldEnc{4: raw(append([]byte{0x81, 0xa1, 'a'}, array32Huge...)...)}),
		reqCase("header value is an int", map[int]fieldEnc{4: raw(0x81, 0xa1, 'a', 0x91, 0x01)}),
		reqCase("header value str32 of 4 GiB", map[int]fieldEnc{4: raw(append([]byte{0x81, 0xa1, 'a', 0x91}, str32Huge...)...)}),
		reqCase("header is a string", map[int]fieldEnc{4: str("A: 1")}),
		reqCase("content length is a string", map[int]fieldEnc{7: str("-1")}),
		reqCase("body bin32 of 4 GiB", map[int]fieldEnc{9: raw(bin32Huge...)}),
		reqCase("body is an int", map[int]fieldEnc{9: intF(3)}),
		reqCase("eof is an int", map[int]fieldEnc{10: intF(1)}),
		{name: "request/trailing str32 of 4 GiB", kind: KindRequest, payload: payload(tb, 12, withExtra(req, raw(str32Huge...)), nil)},
		{name: "request/trailing bin32 of 4 GiB", kind: KindRequest, payload: payload(tb, 12, withExtra(req, raw(bin32Huge...)), nil)},
		{name: "request/trailing ext32 of 4 GiB", kind: KindRequest, payload: payload(tb, 12, withExtra(req, raw(ext32Huge...)), nil)},
		{name: "request/trailing array32 of 4Gi", kind: KindRequest, payload: payload(tb, 12, withExtra(req, raw(array32Huge...)), nil)},
		{name: "request/trailing map32 of 1e6", kind: KindRequest, payload: payload(tb, 12, withExtra(req, raw(map32Huge...)), nil)},
		{name: "request/trailing never-used code", kind: KindRequest, payload: payload(tb, 12, withExtra(req, raw(0xc1)), nil)},
		{name: "request/trailing nesting truncated", kind: KindRequest, payload: payload(tb, 12, withExtra(req, raw(bytes.Repeat([]byte{0x91}, 1000)...)), nil)},

		// Responses.
		{name: "response/valid", kind: KindResponse, payload: payload(tb, len(resp), resp, nil), ok: true,
			check: func(tb testing.TB, d decoded) {
				want := &Response{ID: 7, Status: 200, Header: http.Header{"A": {"1"}}, Body: []byte("b"), EOF: true}
				if !reflect.DeepEqual(d.Response, want) {
					tb.Errorf("got %+v, want %+v", d.Response, want)
				}
			}},
		{name: "response/8 fields", kind: KindResponse, payload: payload(tb, 8, withExtra(resp, str("new"), intF(3)), nil), ok: true},
		{name: "response/5 fields", kind: KindResponse, payload: payload(tb, 5, resp[:5], nil)},
		respCase("status 100", map[int]fieldEnc{1: intF(100)}, true),
		respCase("status 999", map[int]fieldEnc{1: intF(999)}, true),
		respCase("status 99", map[int]fieldEnc{1: intF(99)}, false),
		respCase("status 1000", map[int]fieldEnc{1: intF(1000)}, false),
		respCase("status 0", map[int]fieldEnc{1: intF(0)}, false),
		respCase("status -200", map[int]fieldEnc{1: intF(-200)}, false),
		respCase("status 2^40+200", map[int]fieldEnc{1: intF(1<<40 + 200)}, false),
		respCase("status max uint64", map[int]fieldEnc{1: uintF(math.MaxUint64)}, false),
		respCase("status is a string", map[int]fieldEnc{1: str("200")}, false),
		respCase("trailer map32 of 1e6", map[int]fieldEnc{5: raw(map32Huge...)}, false),
		respCase("body bin32 of 4 GiB", map[int]fieldEnc{3: raw(bin32Huge...)}, false),

		// Body frames.
		{name: "body/valid", kind: KindBody, payload: payload(tb, 2, two(uintF(1), binF([]byte("xyz"))), nil), ok: true,
			check: func(tb testing.TB, d decoded) {
				if d.ID != 1 || string(d.Data) != "xyz" {
					tb.Errorf("got %+v", d)
				}
			}},
		{name: "body/nil data", kind: KindBody, payload: payload(tb, 2, two(uintF(1), raw(0xc0)), nil), ok: true},
		{name: "body/extra field", kind: KindBody, payload: payload(tb, 3, []fieldEnc{uintF(1), binF(nil), boolF(true)}, nil), ok: true},
		{name: "body/1 field", kind: KindBody, payload: payload(tb, 1, []fieldEnc{uintF(1)}, nil)},
		{name: "body/bin past the end", kind: KindBody, payload: payload(tb, 2, two(uintF(1), raw(0xc4, 10, 'a')), nil)},
		{name: "body/bin32 of 4 GiB", kind: KindBody, payload: payload(tb, 2, two(uintF(1), raw(bin32Huge...)), nil)},
		{name: "body/bytes after", kind: KindBody, payload: payload(tb, 2, two(uintF(1), binF([]byte("a"))), nil, 0xc0)},

		// End frames.
		{name: "end/valid", kind: KindEnd, payload: payload(tb, 2, two(uintF(2), hdrF(http.Header{"T": {"v"}})), nil), ok: true},
		{name: "end/trailer map32 of 1e6", kind: KindEnd, payload: payload(tb, 2, two(uintF(2), raw(map32Huge...)), nil)},
		{name: "end/trailer is an int", kind: KindEnd, payload: payload(tb, 2, two(uintF(2), intF(1)), nil)},

		// Cancel, ping and pong.
		{name: "cancel/valid", kind: KindCancel, payload: payload(tb, 1, []fieldEnc{uintF(3)}, nil), ok: true},
		{name: "ping/extra fields", kind: KindPing, payload: payload(tb, 3, []fieldEnc{uintF(3), str("x"), raw(0xc0)}, nil), ok: true},
		{name: "pong/0 fields", kind: KindPong, payload: payload(tb, 0, nil, nil)},
		{name: "pong/id is a string", kind: KindPong, payload: payload(tb, 1, []fieldEnc{str("3")}, nil)},
		{name: "pong/bytes after", kind: KindPong, payload: payload(tb, 1, []fieldEnc{uintF(3)}, nil, 0x01)},
		{name: "pong/features", kind: KindPong, payload: payload(tb, 2, two(uintF(3), raw(0x92, 0xa1, 'x', 0xc4, 0x08, 'h', 'e', 'a', 'd', '-', 'a', 'c', 'k')), nil), ok: true,
			check: func(tb testing.TB, d decoded) {
				if d.ID != 3 || !d.HeadAck {
					tb.Errorf("got %+v, want id 3 with head-ack (sent as bin)", d)
				}
			}},
		{name: "pong/features nil, and more fields", kind: KindPong, payload: payload(tb, 3, []fieldEnc{uintF(3), raw(0xc0), str("x")}, nil), ok: true},
		{name: "pong/features is a string", kind: KindPong, payload: payload(tb, 2, two(uintF(3), str(FeatureHeadAck)), nil)},
		{name: "pong/feature is an int", kind: KindPong, payload: payload(tb, 2, two(uintF(3), raw(0x91, 0x01)), nil)},
		{name: "pong/features array32 of 4Gi", kind: KindPong, payload: payload(tb, 2, two(uintF(3), raw(array32Huge...)), nil)},

		// Window frames.
		{name: "window/full", kind: KindWindow, payload: payload(tb, 2, two(uintF(4), uintF(Window)), nil), ok: true},
		{name: "window/over", kind: KindWindow, payload: payload(tb, 2, two(uintF(4), uintF(WideWindow+1)), nil)},
		{name: "window/max uint64", kind: KindWindow, payload: payload(tb, 2, two(uintF(4), uintF(math.MaxUint64)), nil)},
		{name: "window/negative", kind: KindWindow, payload: payload(tb, 2, two(uintF(4), intF(-1)), nil)},
		{name: "window/1 field", kind: KindWindow, payload: payload(tb, 1, []fieldEnc{uintF(4)}, nil)},

		// Abort frames.
		{name: "abort/valid", kind: KindAbort, payload: payload(tb, 2, two(uintF(5), str("why")), nil), ok: true},
		{name: "abort/reason is an int", kind: KindAbort, payload: payload(tb, 2, two(uintF(5), intF(1)), nil)},
		{name: "abort/reason str32 of 4 GiB", kind: KindAbort, payload: payload(tb, 2, two(uintF(5), raw(str32Huge...)), nil)},
	}
}

func TestDecodeBounded(t *testing.T) {
	for _, tc := range decodeCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			pd := newPayloadDecoder()
			done := make(chan struct{})
			var d decoded
			var err error
			start := time.Now()
			go func() {
				defer close(done)
				d, err = decodePayload(pd, tc.kind, tc.payload)
			}()
			recvOrFail(t, done, "the decoder")
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("decoding %d bytes took %s", len(tc.payload), el)
			}
			if tc.ok {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if tc.check != nil {
					tc.check(t, d)
				}
			} else {
				pe := wantProtocolError(t, err)
				if pe.Kind != tc.kind {
					t.Errorf("ProtocolError.Kind = %s, want %s", pe.Kind, tc.kind)
				}
				if pe.Reason == "" {
					t.Error("empty reason")
				}
			}
			// Whatever the payload declares, decoding it allocates a small
			// multiple of its size, and never the sizes it declares.
			limit := uint64(16<<10 + 4*len(tc.payload))
			if n := allocBytes(10, func() { _, _ = decodePayload(pd, tc.kind, tc.payload) }); n > limit {
				t.Errorf("decoding a %d-byte payload allocated %d bytes (limit %d)", len(tc.payload), n, limit)
			}
		})
	}
}

// TestDecodeHugeMapAllocs is the acceptance check for hostile map headers:
// a request whose header claims a million entries in a tiny frame fails
// fast without allocating for them.
func TestDecodeHugeMapAllocs(t *testing.T) {
	req := requestFieldsEnc()
	p := payload(t, len(req), req, map[int]fieldEnc{4: raw(map32Huge...)})
	if len(p) > 64 {
		t.Fatalf("payload of %d bytes is not tiny", len(p))
	}
	pd := newPayloadDecoder()
	if _, err := decodePayload(pd, KindRequest, p); err == nil {
		t.Fatal("no error")
	}
	allocs := testing.AllocsPerRun(100, func() { _, _ = decodePayload(pd, KindRequest, p) })
	if allocs > 20 {
		t.Errorf("%v allocations per decode", allocs)
	}
	if n := allocBytes(100, func() { _, _ = decodePayload(pd, KindRequest, p) }); n > 1<<20 {
		t.Errorf("%d bytes allocated per decode", n)
	}
}

// TestDecodeErrorsAreProtocolErrors checks that a wrapped msgpack error keeps
// the field name, and that a ProtocolError is not wrapped twice.
func TestDecodeErrorsAreProtocolErrors(t *testing.T) {
	pd := newPayloadDecoder()
	req := requestFieldsEnc()
	_, err := decodePayload(pd, KindRequest, payload(t, len(req), req, map[int]fieldEnc{7: str("x")}))
	pe := wantProtocolError(t, err)
	if !strings.Contains(pe.Reason, "content_length") {
		t.Errorf("reason %q does not name the field", pe.Reason)
	}
	if e := pd.wrap("x", pe); e != error(pe) {
		t.Errorf("wrap re-wrapped a ProtocolError: %v", e)
	}
	var target *ProtocolError
	if !errors.As(pd.wrap("f", errors.New("boom")), &target) || !strings.Contains(target.Reason, "field f: boom") {
		t.Errorf("wrap: got %v", target)
	}
}

// TestDecodeDeepNesting skips a trailing field nested as deep as the largest
// frame allows. msgpack's own Skip recursed once per level (about 128 MiB of
// goroutine stack and a second of CPU for one frame); the decoder's skip is
// iterative.
func TestDecodeDeepNesting(t *testing.T) {
	req := requestFieldsEnc()
	fields := append(requestFieldsEnc(), boolF(false), uintF(0), nested(DefaultMaxFrame-128))
	p := payload(t, len(fields), fields, nil)
	frame := rawFrame(KindRequest, p)
	fr := newFrameReader(bytes.NewReader(frame), DefaultMaxFrame)
	k, b, err := fr.next()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d, err := decodePayload(newPayloadDecoder(), k, b)
	if err != nil {
		t.Fatal(err)
	}
	if d.Request.ID != 7 {
		t.Errorf("id %d", d.Request.ID)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("skipping took %s", el)
	}
	// The same nesting, one level short of its end, is rejected.
	truncated := payload(t, len(req)+3, append(req, boolF(false), uintF(0), raw(bytes.Repeat([]byte{0x91}, 1<<16)...)), nil)
	_, err = decodePayload(newPayloadDecoder(), KindRequest, truncated)
	wantProtocolError(t, err)
}
