package ipc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Kind identifies the type of a frame. It is the first byte after the length
// prefix.
type Kind uint8

// Frame kinds. The direction is H->W (dispatcher to worker) or W->H.
const (
	KindRequest  Kind = 1 // H->W: request head, optionally with the whole body
	KindBody     Kind = 2 // both: a chunk of the request or response body
	KindEnd      Kind = 3 // both: end of a body, with trailers
	KindResponse Kind = 4 // W->H: response head, optionally with the whole body
	KindCancel   Kind = 5 // H->W: the dispatcher gave up on a request
	KindPing     Kind = 6 // H->W: liveness probe on an idle slot
	KindPong     Kind = 7 // W->H: answer to a ping
	KindWindow   Kind = 8 // W->H: credit for more request body bytes
	KindAbort    Kind = 9 // both: a body ended abnormally (W->H: the handler failed after the head was sent)
	// KindInformational is W->H: an informational (1xx) response before the
	// head. Only sent to a dispatcher that announced FeatureInformational.
	KindInformational Kind = 10
	// KindWithdraw is H->W: the dispatcher takes back a queued request, to
	// run it elsewhere. Only sent to a worker that lists FeatureWithdraw.
	KindWithdraw Kind = 11
	// KindWithdrawn is W->H: the worker dropped a queued request it was
	// asked to withdraw, before starting it. Only in answer to a withdraw.
	KindWithdrawn Kind = 12
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindBody:
		return "body"
	case KindEnd:
		return "end"
	case KindResponse:
		return "response"
	case KindCancel:
		return "cancel"
	case KindPing:
		return "ping"
	case KindPong:
		return "pong"
	case KindWindow:
		return "window"
	case KindAbort:
		return "abort"
	case KindInformational:
		return "informational"
	case KindWithdraw:
		return "withdraw"
	case KindWithdrawn:
		return "withdrawn"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

const (
	// DefaultMaxFrame is the largest frame, in bytes after the length prefix,
	// a peer accepts unless configured otherwise.
	DefaultMaxFrame = 1 << 20
	// MinMaxFrame is the smallest frame limit a peer may configure: it must
	// hold a full body chunk plus a generous head.
	MinMaxFrame = ChunkSize + 64<<10
	// ChunkSize is the largest body chunk a peer puts in one frame, unless
	// the other peer accepts WideChunkSize (FeatureWideChunk).
	ChunkSize = 64 << 10
	// WideChunkSize is the largest body chunk in a body frame to a peer
	// that accepts FeatureWideChunk. (The first chunk, in a request or
	// response frame, is still at most ChunkSize.)
	WideChunkSize = 256 << 10
	// WideChunkMaxFrame is the smallest frame limit with which a dispatcher
	// announces FeatureWideChunk: a wide chunk and a generous head.
	WideChunkMaxFrame = WideChunkSize + 64<<10
	// Window is the number of request body bytes the dispatcher may send
	// beyond what the worker has acknowledged with window frames.
	Window = 256 << 10
	// WideWindow is the window of an exchange whose worker granted the
	// extra credit of FeatureWideWindow in its acknowledgement.
	WideWindow = 1 << 20

	lenPrefix = 4
)

// ProtocolError reports a frame that violates the protocol: oversized,
// truncated, malformed msgpack, or out of order. The connection it came from
// can no longer be trusted and its peer must be stopped.
type ProtocolError struct {
	Kind   Kind   // kind of the offending frame, 0 if unknown
	Reason string // what was wrong, safe to log
}

func (e *ProtocolError) Error() string {
	if e.Kind == 0 {
		return "ipc: protocol violation: " + e.Reason
	}
	return fmt.Sprintf("ipc: protocol violation in %s frame: %s", e.Kind, e.Reason)
}

func protoErr(k Kind, format string, args ...any) error {
	return &ProtocolError{Kind: k, Reason: fmt.Sprintf(format, args...)}
}

// frameReader reads length-prefixed frames. The payload it returns aliases an
// internal buffer that is valid until the next call.
type frameReader struct {
	br      *bufio.Reader
	buf     []byte
	max     int
	hdr     [lenPrefix]byte
	nhdr    int  // bytes of hdr read of the frame in progress
	npay    int  // bytes of its payload read, once nhdr is lenPrefix
	partial bool // the last error struck inside a frame: the stream is desynchronised
}

// newFrameReader reads frames from r. Its read buffer is 16 KiB: enough for
// the frames of small exchanges to arrive many per read, and smaller than
// a body chunk, whose payload then mostly bypasses it (bufio reads a large
// remainder straight into the frame buffer). It was 64 KiB, allocated for
// every worker: in oneshot mode that and go-plugin's stderr reader were
// three quarters of the bytes the dispatcher allocated.
func newFrameReader(r io.Reader, max int) *frameReader {
	return &frameReader{br: bufio.NewReaderSize(r, 16<<10), max: max}
}

// next returns the next frame. A clean end of stream between frames returns
// io.EOF; any other short read returns io.ErrUnexpectedEOF or the I/O error.
// A read deadline (os.ErrDeadlineExceeded) does not desynchronise the
// stream, even inside a frame: the next call resumes where it stopped.
func (fr *frameReader) next() (Kind, []byte, error) {
	if fr.partial {
		return 0, nil, protoErr(0, "stream desynchronised by an earlier error")
	}
	if fr.nhdr < lenPrefix {
		n, err := io.ReadFull(fr.br, fr.hdr[fr.nhdr:])
		fr.nhdr += n
		if err != nil {
			return 0, nil, fr.failed(err)
		}
		fr.npay = 0
	}
	n := int(binary.BigEndian.Uint32(fr.hdr[:]))
	if n < 1 || n > fr.max {
		// The length prefix is consumed, its payload is not: a caller
		// that reads on (none should) sees the bytes after the prefix.
		fr.nhdr = 0
		if n < 1 {
			return 0, nil, protoErr(0, "empty frame")
		}
		return 0, nil, protoErr(0, "frame of %d bytes exceeds the limit of %d", n, fr.max)
	}
	// A buffer grown for a large frame (a big request head) shrinks back
	// at the next small one; one that holds a wide chunk is kept.
	if fr.npay == 0 && (cap(fr.buf) < n || (cap(fr.buf) > WideChunkMaxFrame && n <= ChunkSize)) {
		fr.buf = make([]byte, n, max(n, 8<<10))
	}
	b := fr.buf[:n]
	k, err := io.ReadFull(fr.br, b[fr.npay:])
	fr.npay += k
	if err != nil {
		return 0, nil, fr.failed(err)
	}
	fr.nhdr, fr.npay = 0, 0
	return Kind(b[0]), b[1:], nil
}

// failed classifies a read error: a deadline leaves the frame in progress
// to be resumed; any other error inside a frame desynchronises the stream.
func (fr *frameReader) failed(err error) error {
	if fr.nhdr == 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	fr.partial = true
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// inFrame reports whether part of a frame was read and not returned.
func (fr *frameReader) inFrame() bool { return fr.nhdr > 0 }

// frameWriter builds one frame at a time in a reused buffer so that each frame
// goes out in a single write.
type frameWriter struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

func newFrameWriter() *frameWriter {
	fw := &frameWriter{}
	fw.enc = msgpack.NewEncoder(&fw.buf)
	return fw
}

// begin starts a frame of kind k; the caller encodes the payload with fw.enc.
func (fw *frameWriter) begin(k Kind) {
	fw.buf.Reset()
	if fw.buf.Cap() > 4*ChunkSize {
		fw.buf = bytes.Buffer{}
		fw.enc.Reset(&fw.buf)
	}
	fw.buf.Write([]byte{0, 0, 0, 0, byte(k)})
}

// writeFrame writes a frame given as a head and a tail (see bodyParts) in
// one writev when nc supports it.
func writeFrame(nc net.Conn, head, tail []byte) error {
	if len(tail) == 0 {
		_, err := nc.Write(head)
		return err
	}
	bufs := net.Buffers{head, tail}
	_, err := bufs.WriteTo(nc)
	return err
}

// finish patches the length prefix and returns the frame bytes.
func (fw *frameWriter) finish() []byte {
	b := fw.buf.Bytes()
	binary.BigEndian.PutUint32(b, uint32(len(b)-lenPrefix))
	return b
}

// payloadDecoder decodes msgpack values from one frame payload and checks every
// declared length against the bytes that remain, so a hostile frame can never
// make it allocate more than the frame's own size.
type payloadDecoder struct {
	rd   bytes.Reader
	dec  *msgpack.Decoder
	data []byte
	kind Kind
}

func newPayloadDecoder() *payloadDecoder {
	d := &payloadDecoder{}
	d.dec = msgpack.NewDecoder(nil)
	return d
}

func (d *payloadDecoder) reset(k Kind, b []byte) {
	d.kind = k
	d.data = b
	d.rd.Reset(b)
	d.dec.ResetReader(&d.rd)
}

func (d *payloadDecoder) fail(format string, args ...any) error {
	return protoErr(d.kind, format, args...)
}

func (d *payloadDecoder) wrap(field string, err error) error {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return err
	}
	return d.fail("field %s: %v", field, err)
}

// arrayLen reads the top-level array header of a payload.
func (d *payloadDecoder) arrayLen() (int, error) {
	n, err := d.dec.DecodeArrayLen()
	if err != nil {
		return 0, d.wrap("payload", err)
	}
	if n < 0 || n > d.rd.Len() {
		return 0, d.fail("payload is not an array of plausible length (%d)", n)
	}
	return n, nil
}

func (d *payloadDecoder) uint(field string) (uint64, error) {
	v, err := d.dec.DecodeUint64()
	if err != nil {
		return 0, d.wrap(field, err)
	}
	return v, nil
}

func (d *payloadDecoder) int(field string) (int64, error) {
	v, err := d.dec.DecodeInt64()
	if err != nil {
		return 0, d.wrap(field, err)
	}
	return v, nil
}

func (d *payloadDecoder) bool(field string) (bool, error) {
	v, err := d.dec.DecodeBool()
	if err != nil {
		return false, d.wrap(field, err)
	}
	return v, nil
}

// string accepts what msgpack's DecodeString does (str, bin, nil) but
// checks the declared length first: DecodeString allocates for it.
func (d *payloadDecoder) string(field string) (string, error) {
	b, err := d.bytes(field)
	return string(b), err
}

// bytes returns a bin value without copying: the slice aliases the frame.
func (d *payloadDecoder) bytes(field string) ([]byte, error) {
	n, err := d.dec.DecodeBytesLen()
	if err != nil {
		return nil, d.wrap(field, err)
	}
	if n <= 0 {
		return nil, nil
	}
	if n > d.rd.Len() {
		return nil, d.fail("field %s: bin of %d bytes in %d remaining", field, n, d.rd.Len())
	}
	off := len(d.data) - d.rd.Len()
	if _, err := d.rd.Seek(int64(n), io.SeekCurrent); err != nil {
		return nil, d.wrap(field, err)
	}
	return d.data[off : off+n : off+n], nil
}

// header decodes a map of string to array of strings (nil allowed).
func (d *payloadDecoder) header(field string) (map[string][]string, error) {
	n, err := d.dec.DecodeMapLen()
	if err != nil {
		return nil, d.wrap(field, err)
	}
	if n < 0 {
		return nil, nil
	}
	if n > d.rd.Len()/2 {
		return nil, d.fail("field %s: map of %d entries in %d bytes", field, n, d.rd.Len())
	}
	h := make(map[string][]string, n)
	// The values of all fields share one array when they fit (most fields
	// have one value); each field's slice is capped, so an append to one
	// never writes into the next.
	backing := make([]string, 0, n)
	for range n {
		kb, err := d.bytes(field)
		if err != nil {
			return nil, err
		}
		k, ok := commonHeaders[string(kb)]
		if !ok {
			k = string(kb)
		}
		m, err := d.dec.DecodeArrayLen()
		if err != nil {
			return nil, d.wrap(field, err)
		}
		if m > d.rd.Len() {
			return nil, d.fail("field %s: %d values in %d bytes", field, m, d.rd.Len())
		}
		var vs []string
		if m >= 0 {
			if l := len(backing); l+m <= cap(backing) {
				backing = backing[:l+m]
				vs = backing[l : l+m : l+m]
			} else {
				vs = make([]string, m)
			}
			for i := range vs {
				if vs[i], err = d.string(field); err != nil {
					return nil, err
				}
			}
		}
		h[k] = vs
	}
	return h, nil
}

// commonHeaders are field names decoded without allocating a string.
var commonHeaders = func() map[string]string {
	names := []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Accept-Ranges",
		"Access-Control-Allow-Origin", "Age", "Allow", "Authorization", "Cache-Control", "Connection",
		"Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length", "Content-Location",
		"Content-Range", "Content-Security-Policy", "Content-Type", "Cookie", "Date", "Etag", "Expect",
		"Expires", "Forwarded", "Host", "If-Match", "If-Modified-Since", "If-None-Match", "If-Range",
		"If-Unmodified-Since", "Last-Modified", "Link", "Location", "Origin", "Pragma", "Range", "Referer",
		"Retry-After", "Server", "Set-Cookie", "Strict-Transport-Security", "Te", "Trailer",
		"Transfer-Encoding", "Upgrade", "User-Agent", "Vary", "Via", "Www-Authenticate",
		"X-Content-Type-Options", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
		"X-Frame-Options", "X-Real-Ip", "X-Request-Id",
	}
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[n] = n
	}
	return m
}()

// skip discards the trailing fields a newer peer may have appended. It does
// not use msgpack's Skip, which allocates declared lengths and recurses once
// per nesting level: n counts the values still to skip, each at least a byte.
func (d *payloadDecoder) skip(n int) error {
	for n > 0 {
		if n > d.rd.Len() {
			return d.fail("%d trailing values in %d bytes", n, d.rd.Len())
		}
		n--
		c, err := d.dec.PeekCode()
		if err != nil {
			return d.wrap("trailing", err)
		}
		switch {
		case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
			m, err := d.dec.DecodeArrayLen()
			if err != nil {
				return d.wrap("trailing", err)
			}
			n += m
		case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
			m, err := d.dec.DecodeMapLen()
			if err != nil {
				return d.wrap("trailing", err)
			}
			n += 2 * m
		case msgpcode.IsString(c) || msgpcode.IsBin(c):
			if _, err := d.bytes("trailing"); err != nil {
				return err
			}
		case msgpcode.IsExt(c):
			_, m, err := d.dec.DecodeExtHeader()
			if err != nil {
				return d.wrap("trailing", err)
			}
			if m > d.rd.Len() {
				return d.fail("trailing ext of %d bytes in %d remaining", m, d.rd.Len())
			}
			if _, err := d.rd.Seek(int64(m), io.SeekCurrent); err != nil {
				return d.wrap("trailing", err)
			}
		default: // nil, bool or number: at most 8 bytes
			if err := d.dec.Skip(); err != nil {
				return d.wrap("trailing", err)
			}
		}
	}
	if d.rd.Len() != 0 {
		return d.fail("%d bytes after the payload", d.rd.Len())
	}
	return nil
}

// encodeHeaderSet encodes h with the fields of set in place of h's fields of
// the same names.
func encodeHeaderSet(enc *msgpack.Encoder, h map[string][]string, set []HeaderField) {
	replaced := func(k string) bool {
		for _, f := range set {
			if f.Name == k {
				return true
			}
		}
		return false
	}
	n := len(set)
	for k := range h {
		if !replaced(k) {
			n++
		}
	}
	_ = enc.EncodeMapLen(n)
	for k, vs := range h {
		if !replaced(k) {
			encodeField(enc, k, vs)
		}
	}
	for _, f := range set {
		_ = enc.EncodeString(f.Name)
		_ = enc.EncodeArrayLen(1)
		_ = enc.EncodeString(f.Value)
	}
}

func encodeHeader(enc *msgpack.Encoder, h map[string][]string) {
	if h == nil {
		_ = enc.EncodeNil()
		return
	}
	_ = enc.EncodeMapLen(len(h))
	for k, vs := range h {
		encodeField(enc, k, vs)
	}
}

// encodeField encodes one entry of a header map: the name, then its values
// (nil stays nil).
func encodeField(enc *msgpack.Encoder, k string, vs []string) {
	_ = enc.EncodeString(k)
	if vs == nil {
		_ = enc.EncodeNil()
		return
	}
	_ = enc.EncodeArrayLen(len(vs))
	for _, v := range vs {
		_ = enc.EncodeString(v)
	}
}
