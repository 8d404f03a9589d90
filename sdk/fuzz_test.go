package sdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/allocs"
	"github.com/childproc/dispatcher/ipc"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// FuzzSlot writes arbitrary bytes, as the dispatcher would, on a real
// socketpair to a slot served by the sdk's own reader (slot.serve, as Serve
// runs it on each inherited descriptor), with a handler that echoes,
// flushes, panics, waits for cancellation or sets deadlines depending on the
// path, and then shuts the dispatcher's sending side. It checks that
// nothing panics outside the handler, and that the handler sees no panic of
// the sdk's own (the sdk recovers handler panics, which would hide them);
// that the slot stops at end of stream and every handler returns, within a
// deadline; that allocation stays in proportion to the input; and that what
// the worker writes back is well framed (within the frame limit,
// worker-to-dispatcher kinds only) and follows the protocol: exchanges
// answered in the order their requests came, each with an abort or a head
// followed by body frames and an end or abort, never interleaved; window
// frames only for requests received; pongs for the pings received, in
// their order.
//
//	go test -run=NONE -fuzz=FuzzSlot -fuzztime=1m ./sdk/
func FuzzSlot(f *testing.F) {
	// Every malformed input is logged: keep the fuzzer's output readable.
	out := logger.Out
	logger.SetOutput(io.Discard)
	f.Cleanup(func() { logger.SetOutput(out) })

	get := func(id uint64, uri string) []byte { return reqFrame(id, "GET", uri, nil, true, nil) }
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	big := bytes.Repeat([]byte("z"), ipc.ChunkSize)

	f.Add(uint8(0), cat(fuzzFrame(ipc.KindPing, uint64(1)), get(2, "/e?q=1"), fuzzFrame(ipc.KindPing, uint64(3))))
	// A streamed body in chunks, with trailers, and one cut by an abort.
	f.Add(uint8(0), cat(reqFrame(2, "POST", "/e", []byte("first"), false, http.Header{"A": {"1"}}),
		fuzzFrame(ipc.KindBody, uint64(2), []byte("more")), fuzzFrame(ipc.KindBody, uint64(2), big),
		fuzzFrame(ipc.KindEnd, uint64(2), map[string][]string{"X-Sum": {"9"}})))
	f.Add(uint8(0), cat(reqFrame(2, "PUT", "/f", nil, false, nil), fuzzFrame(ipc.KindBody, uint64(2), []byte("ab")),
		fuzzFrame(ipc.KindAbort, uint64(2), "client body: unexpected EOF")))
	// Pipelined requests, one cancelled while queued, one cancelled running.
	f.Add(uint8(3), cat(get(1, "/w"), get(2, "/e"), get(3, "/p"), fuzzFrame(ipc.KindCancel, uint64(2)),
		fuzzFrame(ipc.KindCancel, uint64(1)), get(4, "/l")))
	// A body over the window, a request during another exchange.
	f.Add(uint8(0), cat(reqFrame(1, "POST", "/d", big, false, nil), fuzzFrame(ipc.KindBody, uint64(1), big),
		fuzzFrame(ipc.KindBody, uint64(1), big), fuzzFrame(ipc.KindBody, uint64(1), big), fuzzFrame(ipc.KindBody, uint64(1), []byte("x"))))
	f.Add(uint8(0), cat(get(1, "/w"), get(2, "/e")))
	// Late frames for an exchange that is over, an unknown URI form, CONNECT.
	f.Add(uint8(7), cat(get(1, "/e"), fuzzFrame(ipc.KindBody, uint64(1), []byte("late")), fuzzFrame(ipc.KindEnd, uint64(1), nil),
		get(2, "http://h/x"), get(3, "*"), reqFrame(4, "CONNECT", "h:443", nil, true, nil), get(5, "%zz")))
	// Malformed: truncated, oversized, wrong direction, extra fields.
	f.Add(uint8(0), get(1, "/e")[:20])
	f.Add(uint8(0), []byte{0x7f, 0xff, 0xff, 0xff, 1})
	f.Add(uint8(0), fuzzFrame(ipc.KindResponse, uint64(1), 200, nil, nil, true, nil))
	f.Add(uint8(0), fuzzFrame(ipc.KindPing, uint64(9), []any{1, "x", map[string]int{"a": 1}}, 1.5))

	// mode: bits 0-2 are the pipelining depth less one; bit 7 makes the
	// dispatcher's stream end as soon as it is written, whatever the
	// handlers are doing (otherwise the slot sees its end once it answered
	// every request or a handler waits for the dispatcher).
	f.Fuzz(func(t *testing.T, mode uint8, in []byte) {
		fuzzSlot(t, 1+int(mode&7), mode&0x80 == 0, in)
	})
}

const (
	fuzzMaxFrame = ipc.MinMaxFrame
	fuzzDeadline = 10 * time.Second
)

// fuzzFrame builds a frame of kind k whose payload is the msgpack array of
// fields.
func fuzzFrame(k ipc.Kind, fields ...any) []byte {
	p, err := msgpack.Marshal(fields)
	if err != nil {
		panic(err)
	}
	b := make([]byte, 5, 5+len(p))
	binary.BigEndian.PutUint32(b, uint32(1+len(p)))
	b[4] = byte(k)
	return append(b, p...)
}

func reqFrame(id uint64, method, uri string, body []byte, eof bool, h http.Header) []byte {
	cl := int64(len(body))
	if !eof {
		cl = -1
	}
	return fuzzFrame(ipc.KindRequest, id, method, uri, "HTTP/1.1", map[string][]string(h), "example.com",
		"192.0.2.1:1234", cl, "rid", body, eof)
}

// fuzzHandler does what the path's first two letters say. A panic other
// than its deliberate ones is recorded in bad. It tells q when it waits for
// the dispatcher (for the rest of the body, or to be cancelled).
func fuzzHandler(bad *atomic.Pointer[string], q *quiet) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deliberate := false
		defer func() {
			if v := recover(); v != nil {
				if !deliberate {
					s := fmt.Sprintf("panic in the handler: %v", v)
					bad.CompareAndSwap(nil, &s)
				}
				panic(v) // the sdk answers it
			}
		}()
		rc := http.NewResponseController(w)
		path := r.URL.Path
		if len(path) > 2 {
			path = path[:2]
		}
		_ = RequestID(r.Context())
		_ = r.URL.Query()
		switch path {
		case "/p":
			deliberate = true
			panic("fuzz")
		case "/w":
			q.add(0, 1)
			<-r.Context().Done()
			q.add(0, -1)
			return
		case "/d":
			_ = rc.SetReadDeadline(time.Now())
			_ = rc.SetWriteDeadline(time.Now().Add(time.Hour))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if path == "/f" || path == "/l" {
			io.WriteString(w, "head")
			_ = rc.Flush()
		}
		var buf [512]byte
		for {
			waits := 0
			if b, ok := r.Body.(*requestBody); ok {
				b.mu.Lock()
				if len(b.chunks) == 0 && !b.done && !b.closed && !b.expired() {
					waits = 1
				}
				b.mu.Unlock()
			}
			q.add(0, waits)
			n, err := r.Body.Read(buf[:])
			q.add(0, -waits)
			w.Write(buf[:n])
			if err != nil {
				break
			}
		}
		for k, vs := range r.Trailer {
			w.Header()[http.TrailerPrefix+k] = vs
		}
		if path == "/l" {
			deliberate = true
			panic(http.ErrAbortHandler)
		}
	})
}

// quiet tells when a slot has done all it can with the input: every
// request answered, or the running handler waiting for the dispatcher.
type quiet struct {
	mu       sync.Mutex
	cond     sync.Cond
	expected int // requests
	answered int // exchanges whose last frame was read
	blocked  int // handlers waiting for the dispatcher
	expired  bool
}

func newQuiet(expected int) *quiet {
	q := &quiet{expected: expected}
	q.cond.L = &q.mu
	return q
}

func (q *quiet) add(answered, blocked int) {
	q.mu.Lock()
	q.answered += answered
	q.blocked += blocked
	q.mu.Unlock()
	q.cond.Broadcast()
}

// wait waits until the slot is quiet, or the deadline; it reports whether
// it was.
func (q *quiet) wait(d time.Time) bool {
	t := time.AfterFunc(time.Until(d), func() {
		q.mu.Lock()
		q.expired = true
		q.mu.Unlock()
		q.cond.Broadcast()
	})
	defer t.Stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.answered < q.expected && q.blocked == 0 && !q.expired {
		q.cond.Wait()
	}
	return q.answered >= q.expected || q.blocked > 0
}

// lingerConn holds back the end of the dispatcher's stream from the slot
// until the slot is quiet: the worker answers what it can before it sees
// the dispatcher go.
type lingerConn struct {
	net.Conn
	q        *quiet
	deadline time.Time
	bad      *atomic.Pointer[string]
	seen     bool
}

func (c *lingerConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF && !c.seen {
		c.seen = true
		if !c.q.wait(c.deadline) {
			s := fmt.Sprintf("the worker answered %d of %d requests, none waiting for the dispatcher, within %s",
				c.q.answered, c.q.expected, fuzzDeadline)
			c.bad.CompareAndSwap(nil, &s)
		}
	}
	return n, err
}

// sent is what the dispatcher's bytes hold, as a worker decodes them.
type sent struct {
	requests []uint64 // request ids, in order
	pings    []uint64
}

// parseSent decodes in with the worker's own decoder, up to its first error.
func parseSent(in []byte) sent {
	var s sent
	sc := ipc.NewServerConn(&readConn{r: bytes.NewReader(in)}, fuzzMaxFrame)
	for {
		f, err := sc.Next()
		if err != nil {
			return s
		}
		switch f.Kind {
		case ipc.KindRequest:
			s.requests = append(s.requests, f.ID)
		case ipc.KindPing:
			s.pings = append(s.pings, f.ID)
		}
	}
}

func fuzzSlot(t *testing.T, depth int, linger bool, in []byte) {
	want := parseSent(in)
	var bad atomic.Pointer[string]
	q := newQuiet(len(want.requests))
	var check error
	// Fixed: the slot's buffers and one frame of the largest declared
	// length (the frame limit). In proportion to the input: body chunks
	// are copied, and echoed. And each exchange costs a fixed amount (its
	// context, the http.Request, the response writer and its frame)
	// whatever its size.
	limit := uint64(512<<10 + 8*len(in) + 16<<10*len(want.requests))
	allocs.AtMost(t, limit, func() {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		host, wc := fdConn(t, fds[0]), fdConn(t, fds[1])
		defer host.Close()
		if linger {
			wc = &lingerConn{Conn: wc, q: q, deadline: time.Now().Add(fuzzDeadline / 2), bad: &bad}
		}
		w := &worker{h: fuzzHandler(&bad, q), depth: depth}
		s := &slot{w: w, sc: ipc.NewServerConn(wc, fuzzMaxFrame)}
		w.slots.Add(1)
		go s.serve()

		answers := make(chan error, 1)
		go func() { answers <- checkAnswers(host, want, q) }()
		wrote := make(chan struct{})
		go func() {
			// Fails once the slot closed after a violation: fine.
			host.Write(in)
			host.(*net.UnixConn).CloseWrite()
			close(wrote)
		}()

		deadline := time.NewTimer(fuzzDeadline)
		defer deadline.Stop()
		wait := func(what string, fn func()) {
			done := make(chan struct{})
			go func() {
				fn()
				close(done)
			}()
			select {
			case <-done:
			case <-deadline.C:
				buf := make([]byte, 1<<20)
				t.Fatalf("%s within %s (depth %d)\n%s", what, fuzzDeadline, depth, buf[:runtime.Stack(buf, true)])
			}
		}
		wait("the slot reader did not stop at end of stream", w.slots.Wait)
		wait("a handler did not return", w.inflight.Wait)
		// The slot closed its end: the reader of the answers gets EOF.
		wait("the answers did not end", func() { check = <-answers })
		host.Close() // unblocks a write the slot did not read
		wait("the write did not end", func() { <-wrote })
	})
	if p := bad.Load(); p != nil {
		t.Fatal(*p)
	}
	if check != nil {
		t.Fatal(check)
	}
}

// checkAnswers reads the worker's frames until the worker closes the slot
// and checks them against the protocol.
func checkAnswers(c net.Conn, want sent, q *quiet) error {
	var hdr [4]byte
	buf := make([]byte, 0, 8<<10)
	dec := msgpack.NewDecoder(nil)
	var rd bytes.Reader
	next := 0        // index in want.requests of the next exchange to be answered
	var open *uint64 // the exchange whose head was sent and whose end was not
	pongs := 0       // pongs received
	isRequest := func(id uint64) bool {
		for _, r := range want.requests {
			if r == id {
				return true
			}
		}
		return false
	}
	// answer checks that id opens the next exchange in request order.
	answer := func(k ipc.Kind, id uint64) error {
		if next >= len(want.requests) || want.requests[next] != id {
			return fmt.Errorf("%s for exchange %d, but the next one to answer is #%d of %v", k, id, next, want.requests)
		}
		next++
		return nil
	}
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			// The end, possibly inside a response or even a frame: the slot
			// closes when the dispatcher is gone or broke the protocol,
			// whatever its handler is writing.
			return nil
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if n < 1 || n > fuzzMaxFrame {
			return fmt.Errorf("frame of %d bytes (limit %d)", n, fuzzMaxFrame)
		}
		if cap(buf) < n {
			buf = make([]byte, 0, n)
		}
		b := buf[:n]
		if _, err := io.ReadFull(c, b); err != nil {
			return nil
		}
		k := ipc.Kind(b[0])
		rd.Reset(b[1:])
		dec.ResetReader(&rd)
		fields, err := dec.DecodeArrayLen()
		if err != nil || fields < 1 {
			return fmt.Errorf("%s frame: payload is not an array: %d, %v", k, fields, err)
		}
		id, err := dec.DecodeUint64()
		if err != nil {
			return fmt.Errorf("%s frame: id: %v", k, err)
		}
		switch k {
		case ipc.KindResponse:
			if open != nil {
				return fmt.Errorf("response head for %d while %d's response is open", id, *open)
			}
			if err := answer(k, id); err != nil {
				return err
			}
			status, err := dec.DecodeInt()
			if err != nil || status < 100 || status > 999 {
				return fmt.Errorf("response status %d, %v", status, err)
			}
			if err := dec.Skip(); err != nil { // header
				return err
			}
			if err := dec.Skip(); err != nil { // body
				return err
			}
			eof, err := dec.DecodeBool()
			if err != nil {
				return err
			}
			if !eof {
				open = &id
			} else {
				q.add(1, 0)
			}
		case ipc.KindBody, ipc.KindEnd:
			if open == nil || *open != id {
				return fmt.Errorf("%s frame for %d outside its response", k, id)
			}
			if k == ipc.KindEnd {
				open = nil
				q.add(1, 0)
			}
		case ipc.KindAbort:
			if open != nil {
				if *open != id {
					return fmt.Errorf("abort for %d while %d's response is open", id, *open)
				}
				open = nil
			} else if err := answer(k, id); err != nil {
				return err
			}
			q.add(1, 0)
		case ipc.KindWindow:
			if !isRequest(id) {
				return fmt.Errorf("window for %d, which is no request", id)
			}
		case ipc.KindPong:
			if pongs >= len(want.pings) || want.pings[pongs] != id {
				return fmt.Errorf("pong %d, but the pings were %v and %d were answered", id, want.pings, pongs)
			}
			pongs++
		default:
			return fmt.Errorf("the worker sent a %s frame", k)
		}
	}
}

// readConn is a net.Conn that reads from r and accepts no writes.
type readConn struct{ r io.Reader }

func (c *readConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *readConn) Write(p []byte) (int, error)      { return 0, errors.New("read only") }
func (c *readConn) Close() error                     { return nil }
func (c *readConn) LocalAddr() net.Addr              { return &net.UnixAddr{Net: "unix"} }
func (c *readConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Net: "unix"} }
func (c *readConn) SetDeadline(time.Time) error      { return nil }
func (c *readConn) SetReadDeadline(time.Time) error  { return nil }
func (c *readConn) SetWriteDeadline(time.Time) error { return nil }

func fdConn(tb testing.TB, fd int) net.Conn {
	f := os.NewFile(uintptr(fd), "slot")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
