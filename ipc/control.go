package ipc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// The worker's side of go-plugin's control connection, written from
// PROTOCOL.md (section 2.2 and appendix B) rather than with yamux and
// net/rpc: those two packages, with the encoding/gob and html/template
// packages net/rpc pulls in, made every worker binary 4 MB larger and its
// start 0.5 ms (a quarter) longer, for a connection this dispatcher no
// longer makes. What is served is small: yamux's framing as a server (stream
// opens, window updates, pings, go-away), and on stream 1 net/rpc's gob
// messages for Control.Ping, Control.Quit and, refused, every other method.
// The conformance checker (cmd/conformance) and this package's tests talk to
// it with go-plugin's own client, yamux and net/rpc.

// yamux frame types and flags (github.com/hashicorp/yamux spec.md).
const (
	yamuxHeader = 12
	yamuxWindow = 256 << 10 // initial receive window of each stream

	yamuxData         = 0
	yamuxWindowUpdate = 1
	yamuxPing         = 2
	yamuxGoAway       = 3

	yamuxSYN = 1
	yamuxACK = 2
	yamuxFIN = 4
	yamuxRST = 8

	controlStream = 1 // the first stream the dispatcher opens
	// maxControlMessage bounds one gob message on the control stream; the
	// largest legitimate one (a call's type definitions) is under 100 bytes.
	maxControlMessage = 4 << 10
	// maxControlReplies bounds the replies waiting for the dispatcher to
	// take them (to give credit): a peer that calls on and never reads is
	// cut off rather than fed memory.
	maxControlReplies = 1 << 20
)

// The gob bytes of the worker's replies. A gob encoder describes each type
// once per stream, before its first value, and numbers types from 64 in the
// order it meets them; these are the definitions a Go net/rpc server sends.
var (
	// type 64 = struct Response {ServiceMethod string; Seq uint64; Error string}
	gobResponseType = []byte{
		0x39, 0x7f, 0x03, 0x01, 0x01, 0x08, 'R', 'e', 's', 'p', 'o', 'n', 's', 'e',
		0x01, 0xff, 0x80, 0x00, 0x01, 0x03,
		0x01, 0x0d, 'S', 'e', 'r', 'v', 'i', 'c', 'e', 'M', 'e', 't', 'h', 'o', 'd', 0x01, 0x0c, 0x00,
		0x01, 0x03, 'S', 'e', 'q', 0x01, 0x06, 0x00,
		0x01, 0x05, 'E', 'r', 'r', 'o', 'r', 0x01, 0x0c, 0x00,
		0x00, 0x00,
	}
	// type 65 = struct {} (every reply's value)
	gobEmptyType = []byte{0x0a, 0xff, 0x81, 0x03, 0x01, 0x02, 0xff, 0x82, 0x00, 0x00, 0x00}
	// a value of type 65
	gobEmptyValue = []byte{0x03, 0xff, 0x82, 0x00}
)

// controlConn is one control connection, served by one goroutine: it reads
// a frame, answers what needs answering, and writes before reading on.
type controlConn struct {
	nc   net.Conn
	br   *bufio.Reader
	quit func()

	out []byte // frames to write after the current one is handled
	// Stream 1, net/rpc: in holds received bytes not yet parsed; reply
	// holds reply bytes waiting for the dispatcher's receive window
	// (credit), in bytes.
	in     []byte
	reply  []byte
	credit int
	// unacked counts the bytes received per stream since its last window
	// update.
	unacked map[uint32]int
	opened  map[uint32]bool

	// The call being read: its header came, its argument is next.
	inCall     bool
	method     string
	seq        uint64
	typesSent  bool // the reply types were described
	quitting   bool
	frame, msg []byte
}

// serveControl serves one control connection until it ends, then closes
// it. quit is called when the dispatcher calls Control.Quit (after the reply
// is written) and when the connection ends.
func serveControl(nc net.Conn, quit func()) {
	defer nc.Close()
	c := &controlConn{
		nc: nc, br: bufio.NewReaderSize(nc, 4096), quit: quit,
		credit:  yamuxWindow,
		unacked: map[uint32]int{},
		opened:  map[uint32]bool{},
	}
	_ = c.serve()
}

// errControlEnd: the dispatcher closed the control stream or the session.
var errControlEnd = errors.New("control connection closed")

func (c *controlConn) serve() error {
	var hdr [yamuxHeader]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		if hdr[0] != 0 {
			return fmt.Errorf("yamux version %d", hdr[0])
		}
		typ, flags := hdr[1], binary.BigEndian.Uint16(hdr[2:4])
		id, length := binary.BigEndian.Uint32(hdr[4:8]), binary.BigEndian.Uint32(hdr[8:12])
		var err error
		switch typ {
		case yamuxData:
			err = c.data(id, flags, length)
		case yamuxWindowUpdate:
			err = c.windowUpdate(id, flags, length)
		case yamuxPing:
			if flags&yamuxSYN != 0 {
				c.out = appendYamux(c.out, yamuxPing, yamuxACK, 0, length)
			}
		case yamuxGoAway:
			err = errControlEnd
		default:
			err = fmt.Errorf("yamux frame type %d", typ)
		}
		if err != nil {
			return err
		}
		if err := c.flush(); err != nil {
			return err
		}
		if c.quitting {
			c.quitting = false
			c.quit()
		}
	}
}

// open acknowledges a stream the dispatcher opens.
func (c *controlConn) open(id uint32, flags uint16) error {
	if flags&yamuxSYN == 0 || c.opened[id] {
		return nil
	}
	if id%2 == 0 || len(c.opened) >= 16 {
		// The client opens odd streams, three of them in go-plugin.
		return fmt.Errorf("yamux stream %d refused", id)
	}
	c.opened[id] = true
	c.out = appendYamux(c.out, yamuxWindowUpdate, yamuxACK, id, 0)
	return nil
}

func (c *controlConn) windowUpdate(id uint32, flags uint16, n uint32) error {
	if err := c.open(id, flags); err != nil {
		return err
	}
	if id == controlStream {
		c.credit += int(n)
	}
	if flags&(yamuxFIN|yamuxRST) != 0 && id == controlStream {
		return errControlEnd
	}
	return nil
}

func (c *controlConn) data(id uint32, flags uint16, n uint32) error {
	if err := c.open(id, flags); err != nil {
		return err
	}
	if int(n) > yamuxWindow-c.unacked[id] {
		return fmt.Errorf("yamux stream %d: %d bytes beyond the window", id, n)
	}
	if id == controlStream {
		start := len(c.in)
		c.in = append(c.in, make([]byte, n)...)
		if _, err := io.ReadFull(c.br, c.in[start:]); err != nil {
			return err
		}
		if err := c.calls(); err != nil {
			return err
		}
	} else if _, err := c.br.Discard(int(n)); err != nil {
		return err
	}
	// Give the window back once half of it is used, as yamux does.
	if c.unacked[id] += int(n); c.unacked[id] >= yamuxWindow/2 {
		c.out = appendYamux(c.out, yamuxWindowUpdate, 0, id, uint32(c.unacked[id]))
		c.unacked[id] = 0
	}
	if flags&(yamuxFIN|yamuxRST) != 0 && id == controlStream {
		return errControlEnd
	}
	return nil
}

// calls parses the complete gob messages received on the control stream. A
// net/rpc call is two values, each possibly preceded by type definitions:
// the header (struct Request {ServiceMethod string; Seq uint64}) and the
// argument, which is ignored.
func (c *controlConn) calls() error {
	for len(c.in) > 0 {
		size, k, ok := gobUint(c.in)
		if !ok {
			if len(c.in) > 9 {
				return errors.New("gob: bad message length")
			}
			return nil
		}
		if size == 0 || size > maxControlMessage {
			return fmt.Errorf("gob: message of %d bytes", size)
		}
		if uint64(len(c.in)-k) < size {
			return nil
		}
		msg := c.in[k : k+int(size)]
		c.in = c.in[k+int(size):]
		if err := c.message(msg); err != nil {
			return err
		}
	}
	c.in = c.in[:0]
	return nil
}

func (c *controlConn) message(msg []byte) error {
	typ, k, ok := gobInt(msg)
	if !ok {
		return errors.New("gob: bad type id")
	}
	if typ < 0 {
		return nil // a type definition: the two values' layouts are known
	}
	if c.inCall {
		// The argument. The call is complete: answer it.
		c.inCall = false
		c.answer()
		return nil
	}
	method, seq, err := gobRequest(msg[k:])
	if err != nil {
		return err
	}
	if len(c.reply) > maxControlReplies {
		return fmt.Errorf("%d bytes of replies not taken", len(c.reply))
	}
	c.inCall, c.method, c.seq = true, method, seq
	return nil
}

// answer queues the reply to the call just read.
func (c *controlConn) answer() {
	var errText string
	switch c.method {
	case "Control.Ping":
	case "Control.Quit":
		c.quitting = true
	case "Dispenser.Dispense":
		// Requests travel on the slots: no plugin is dispensed.
		errText = "unknown plugin type"
	default:
		errText = "rpc: can't find service " + c.method
	}
	if !c.typesSent {
		c.reply = append(c.reply, gobResponseType...)
	}
	// A value of type 64: field deltas count from the previous field
	// present; a zero value is not sent; 0 ends the struct.
	v := append(c.msg[:0], 0xff, 0x80, 0x01)
	v = appendGobString(v, c.method)
	delta := uint64(2)
	if c.seq != 0 {
		v = append(v, 0x01)
		v = appendGobUint(v, c.seq)
		delta = 1
	}
	if errText != "" {
		v = appendGobUint(v, delta)
		v = appendGobString(v, errText)
	}
	v = append(v, 0x00)
	c.msg = v
	c.reply = appendGobUint(c.reply, uint64(len(v)))
	c.reply = append(c.reply, v...)
	if !c.typesSent {
		c.reply = append(c.reply, gobEmptyType...)
		c.typesSent = true
	}
	c.reply = append(c.reply, gobEmptyValue...)
}

// flush writes the pending frames and as much of the replies as the
// dispatcher's window takes, in one write.
func (c *controlConn) flush() error {
	if n := min(len(c.reply), c.credit); n > 0 {
		c.out = appendYamux(c.out, yamuxData, 0, controlStream, uint32(n))
		c.out = append(c.out, c.reply[:n]...)
		c.reply = c.reply[:copy(c.reply, c.reply[n:])]
		c.credit -= n
	}
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.nc.Write(c.out)
	c.out = c.out[:0]
	return err
}

func appendYamux(b []byte, typ byte, flags uint16, id, length uint32) []byte {
	b = append(b, 0, typ)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint32(b, id)
	return binary.BigEndian.AppendUint32(b, length)
}

// gobRequest reads the fields of a net/rpc Request value: ServiceMethod
// (field 0) and Seq (field 1).
func gobRequest(b []byte) (method string, seq uint64, err error) {
	field := -1
	for {
		delta, k, ok := gobUint(b)
		if !ok {
			return "", 0, errors.New("gob: truncated request header")
		}
		b = b[k:]
		if delta == 0 {
			return method, seq, nil
		}
		if delta > 2 {
			return "", 0, fmt.Errorf("gob: request header field delta %d", delta)
		}
		field += int(delta)
		switch field {
		case 0:
			n, k, ok := gobUint(b)
			if !ok || uint64(len(b)-k) < n {
				return "", 0, errors.New("gob: truncated method name")
			}
			method, b = string(b[k:k+int(n)]), b[k+int(n):]
		case 1:
			if seq, k, ok = gobUint(b); !ok {
				return "", 0, errors.New("gob: truncated sequence number")
			}
			b = b[k:]
		default:
			return "", 0, fmt.Errorf("gob: request header field %d", field)
		}
	}
}

// gobUint decodes gob's unsigned integer: below 128, one byte; otherwise
// the byte count, negated, then the value big-endian. k is the bytes used;
// ok is false if b is too short or malformed.
func gobUint(b []byte) (v uint64, k int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	if b[0] < 0x80 {
		return uint64(b[0]), 1, true
	}
	n := -int(int8(b[0]))
	if n > 8 || len(b) < 1+n {
		return 0, 0, false
	}
	for _, x := range b[1 : 1+n] {
		v = v<<8 | uint64(x)
	}
	return v, 1 + n, true
}

// gobInt decodes gob's signed integer: an unsigned one whose low bit is the
// sign (set: the complement of the rest).
func gobInt(b []byte) (int64, int, bool) {
	u, k, ok := gobUint(b)
	if u&1 != 0 {
		return ^int64(u >> 1), k, ok
	}
	return int64(u >> 1), k, ok
}

func appendGobUint(b []byte, v uint64) []byte {
	if v < 0x80 {
		return append(b, byte(v))
	}
	var be [8]byte
	binary.BigEndian.PutUint64(be[:], v)
	i := 0
	for be[i] == 0 {
		i++
	}
	b = append(b, byte(-(8 - i)))
	return append(b, be[i:]...)
}

func appendGobString(b []byte, s string) []byte {
	b = appendGobUint(b, uint64(len(s)))
	return append(b, s...)
}
