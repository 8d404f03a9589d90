package ipc

import (
	"encoding/binary"
	"net/http"
	"time"
)

// Request is the head of an HTTP request as the worker sees it. Its wire form
// is documented in the package doc; every field here is on the wire.
type Request struct {
	ID            uint64      // per-connection exchange number, set by Conn.RoundTrip
	Method        string      // "GET", "POST", ...
	URI           string      // request-target as received: "/path?query"
	Proto         string      // "HTTP/1.1", "HTTP/2.0"
	Header        http.Header // all headers except hop-by-hop ones
	Host          string      // Host header or :authority
	RemoteAddr    string      // the real client's "ip:port"
	ContentLength int64       // -1 when unknown (chunked)
	RequestID     string      // correlates logs of the dispatcher and worker
	Body          []byte      // the whole body if EOF, else its first chunk
	EOF           bool        // true: Body is complete, no body frames follow
	// Continue: the client sent "Expect: 100-continue", and no byte of
	// its body is read before the worker's handler asks for it. Set (in
	// the request's twelfth element) only for a worker that lists
	// FeatureContinue in its pongs: the exchange then starts with no
	// credit, and the worker grants the window at the handler's first read
	// of the body. Body must be empty and EOF false.
	Continue bool
	// Timeout is how long the handler has, from the moment the worker
	// starts the request, to send its response head: the dispatcher's
	// request timeout (0: none). It travels, in whole milliseconds, as the
	// thirteenth element, after continue.
	Timeout time.Duration

	// Set lists header fields sent in place of Header's fields of the same
	// name (one value each, distinct names): a sender adds or replaces a few
	// fields without copying Header. On the wire they are part of the header
	// map.
	Set []HeaderField

	// Trailer, if non-nil, is read after the body reached EOF and sent in the
	// end frame. It is not part of the request frame. The dispatcher passes
	// http.Request.Trailer, which net/http fills as the body is read.
	Trailer http.Header

	// Informer, if set, receives the informational (1xx) responses the
	// worker sends before its response head, as they arrive, on the
	// goroutine reading the head. Not on the wire.
	Informer Informer
}

// Informer receives a worker's informational responses (103 Early Hints,
// 102 Processing...). status is 100-199 but never 101; header is valid
// until the call returns.
type Informer interface {
	Informational(status int, header http.Header)
}

// HeaderField is one header field with one value.
type HeaderField struct {
	Name, Value string // Name in canonical form
}

// Response is the head of a worker's response.
type Response struct {
	ID      uint64
	Status  int
	Header  http.Header
	Body    []byte      // inline body bytes (all of it if EOF)
	EOF     bool        // true: the response is complete in this frame
	Trailer http.Header // trailers, only when EOF
}

const (
	requestFields  = 11 // at least; continue and timeout_ms are optional
	responseFields = 6
)

// request encodes r; cont sets its continue element (Request.Continue). The
// optional elements are sent only when needed: continue when set or when
// timeout_ms follows it, timeout_ms when r.Timeout is positive.
func (fw *frameWriter) request(r *Request, cont bool) []byte {
	fw.begin(KindRequest)
	e := fw.enc
	timeoutMS := timeoutMillis(r.Timeout)
	switch {
	case timeoutMS > 0:
		_ = e.EncodeArrayLen(requestFields + 2)
	case cont:
		_ = e.EncodeArrayLen(requestFields + 1)
	default:
		_ = e.EncodeArrayLen(requestFields)
	}
	_ = e.EncodeUint(r.ID)
	_ = e.EncodeString(r.Method)
	_ = e.EncodeString(r.URI)
	_ = e.EncodeString(r.Proto)
	if len(r.Set) == 0 {
		encodeHeader(e, r.Header)
	} else {
		encodeHeaderSet(e, r.Header, r.Set)
	}
	_ = e.EncodeString(r.Host)
	_ = e.EncodeString(r.RemoteAddr)
	_ = e.EncodeInt(r.ContentLength)
	_ = e.EncodeString(r.RequestID)
	_ = e.EncodeBytes(r.Body)
	_ = e.EncodeBool(r.EOF)
	if cont || timeoutMS > 0 {
		_ = e.EncodeBool(cont)
	}
	if timeoutMS > 0 {
		_ = e.EncodeUint(timeoutMS)
	}
	return fw.finish()
}

// timeoutMillis rounds a positive timeout up to whole milliseconds, so that
// a timeout below one millisecond is not sent as none.
func timeoutMillis(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond)
}

func (fw *frameWriter) response(r *Response) []byte {
	fw.begin(KindResponse)
	e := fw.enc
	_ = e.EncodeArrayLen(responseFields)
	_ = e.EncodeUint(r.ID)
	_ = e.EncodeInt(int64(r.Status))
	encodeHeader(e, r.Header)
	_ = e.EncodeBytes(r.Body)
	_ = e.EncodeBool(r.EOF)
	encodeHeader(e, r.Trailer)
	return fw.finish()
}

func (fw *frameWriter) body(id uint64, data []byte) []byte {
	fw.begin(KindBody)
	_ = fw.enc.EncodeArrayLen(2)
	_ = fw.enc.EncodeUint(id)
	_ = fw.enc.EncodeBytes(data)
	return fw.finish()
}

// splitBody is the size from which a body frame goes out as two parts
// (bodyParts): below it, copying the data costs less than the second iovec.
const splitBody = 4 << 10

// bodyParts returns a body frame as the bytes the writer built and, for a
// chunk of at least splitBody bytes, data itself, which then follows them
// on the wire without being copied (writeFrame). Together they are the same
// bytes body returns.
func (fw *frameWriter) bodyParts(id uint64, data []byte) (head, tail []byte) {
	if len(data) < splitBody {
		return fw.body(id, data), nil
	}
	fw.begin(KindBody)
	_ = fw.enc.EncodeArrayLen(2)
	_ = fw.enc.EncodeUint(id)
	_ = fw.enc.EncodeBytesLen(len(data))
	b := fw.buf.Bytes()
	binary.BigEndian.PutUint32(b, uint32(len(b)-lenPrefix+len(data)))
	return b, data
}

func (fw *frameWriter) end(id uint64, trailer http.Header) []byte {
	fw.begin(KindEnd)
	_ = fw.enc.EncodeArrayLen(2)
	_ = fw.enc.EncodeUint(id)
	encodeHeader(fw.enc, trailer)
	return fw.finish()
}

func (fw *frameWriter) informational(id uint64, status int, header http.Header) []byte {
	fw.begin(KindInformational)
	_ = fw.enc.EncodeArrayLen(3)
	_ = fw.enc.EncodeUint(id)
	_ = fw.enc.EncodeInt(int64(status))
	encodeHeader(fw.enc, header)
	return fw.finish()
}

// idFrame encodes cancel, ping and pong: a single unsigned integer.
func (fw *frameWriter) idFrame(k Kind, id uint64) []byte {
	fw.begin(k)
	_ = fw.enc.EncodeArrayLen(1)
	_ = fw.enc.EncodeUint(id)
	return fw.finish()
}

// pong encodes a pong: [id], or [id, features] when the worker lists the
// optional features it uses.
func (fw *frameWriter) pong(id uint64, features []string) []byte {
	if len(features) == 0 {
		return fw.idFrame(KindPong, id)
	}
	fw.begin(KindPong)
	_ = fw.enc.EncodeArrayLen(2)
	_ = fw.enc.EncodeUint(id)
	_ = fw.enc.EncodeArrayLen(len(features))
	for _, f := range features {
		_ = fw.enc.EncodeString(f)
	}
	return fw.finish()
}

func (fw *frameWriter) window(id uint64, n int) []byte {
	fw.begin(KindWindow)
	_ = fw.enc.EncodeArrayLen(2)
	_ = fw.enc.EncodeUint(id)
	_ = fw.enc.EncodeUint(uint64(n))
	return fw.finish()
}

func (fw *frameWriter) abort(id uint64, reason string) []byte {
	fw.begin(KindAbort)
	_ = fw.enc.EncodeArrayLen(2)
	_ = fw.enc.EncodeUint(id)
	_ = fw.enc.EncodeString(reason)
	return fw.finish()
}

// need checks that a payload array has at least the fields this version
// requires.
func (d *payloadDecoder) need(n, min int) error {
	if n < min {
		return d.fail("%d fields, want at least %d", n, min)
	}
	return nil
}

func (d *payloadDecoder) request() (*Request, error) {
	n, err := d.arrayLen()
	if err != nil {
		return nil, err
	}
	if err := d.need(n, requestFields); err != nil {
		return nil, err
	}
	r := &Request{}
	if r.ID, err = d.uint("id"); err != nil {
		return nil, err
	}
	if r.Method, err = d.string("method"); err != nil {
		return nil, err
	}
	if r.URI, err = d.string("uri"); err != nil {
		return nil, err
	}
	if r.Proto, err = d.string("proto"); err != nil {
		return nil, err
	}
	if r.Header, err = d.header("header"); err != nil {
		return nil, err
	}
	if r.Host, err = d.string("host"); err != nil {
		return nil, err
	}
	if r.RemoteAddr, err = d.string("remote_addr"); err != nil {
		return nil, err
	}
	if r.ContentLength, err = d.int("content_length"); err != nil {
		return nil, err
	}
	if r.RequestID, err = d.string("request_id"); err != nil {
		return nil, err
	}
	if r.Body, err = d.bytes("body"); err != nil {
		return nil, err
	}
	if r.EOF, err = d.bool("eof"); err != nil {
		return nil, err
	}
	if n == requestFields {
		return r, d.skip(0)
	}
	if r.Continue, err = d.bool("continue"); err != nil {
		return nil, err
	}
	if r.Continue && (r.EOF || len(r.Body) > 0) {
		return nil, d.fail("field continue: set on a request whose body was read")
	}
	if n == requestFields+1 {
		return r, d.skip(0)
	}
	ms, err := d.uint("timeout_ms")
	if err != nil {
		return nil, err
	}
	if ms > maxTimeoutMillis {
		return nil, d.fail("field timeout_ms: %d is over %d", ms, uint64(maxTimeoutMillis))
	}
	r.Timeout = time.Duration(ms) * time.Millisecond
	return r, d.skip(n - requestFields - 2)
}

// maxTimeoutMillis is the largest timeout_ms a worker accepts: larger
// values would overflow a time.Duration.
const maxTimeoutMillis = uint64(1<<63-1) / uint64(time.Millisecond)

func (d *payloadDecoder) response() (*Response, error) {
	r := &Response{}
	if err := d.responseInto(r); err != nil {
		return nil, err
	}
	return r, nil
}

// responseInto decodes a response frame into r (the dispatcher decodes
// into its ticket: no allocation).
func (d *payloadDecoder) responseInto(r *Response) error {
	*r = Response{}
	n, err := d.arrayLen()
	if err != nil {
		return err
	}
	if err := d.need(n, responseFields); err != nil {
		return err
	}
	if r.ID, err = d.uint("id"); err != nil {
		return err
	}
	status, err := d.int("status")
	if err != nil {
		return err
	}
	if status < 100 || status > 999 {
		return d.fail("status %d outside 100-999", status)
	}
	r.Status = int(status)
	if r.Header, err = d.header("header"); err != nil {
		return err
	}
	if r.Body, err = d.bytes("body"); err != nil {
		return err
	}
	if r.EOF, err = d.bool("eof"); err != nil {
		return err
	}
	if r.Trailer, err = d.header("trailer"); err != nil {
		return err
	}
	return d.skip(n - responseFields)
}

// informational decodes informational frames: [id, status, header].
func (d *payloadDecoder) informational() (uint64, int, http.Header, error) {
	n, err := d.arrayLen()
	if err != nil {
		return 0, 0, nil, err
	}
	if err := d.need(n, 3); err != nil {
		return 0, 0, nil, err
	}
	id, err := d.uint("id")
	if err != nil {
		return 0, 0, nil, err
	}
	status, err := d.int("status")
	if err != nil {
		return 0, 0, nil, err
	}
	if status < 100 || status > 199 || status == http.StatusSwitchingProtocols {
		return 0, 0, nil, d.fail("informational status %d outside 100-199 or 101", status)
	}
	h, err := d.header("header")
	if err != nil {
		return 0, 0, nil, err
	}
	return id, int(status), h, d.skip(n - 3)
}

// idData decodes body frames: [id, bin].
func (d *payloadDecoder) idData() (uint64, []byte, error) {
	n, err := d.arrayLen()
	if err != nil {
		return 0, nil, err
	}
	if err := d.need(n, 2); err != nil {
		return 0, nil, err
	}
	id, err := d.uint("id")
	if err != nil {
		return 0, nil, err
	}
	b, err := d.bytes("data")
	if err != nil {
		return 0, nil, err
	}
	return id, b, d.skip(n - 2)
}

// idHeader decodes end frames: [id, trailer].
func (d *payloadDecoder) idHeader() (uint64, http.Header, error) {
	n, err := d.arrayLen()
	if err != nil {
		return 0, nil, err
	}
	if err := d.need(n, 2); err != nil {
		return 0, nil, err
	}
	id, err := d.uint("id")
	if err != nil {
		return 0, nil, err
	}
	h, err := d.header("trailer")
	if err != nil {
		return 0, nil, err
	}
	return id, h, d.skip(n - 2)
}

// idOnly decodes cancel, ping and pong frames: [id].
func (d *payloadDecoder) idOnly() (uint64, error) {
	n, err := d.arrayLen()
	if err != nil {
		return 0, err
	}
	if err := d.need(n, 1); err != nil {
		return 0, err
	}
	id, err := d.uint("id")
	if err != nil {
		return 0, err
	}
	return id, d.skip(n - 1)
}

// pongFeatures are the features a pong lists that change what the
// dispatcher does.
type pongFeatures struct {
	headAck, cont, wideChunk, withdraw bool
}

// pong decodes pong frames: [id] or [id, features], where features (an
// array of str, or nil) names the optional features the worker uses.
func (d *payloadDecoder) pong() (id uint64, f pongFeatures, err error) {
	n, err := d.arrayLen()
	if err != nil {
		return 0, f, err
	}
	if err := d.need(n, 1); err != nil {
		return 0, f, err
	}
	if id, err = d.uint("id"); err != nil {
		return 0, f, err
	}
	if n == 1 {
		return id, f, d.skip(0)
	}
	m, err := d.dec.DecodeArrayLen()
	if err != nil {
		return 0, f, d.wrap("features", err)
	}
	if m > d.rd.Len() {
		return 0, f, d.fail("field features: %d names in %d bytes", m, d.rd.Len())
	}
	for range m {
		name, err := d.bytes("features")
		if err != nil {
			return 0, f, err
		}
		switch string(name) {
		case FeatureHeadAck:
			f.headAck = true
		case FeatureContinue:
			f.cont = true
		case FeatureWideChunk:
			f.wideChunk = true
		case FeatureWithdraw:
			f.withdraw = true
		}
	}
	return id, f, d.skip(n - 2)
}

// idCount decodes window frames: [id, n].
func (d *payloadDecoder) idCount() (uint64, int, error) {
	n, err := d.arrayLen()
	if err != nil {
		return 0, 0, err
	}
	if err := d.need(n, 2); err != nil {
		return 0, 0, err
	}
	id, err := d.uint("id")
	if err != nil {
		return 0, 0, err
	}
	c, err := d.uint("n")
	if err != nil {
		return 0, 0, err
	}
	if c > WideWindow {
		return 0, 0, d.fail("window credit %d exceeds %d", c, WideWindow)
	}
	return id, int(c), d.skip(n - 2)
}

// idString decodes abort frames: [id, reason].
func (d *payloadDecoder) idString() (uint64, string, error) {
	n, err := d.arrayLen()
	if err != nil {
		return 0, "", err
	}
	if err := d.need(n, 2); err != nil {
		return 0, "", err
	}
	id, err := d.uint("id")
	if err != nil {
		return 0, "", err
	}
	s, err := d.string("reason")
	if err != nil {
		return 0, "", err
	}
	return id, s, d.skip(n - 2)
}
