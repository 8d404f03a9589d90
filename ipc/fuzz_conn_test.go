package ipc

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/childproc/dispatcher/internal/allocs"
)

// FuzzConn plays a worker that writes arbitrary bytes on a real socketpair,
// and drives the dispatcher's end of the slot through the real Conn and
// Ticket API as workers.Pool does: pipelined and streamed requests, heads,
// bodies read with Next or Read, cancels with Drain, interrupts, pings and
// Discard after a failure. The frames the worker sends arrive in any order
// (chunks, trailers, windows, aborts, pongs...), and the operations the
// dispatcher performs come from script:
//
//	bits 0-1: 0 send a complete request, 1 a streamed one (when idle), 2 ping
//	          (when idle), 3 finish every exchange in line
//	bit 2:    cancel the exchange and Drain it instead of reading it
//	bit 3:    interrupt the exchange before its head (its client went away)
//	bits 4-7: body size (a multiple of 40000 bytes when streamed); bit 4 also
//	          reads the body with Read rather than Next, bit 5 adds request
//	          trailers to a streamed body
//
// It checks that nothing panics or allocates beyond the input, that every
// read ends (the worker's end is shut after its bytes: a read that hits the
// deadline without an interrupt is a hang), that every error is of a
// documented kind and breaks the connection unless it is an abort or an
// interrupt between frames, that turns pass in order, and that a connection
// whose exchanges all ended is idle. Streamed bodies are Replays: one whose
// exchange failed with ErrNotDelivered (a worker that listed head-ack in a
// pong and then went without acknowledging) must give back, rewound, the
// whole body after the first chunk.
//
//	go test -run=NONE -fuzz=FuzzConn -fuzztime=1m ./ipc/
func FuzzConn(f *testing.F) {
	fw := newFrameWriter()
	cat := func(frames ...[]byte) []byte {
		var b []byte
		for _, fr := range frames {
			b = append(b, fr...)
		}
		return b
	}
	head := func(id uint64, eof bool, body string) []byte {
		return clone(fw.response(&Response{ID: id, Status: 200, Header: http.Header{"A": {"b"}}, Body: []byte(body), EOF: eof}))
	}
	body := func(id uint64, data string) []byte { return clone(fw.body(id, []byte(data))) }
	end := func(id uint64, tr http.Header) []byte { return clone(fw.end(id, tr)) }
	window := func(id uint64, n int) []byte { return clone(fw.window(id, n)) }
	abort := func(id uint64) []byte { return clone(fw.abort(id, "handler failed")) }
	pong := func(id uint64) []byte { return clone(fw.idFrame(KindPong, id)) }
	pongAck := func(id uint64) []byte { return clone(fw.pong(id, []string{FeatureHeadAck})) }

	// A whole response, then a ping.
	f.Add([]byte{0x10, 3, 2}, cat(head(1, true, "x"), pong(2)))
	// Three pipelined requests: whole, streamed with a trailer, aborted.
	f.Add([]byte{0, 0, 0, 3}, cat(head(1, true, "one"), head(2, false, "t"), body(2, "wo"), end(2, http.Header{"N": {"2"}}), abort(3)))
	// A streamed request body with credit, answered while it is sent.
	f.Add([]byte{0x41, 3}, cat(window(1, 1<<16), window(1, 1<<16), head(1, false, ""), window(1, 1<<17), body(1, "data"), end(1, nil)))
	// A cancelled exchange, drained; a read with an interrupt.
	f.Add([]byte{0x04, 3, 0x08, 3}, cat(head(1, false, "a"), body(1, "b"), end(1, nil), head(2, true, "c")))
	// Read with Read instead of Next, a late window, then a cancelled exchange.
	f.Add([]byte{0x20, 0x24, 3}, cat(head(1, false, "ab"), window(9, 5), body(1, "cd"), end(1, nil), head(2, true, "")))
	// Violations: a body before the head, a response for another exchange,
	// a pong for another ping, too much credit, a truncated frame.
	f.Add([]byte{0, 3}, body(1, "x"))
	f.Add([]byte{0, 0, 3}, head(2, true, ""))
	f.Add([]byte{2}, pong(7))
	f.Add([]byte{0x11, 3}, cat(window(1, Window), window(1, Window)))
	f.Add([]byte{0, 0, 0, 3}, head(1, true, "x")[:9])
	f.Add([]byte{0, 3}, []byte{0xff, 0xff, 0xff, 0xff, 4})
	// A worker using head-ack: gone before acknowledging a streamed request
	// (retried), gone after acknowledging it, and acknowledging it.
	f.Add([]byte{2, 0x31, 3}, pongAck(1))
	f.Add([]byte{2, 0x31, 3}, cat(pongAck(1), window(2, 0)))
	f.Add([]byte{2, 0x31, 3}, cat(pongAck(1), window(2, 0), window(2, 1<<16), head(2, true, "ok")))

	f.Fuzz(func(t *testing.T, script, child []byte) {
		if len(script) > 64 {
			script = script[:64]
		}
		allocs.AtMost(t, 512<<10+64*uint64(len(child)), func() { fuzzConn(t, script, child) })
	})
}

const (
	fuzzConnMaxFrame = 4096            // small, so a declared length costs little
	fuzzConnDeadline = 5 * time.Second // far beyond any read of bytes already written
	fuzzConnDepth    = 8
)

// fuzzBody is the request body the streamed requests of FuzzConn send.
var fuzzBody = patterned(15*40000 + 1)

type fuzzTicket struct {
	t         Ticket
	cancel    bool
	interrupt bool
	useRead   bool
	replay    *Replay // a streamed body
	rest      []byte  // what replay reads
}

type connDriver struct {
	t       *testing.T
	c       *Conn
	child   int           // bytes the worker wrote
	pending []*fuzzTicket // in line, oldest first
	broken  bool
}

func fuzzConn(t *testing.T, script, child []byte) {
	h, w := socketpair(t)
	// The worker writes its bytes and shuts its sending side, and reads
	// everything the dispatcher sends until the dispatcher closes.
	done := make(chan struct{}, 2)
	go func() {
		w.Write(child)
		w.(*net.UnixConn).CloseWrite()
		done <- struct{}{}
	}()
	go func() {
		io.Copy(io.Discard, w)
		done <- struct{}{}
	}()
	d := &connDriver{t: t, c: NewConn(h, fuzzConnMaxFrame), child: len(child)}
	d.c.SetDeadline(time.Now().Add(fuzzConnDeadline))
	for _, op := range script {
		if d.broken {
			break
		}
		size := int(op >> 4)
		switch op & 3 {
		case 1:
			if len(d.pending) == 0 {
				d.send(op, fuzzBody[:size*40000+1], false)
				break
			}
			fallthrough
		case 0:
			if len(d.pending) == fuzzConnDepth {
				d.finishAll()
			}
			if !d.broken {
				d.send(op, fuzzBody[:size], true)
			}
		case 2:
			if len(d.pending) == 0 {
				d.ping()
				break
			}
			fallthrough
		case 3:
			d.finishAll()
		}
	}
	d.finishAll()
	if d.broken {
		if err := d.c.Send(new(Ticket), &Request{Method: "GET", EOF: true}, nil); !errors.Is(err, ErrBroken) {
			t.Fatalf("Send on a broken connection: %v, want %v", err, ErrBroken)
		}
	} else if !d.c.Idle() || d.c.Outstanding() != 0 {
		t.Fatalf("every exchange ended, yet Idle() = %v, Outstanding() = %d", d.c.Idle(), d.c.Outstanding())
	}
	d.c.Close()
	for range 2 {
		recvOrFail(t, done, "the worker goroutines to end")
	}
}

func (d *connDriver) send(op byte, data []byte, eof bool) {
	ft := &fuzzTicket{cancel: op&4 != 0, interrupt: op&8 != 0, useRead: op&0x10 != 0}
	req := &Request{Method: "POST", URI: "/f", Proto: "HTTP/1.1", ContentLength: int64(len(data)), EOF: eof}
	var body io.Reader
	if eof {
		req.Body = data
	} else {
		n := min(len(data), ChunkSize)
		ft.rest = data[n:]
		ft.replay = NewReplay(&onlyReader{ft.rest})
		req.Body, body = data[:n], ft.replay
		if op&0x20 != 0 {
			req.Trailer = http.Header{"X-Sum": {"1"}}
		}
	}
	if err := d.c.Send(&ft.t, req, body); err != nil {
		// The worker never closes its reading side before the dispatcher.
		d.t.Fatalf("Send: %v", err)
	}
	d.pending = append(d.pending, ft)
}

// onlyReader hides bytes.Reader's WriterTo, as a client body would.
type onlyReader struct{ b []byte }

func (r *onlyReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func (d *connDriver) ping() {
	d.c.SetDeadline(time.Now().Add(fuzzConnDeadline))
	err := d.c.Ping()
	if err == nil {
		return
	}
	d.checkError(err, false)
	d.fail(err)
}

// finishAll ends every exchange in line, in order.
func (d *connDriver) finishAll() {
	for len(d.pending) > 0 {
		ft := d.pending[0]
		d.pending[0] = nil
		d.pending = d.pending[1:]
		d.finish(ft)
	}
}

// finish ends ft's exchange as the pool does: head, then its body read to
// the end or, for a cancelled or interrupted one, Cancel and Drain.
func (d *connDriver) finish(ft *fuzzTicket) {
	t := d.t
	tk := &ft.t
	if turn := tk.Turn(); turn != nil {
		select {
		case <-turn:
		default:
			t.Fatalf("exchange %d has no turn though every exchange before it ended", tk.ID())
		}
	}
	if d.broken {
		// Released by Discard: never read.
		_, _, err := tk.Head()
		if !errors.Is(err, ErrNotDelivered) && !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("queued exchange behind a failure: %v, want %v or %v", err, ErrNotDelivered, ErrPeerClosed)
		}
		return
	}
	// Each exchange has its own deadline, as in the pool.
	d.c.SetDeadline(time.Now().Add(fuzzConnDeadline))
	if ft.interrupt {
		tk.Interrupt()
	}
	resp, body, err := tk.Head()
	if err == nil {
		if resp.Status < 100 || resp.Status > 999 || resp.ID != tk.ID() {
			t.Fatalf("head %+v for exchange %d", resp, tk.ID())
		}
		if ft.cancel {
			if err = tk.Cancel(); err != nil {
				t.Fatalf("Cancel: %v", err)
			}
			err = tk.Drain()
		} else {
			err = d.readBody(ft, body)
		}
	}
	if ft.replay != nil {
		if errors.Is(err, ErrNotDelivered) {
			d.checkReplay(ft)
		}
		defer ft.replay.Close()
	}
	if err == nil {
		return
	}
	d.checkError(err, ft.interrupt)
	var ae *AbortError
	switch {
	case errors.As(err, &ae) && d.c.Err() == nil:
		return // the exchange is over; the connection is fine
	case errors.Is(err, os.ErrDeadlineExceeded) && d.c.Err() == nil:
		// Interrupted between frames: the pool tells the worker and
		// discards the rest of the exchange, within a new deadline.
		if err := tk.Cancel(); err != nil {
			t.Fatalf("Cancel: %v", err)
		}
		d.c.SetDeadline(time.Now().Add(fuzzConnDeadline))
		if err = tk.Drain(); err != nil {
			d.checkError(err, false)
			d.fail(err)
		}
		return
	}
	d.fail(err)
}

// checkReplay checks that the body of an exchange that failed with
// ErrNotDelivered can be read again from its start, whole.
func (d *connDriver) checkReplay(ft *fuzzTicket) {
	if !ft.replay.Rewind() {
		d.t.Fatal("not delivered, yet its body cannot be sent again")
	}
	var buf [4096]byte
	rest := ft.rest
	for {
		n, err := ft.replay.Read(buf[:])
		if !bytes.HasPrefix(rest, buf[:n]) {
			d.t.Fatalf("the replayed body differs %d bytes before its end", len(rest))
		}
		rest = rest[n:]
		if err == io.EOF {
			break
		}
		if err != nil {
			d.t.Fatalf("reading the replayed body: %v", err)
		}
	}
	if len(rest) > 0 {
		d.t.Fatalf("the replayed body ends %d bytes early", len(rest))
	}
}

func (d *connDriver) readBody(ft *fuzzTicket, b *Body) error {
	n := 0
	var buf [100]byte
	for {
		var p []byte
		var err error
		if ft.useRead {
			var k int
			k, err = b.Read(buf[:])
			p = buf[:k]
		} else {
			p, err = b.Next()
			if err == nil && len(p) == 0 {
				d.t.Fatal("Next returned an empty chunk")
			}
		}
		n += len(p)
		if n > d.child {
			d.t.Fatalf("read %d body bytes from %d bytes of input", n, d.child)
		}
		if err == io.EOF {
			_ = ft.t.Trailer()
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// checkError fails unless err is one of the documented errors of an
// exchange. A deadline is one only after an interrupt: the worker's bytes
// are all written, so any other read ends at once.
func (d *connDriver) checkError(err error, interrupted bool) {
	var pe *ProtocolError
	var ae *AbortError
	switch {
	case errors.As(err, &pe), errors.As(err, &ae):
	case errors.Is(err, ErrPeerClosed), errors.Is(err, ErrBroken), errors.Is(err, ErrNotDelivered):
	case errors.Is(err, os.ErrDeadlineExceeded) && interrupted:
	case errors.Is(err, os.ErrDeadlineExceeded):
		d.t.Fatalf("a read hit the deadline without an interrupt (a hang): %v", err)
	default:
		d.t.Fatalf("unexpected error %v (%T)", err, err)
	}
}

// fail handles a failure that broke the connection, as the pool does once
// the worker is dead: Discard releases the exchanges in line.
func (d *connDriver) fail(err error) {
	if d.c.Err() == nil {
		d.t.Fatalf("error %v left the connection usable", err)
	}
	d.broken = true
	d.c.Discard(err)
}
