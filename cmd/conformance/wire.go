package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// Frame kinds and limits, as PROTOCOL.md §3 and §6 define them.
const (
	kRequest   = 1
	kBody      = 2
	kEnd       = 3
	kResponse  = 4
	kCancel    = 5
	kPing      = 6
	kPong      = 7
	kWindow    = 8
	kAbort     = 9
	kInfo      = 10 // informational (1xx) response, before the head
	kWithdraw  = 11 // the dispatcher takes back a queued request (feature withdraw)
	kWithdrawn = 12 // the worker dropped it before it started

	chunkSize   = 64 << 10  // largest body chunk in one frame
	window      = 256 << 10 // request body bytes sent beyond the worker's acknowledgements
	wideWindow  = 1 << 20   // the window after a wide-window acknowledgement
	minMaxFrame = chunkSize + 64<<10
	// wideChunkSize is the largest body chunk with the wide-chunk feature,
	// which a dispatcher announces when its frame limit is at least
	// wideChunkMaxFrame.
	wideChunkSize     = 256 << 10
	wideChunkMaxFrame = wideChunkSize + 64<<10
)

var kindNames = map[byte]string{kRequest: "request", kBody: "body", kEnd: "end", kResponse: "response",
	kCancel: "cancel", kPing: "ping", kPong: "pong", kWindow: "window", kAbort: "abort", kInfo: "informational",
	kWithdraw: "withdraw", kWithdrawn: "withdrawn"}

func kindName(k byte) string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("kind %d", k)
}

// violation is a breach of the protocol by the worker: what the checks look
// for. Other errors (a timeout, a closed slot) are reported as they are.
type violation struct{ msg string }

func (v *violation) Error() string { return v.msg }

// outOfOrder is a frame of another exchange than the one whose answer was
// due.
type outOfOrder struct {
	violation
	got uint64 // the exchange the frame belongs to
}

func violated(format string, args ...any) error {
	return &violation{msg: fmt.Sprintf(format, args...)}
}

// frame builds one frame: length prefix, kind, payload.
func frame(kind byte, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(payload)))
	return append(append(b, kind), payload...)
}

// request is a request head as the dispatcher sends it (PROTOCOL.md §3.4).
type request struct {
	method, uri, proto   string
	header               map[string][]string
	host, remoteAddr     string
	contentLength        int64
	requestID            string
	body                 []byte
	eof                  bool
	cont                 bool         // the continue element, true (feature continue)
	asBin                bool         // send every str as bin
	extra                func(e *enc) // fields appended after the known ones
	extraCount           int
	omitLast, wrongTypes bool // malformed variants
}

func (r *request) payload(id uint64) []byte {
	e := &enc{}
	n := 11 + r.extraCount
	if r.cont {
		n++
	}
	if r.omitLast {
		n = 10
	}
	e.arrayLen(n)
	e.uint(id)
	s := e.str
	if r.asBin {
		s = func(v string) { e.bin([]byte(v)) }
	}
	if r.wrongTypes {
		e.uint(7) // method as an integer
	} else {
		s(r.method)
	}
	s(r.uri)
	s(r.proto)
	e.header(r.header, r.asBin)
	s(r.host)
	s(r.remoteAddr)
	e.int(r.contentLength)
	s(r.requestID)
	e.bin(r.body)
	if r.omitLast {
		return e.b
	}
	e.bool(r.eof)
	if r.cont {
		e.bool(true)
	}
	if r.extra != nil {
		r.extra(e)
	}
	return e.b
}

func idPayload(id uint64) []byte {
	e := &enc{}
	e.arrayLen(1)
	e.uint(id)
	return e.b
}

func bodyPayload(id uint64, data []byte) []byte {
	e := &enc{}
	e.arrayLen(2)
	e.uint(id)
	e.bin(data)
	return e.b
}

func endPayload(id uint64, trailer map[string][]string) []byte {
	e := &enc{}
	e.arrayLen(2)
	e.uint(id)
	e.header(trailer, false)
	return e.b
}

func abortPayload(id uint64, reason string) []byte {
	e := &enc{}
	e.arrayLen(2)
	e.uint(id)
	e.str(reason)
	return e.b
}

// wframe is a decoded frame from the worker.
type wframe struct {
	kind     byte
	size     int // length prefix
	id       uint64
	status   int64
	header   map[string][]string
	data     []byte // response inline body, body chunk
	eof      bool
	trailer  map[string][]string
	n        uint64 // window credit
	reason   string
	features []string // a pong's list of the features the worker uses
}

// decodeW decodes a frame the worker sent, strictly, as PROTOCOL.md §3.4
// lays it out; fields appended after the known ones are skipped (§10).
func decodeW(kind byte, p []byte) (wframe, error) {
	f := wframe{kind: kind, size: 1 + len(p)}
	d := &dec{b: p}
	fail := func(field string, err error) (wframe, error) {
		return f, violated("malformed %s frame: %s: %v", kindName(kind), field, err)
	}
	n, err := d.arrayLen()
	if err != nil {
		return fail("payload", err)
	}
	need := map[byte]int{kResponse: 6, kBody: 2, kEnd: 2, kPong: 1, kWindow: 2, kAbort: 2, kInfo: 3, kWithdrawn: 1}[kind]
	if need == 0 {
		return f, violated("a worker never sends %s frames (kind %d)", kindName(kind), kind)
	}
	if n < need {
		return fail("payload", fmt.Errorf("%d fields, want at least %d", n, need))
	}
	if f.id, err = d.uint(); err != nil {
		return fail("id", err)
	}
	read := need // elements decoded
	switch kind {
	case kPong:
		if n < 2 {
			break
		}
		read = 2
		if d.left() > 0 && d.b[d.off] == 0xc0 {
			d.off++ // nil: none
			break
		}
		m, err := d.arrayLen()
		if err != nil {
			return fail("features", err)
		}
		for range m {
			name, err := d.bytes()
			if err != nil {
				return fail("features", err)
			}
			f.features = append(f.features, string(name))
		}
	case kInfo:
		if f.status, err = d.int(); err != nil {
			return fail("status", err)
		}
		if f.status < 100 || f.status > 199 || f.status == 101 {
			return f, violated("informational status %d outside 100-199 or 101", f.status)
		}
		if f.header, err = d.header(); err != nil {
			return fail("header", err)
		}
	case kResponse:
		if f.status, err = d.int(); err != nil {
			return fail("status", err)
		}
		if f.status < 100 || f.status > 999 {
			return f, violated("response status %d outside 100-999", f.status)
		}
		if f.header, err = d.header(); err != nil {
			return fail("header", err)
		}
		if f.data, err = d.bytes(); err != nil {
			return fail("body", err)
		}
		if f.eof, err = d.bool(); err != nil {
			return fail("eof", err)
		}
		if f.trailer, err = d.header(); err != nil {
			return fail("trailer", err)
		}
		if !f.eof && f.trailer != nil {
			return f, violated("response head with eof false carries trailers: they belong in the end frame")
		}
	case kBody:
		if f.data, err = d.bytes(); err != nil {
			return fail("data", err)
		}
	case kEnd:
		if f.trailer, err = d.header(); err != nil {
			return fail("trailer", err)
		}
	case kWindow:
		if f.n, err = d.uint(); err != nil {
			return fail("n", err)
		}
		if f.n > wideWindow {
			return f, violated("window credit %d exceeds the widest window (%d)", f.n, wideWindow)
		}
	case kAbort:
		r, err := d.bytes()
		if err != nil {
			return fail("reason", err)
		}
		f.reason = string(r)
	}
	if err := d.skip(n - read); err != nil {
		return fail("appended fields", err)
	}
	if err := d.end(); err != nil {
		return fail("payload", err)
	}
	return f, nil
}

// slot is the dispatcher's end of one slot connection, driven by hand.
type slot struct {
	nc      net.Conn
	br      *bufio.Reader
	max     int           // announced frame limit: the worker's frames must fit
	timeout time.Duration // for each wait
	wmu     sync.Mutex
	lastID  uint64 // the last id sent; Launch used 1 for its ping
	credit  func(id, n uint64) error
	pending *wframe // a frame read ahead, returned by the next read
	// features are those the last pong listed.
	features []string
}

func newSlot(nc net.Conn, max int, timeout time.Duration) *slot {
	return &slot{nc: nc, br: bufio.NewReaderSize(nc, 64<<10), max: max, timeout: timeout, lastID: 1}
}

func (s *slot) nextID() uint64 {
	s.lastID++
	return s.lastID
}

// write sends raw bytes. Safe for concurrent use.
func (s *slot) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.nc.SetWriteDeadline(time.Now().Add(s.timeout))
	if _, err := s.nc.Write(b); err != nil {
		return fmt.Errorf("writing to the slot: %w", err)
	}
	return nil
}

func (s *slot) send(kind byte, payload []byte) error { return s.write(frame(kind, payload)) }

// unread makes f the next frame read returns.
func (s *slot) unread(f wframe) { s.pending = &f }

// read returns the next frame from the worker, waiting up to the timeout.
func (s *slot) read() (wframe, error) {
	if f := s.pending; f != nil {
		s.pending = nil
		return *f, nil
	}
	_ = s.nc.SetReadDeadline(time.Now().Add(s.timeout))
	var hdr [5]byte
	if _, err := io.ReadFull(s.br, hdr[:4]); err != nil {
		return wframe{}, readErr(err, s.timeout)
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	if n < 1 {
		return wframe{}, violated("empty frame (length 0)")
	}
	if n > s.max {
		return wframe{}, violated("frame of %d bytes exceeds the announced limit DISPATCHER_IPC_MAX_FRAME=%d", n, s.max)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(s.br, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return wframe{}, fmt.Errorf("inside a frame: %w", readErr(err, s.timeout))
	}
	f, err := decodeW(p[0], p[1:])
	if err == nil && f.kind == kBody && len(f.data) > s.chunkFrom() {
		return f, violated("body frame of %d bytes: a chunk holds at most %d%s", len(f.data), s.chunkFrom(), s.wideNote())
	}
	return f, err
}

// wideAnnounced reports whether the worker was told wide-chunk: launch
// announces it when the frame limit holds a wide chunk (ipc.Announced).
func (s *slot) wideAnnounced() bool { return s.max >= wideChunkMaxFrame }

// chunkFrom is the largest body chunk the worker may send.
func (s *slot) chunkFrom() int {
	if s.wideAnnounced() {
		return wideChunkSize
	}
	return chunkSize
}

func (s *slot) wideNote() string {
	if s.wideAnnounced() {
		return " (wide-chunk was announced)"
	}
	return fmt.Sprintf(" (wide-chunk was not announced: DISPATCHER_IPC_MAX_FRAME=%d)", s.max)
}

// chunkTo is the largest body chunk the worker takes: wideChunkSize if its
// last pong listed wide-chunk.
func (s *slot) chunkTo() int {
	if slices.Contains(s.features, ipc.FeatureWideChunk) {
		return wideChunkSize
	}
	return chunkSize
}

var errClosed = errors.New("the worker closed the slot")

func readErr(err error, timeout time.Duration) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("nothing from the worker within %s", timeout)
	case err == io.EOF, errors.Is(err, syscall.ECONNRESET):
		return errClosed
	}
	return err
}

// readSkippingCredit returns the next frame other than a window frame,
// checking and passing credit on to s.credit.
func (s *slot) readSkippingCredit() (wframe, error) {
	for {
		f, err := s.read()
		if err != nil || f.kind != kWindow {
			return f, err
		}
		if f.id > s.lastID {
			return f, violated("window frame for exchange %d, which was never started (last id %d)", f.id, s.lastID)
		}
		if s.credit != nil {
			if err := s.credit(f.id, f.n); err != nil {
				return f, err
			}
		}
	}
}

// ping sends a ping and expects its pong as the next frame.
func (s *slot) ping() error {
	id := s.nextID()
	if err := s.send(kPing, idPayload(id)); err != nil {
		return err
	}
	return s.expectPong(id)
}

func (s *slot) expectPong(id uint64) error {
	f, err := s.readSkippingCredit()
	if err != nil {
		return fmt.Errorf("waiting for the pong to ping %d: %w", id, err)
	}
	if f.kind != kPong {
		return violated("%s frame (exchange %d) where the pong to ping %d was due", kindName(f.kind), f.id, id)
	}
	if f.id != id {
		return violated("pong %d answers ping %d: a pong must echo the ping's id", f.id, id)
	}
	s.features = f.features
	return nil
}

// result is one complete exchange as the worker answered it.
type result struct {
	status  int64
	header  map[string][]string
	body    []byte
	frames  int
	trailer map[string][]string
	aborted bool
	reason  string
	headEOF bool // the response head held the whole response
	// informational are the 1xx statuses sent before the head (the
	// dispatcher announces the informational feature, §3.3).
	informational []int
}

func (r *result) String() string {
	if r.aborted && r.status == 0 {
		return fmt.Sprintf("aborted before its head (%q)", r.reason)
	}
	if r.aborted {
		return fmt.Sprintf("status %d, then aborted after %d body bytes (%q)", r.status, len(r.body), r.reason)
	}
	return fmt.Sprintf("status %d, %d body bytes in %d frame(s)", r.status, len(r.body), r.frames)
}

// await reads the frames of exchange id until it is complete, checking
// their order (PROTOCOL.md §4.3, §4.4): a response head or an abort, then,
// unless the head had eof, body frames and an end or an abort. Window frames
// may come at any time.
func (s *slot) await(id uint64) (*result, error) { return s.answer(id, nil) }

// awaitRest is await for an answer whose first frame, f, was already read.
func (s *slot) awaitRest(id uint64, f wframe) (*result, error) { return s.answer(id, &f) }

func (s *slot) answer(id uint64, first *wframe) (*result, error) {
	r := &result{}
	for {
		var f wframe
		var err error
		if first != nil {
			f, first = *first, nil
		} else if f, err = s.readSkippingCredit(); err != nil {
			return r, fmt.Errorf("waiting for the answer to request %d: %w", id, err)
		}
		if f.kind == kPong {
			return r, violated("pong %d while request %d was unanswered (no ping was sent)", f.id, id)
		}
		if f.id != id {
			return r, &outOfOrder{violation: violation{msg: fmt.Sprintf("%s frame for exchange %d while exchange %d was due: answers must come in order, one exchange at a time", kindName(f.kind), f.id, id)}, got: f.id}
		}
		r.frames++
		switch {
		case f.kind == kAbort:
			r.aborted, r.reason = true, f.reason
			return r, nil
		case r.status == 0 && f.kind == kInfo:
			r.informational = append(r.informational, int(f.status))
		case r.status == 0 && f.kind == kResponse:
			r.status, r.header, r.body, r.headEOF = f.status, f.header, append(r.body, f.data...), f.eof
			if f.eof {
				r.trailer = f.trailer
				return r, nil
			}
		case r.status == 0:
			return r, violated("%s frame before the response head of exchange %d", kindName(f.kind), id)
		case f.kind == kBody:
			r.body = append(r.body, f.data...)
		case f.kind == kEnd:
			r.trailer = f.trailer
			return r, nil
		default:
			return r, violated("second response head for exchange %d", id)
		}
	}
}

// expectClosed waits for the worker to close the slot (or to exit): the
// answer to a protocol violation (PROTOCOL.md §7). Any frame is a failure.
func (s *slot) expectClosed(after string) error {
	f, err := s.read()
	switch {
	case errors.Is(err, errClosed):
		return nil
	case err == nil && f.kind == kPong:
		return violated("answered the ping sent after %s instead of closing the slot", after)
	case err == nil:
		return violated("sent a %s frame after %s instead of closing the slot", kindName(f.kind), after)
	}
	var v *violation
	if errors.As(err, &v) {
		return violated("after %s: %v", after, err)
	}
	return fmt.Errorf("slot still open after %s: %w", after, err)
}

// pump streams a request body within the worker's credit, as the
// dispatcher does (PROTOCOL.md §4.2).
type pump struct {
	s       *slot
	id      uint64
	rest    []byte
	trailer map[string][]string
	abort   string // if set, end the body with an abort frame instead

	mu      sync.Mutex
	cond    sync.Cond
	credit  int
	sent    int  // bytes sent so far, the first chunk included
	granted int  // credit received so far, for bytes sent
	acked   bool // the first window frame of the exchange arrived
	// cont: the request was marked continue, and the pump started with no
	// credit; opened once the worker granted the window.
	cont, opened bool
	stopped      bool
	done         chan struct{}
	err          error
	chunk        int // the largest chunk to send (slot.chunkTo)
	largest      int // the largest chunk sent
}

// startPump sends the rest of exchange id's body (first bytes already sent
// in the request frame) and installs the slot's credit hook.
func startPump(s *slot, id uint64, first int, rest []byte, trailer map[string][]string, abort string) *pump {
	return startPumpCredit(s, id, first, rest, trailer, abort, window-first, false)
}

// startPumpCredit is startPump with the initial credit given; cont marks
// a request sent with the continue element (no credit until the worker
// grants the window).
func startPumpCredit(s *slot, id uint64, first int, rest []byte, trailer map[string][]string, abort string, credit int, cont bool) *pump {
	p := &pump{s: s, id: id, rest: rest, trailer: trailer, abort: abort, credit: credit, sent: first, cont: cont,
		chunk: s.chunkTo(), done: make(chan struct{})}
	p.cond.L = &p.mu
	s.credit = p.grant
	go p.run()
	return p
}

func (p *pump) grant(id, n uint64) error {
	if id != p.id {
		return nil // late credit for an earlier body
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cont && !p.opened {
		// Before the handler reads: the acknowledgement, [id, 0], or the
		// window granted at its first read (PROTOCOL.md §4.2).
		want := uint64(window)
		if slices.Contains(p.s.features, ipc.FeatureWideWindow) {
			want = wideWindow
		}
		switch {
		case n == 0 && !p.acked:
			p.acked = true
			return nil
		case n != want:
			return violated("window frame [%d, %d] for a request marked continue, before any body byte was sent: want the whole window, %d, granted once its handler reads", p.id, n, want)
		}
		p.acked, p.opened = true, true
		p.credit += int(n)
		p.cond.Signal()
		return nil
	}
	first := !p.acked
	p.acked = true
	if first && n == wideWindow-window && slices.Contains(p.s.features, ipc.FeatureWideWindow) {
		// A wide-window acknowledgement: the window grows, no byte is
		// acknowledged.
		p.credit += int(n)
		p.cond.Signal()
		return nil
	}
	p.granted += int(n)
	if p.granted > p.sent {
		return violated("window frames acknowledge %d request body bytes of exchange %d, but only %d were sent", p.granted, p.id, p.sent)
	}
	p.credit += int(n)
	p.cond.Signal()
	return nil
}

func (p *pump) run() {
	defer close(p.done)
	for {
		p.mu.Lock()
		for p.credit <= 0 && !p.stopped && len(p.rest) > 0 {
			p.cond.Wait()
		}
		if p.stopped {
			p.mu.Unlock()
			return
		}
		if len(p.rest) == 0 {
			p.mu.Unlock()
			break
		}
		n := min(p.credit, p.chunk, len(p.rest))
		p.largest = max(p.largest, n)
		chunk := p.rest[:n]
		p.rest = p.rest[n:]
		p.credit -= n
		p.sent += n
		p.mu.Unlock()
		if err := p.s.send(kBody, bodyPayload(p.id, chunk)); err != nil {
			p.err = err
			return
		}
	}
	if p.abort != "" {
		p.err = p.s.send(kAbort, abortPayload(p.id, p.abort))
		return
	}
	p.err = p.s.send(kEnd, endPayload(p.id, p.trailer))
}

// stop makes the pump give up at its next step and waits for it; it returns
// the bytes sent and acknowledged.
func (p *pump) stop() (sent, granted int) {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.cond.Signal()
	<-p.done
	p.s.credit = nil
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent, p.granted
}
