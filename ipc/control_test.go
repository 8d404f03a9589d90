package ipc

import (
	"bytes"
	"io"
	"net"
	"net/rpc"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// controlClient connects to serveControl the way go-plugin's client does:
// a yamux client opening three streams, net/rpc with gob on the first.
// quit is closed when the worker's side calls its quit function, and ended
// when serveControl returns.
type controlClient struct {
	mux      *yamux.Session
	rpc      *rpc.Client
	streams  []net.Conn
	quit     chan struct{}
	ended    <-chan struct{}
	quitOnce bool
}

// startControl runs serveControl on the worker's end of a new socket pair
// and returns the dispatcher's end, and a channel closed when serveControl
// returns.
func startControl(tb testing.TB, quit func()) (net.Conn, <-chan struct{}) {
	tb.Helper()
	host, worker := socketpair(tb)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		serveControl(worker, quit)
	}()
	return host, ended
}

func newControlClient(t *testing.T) *controlClient {
	t.Helper()
	c := &controlClient{quit: make(chan struct{})}
	var host net.Conn
	host, c.ended = startControl(t, func() {
		if !c.quitOnce {
			c.quitOnce = true
			close(c.quit)
		}
	})
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Client(host, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.mux = mux
	for range 3 {
		s, err := mux.Open()
		if err != nil {
			t.Fatalf("open stream: %v", err)
		}
		c.streams = append(c.streams, s)
	}
	c.rpc = rpc.NewClient(c.streams[0])
	t.Cleanup(func() {
		c.rpc.Close()
		mux.Close()
		select {
		case <-c.ended:
		case <-time.After(testTimeout):
			t.Error("serveControl did not return after the session closed")
		}
	})
	return c
}

func TestControlPingQuit(t *testing.T) {
	c := newControlClient(t)
	// Past 127 and 65535, sequence numbers take several bytes.
	for i := range 300 {
		var reply struct{}
		if err := c.rpc.Call("Control.Ping", true, &reply); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	select {
	case <-c.quit:
		t.Fatal("quit before Control.Quit")
	default:
	}
	var reply struct{}
	if err := c.rpc.Call("Control.Quit", true, &reply); err != nil {
		t.Fatalf("Control.Quit: %v", err)
	}
	select {
	case <-c.quit:
	case <-time.After(testTimeout):
		t.Fatal("Control.Quit did not quit")
	}
	// Still served after Quit, until the dispatcher closes.
	if err := c.rpc.Call("Control.Ping", true, &reply); err != nil {
		t.Fatalf("ping after quit: %v", err)
	}
}

func TestControlRefusesOtherMethods(t *testing.T) {
	c := newControlClient(t)
	var id uint32
	err := c.rpc.Call("Dispenser.Dispense", "kv", &id)
	if err == nil || err.Error() != "unknown plugin type" {
		t.Fatalf("Dispense: %v, want unknown plugin type", err)
	}
	var reply struct{}
	err = c.rpc.Call("Control.Explode", true, &reply)
	if err == nil || !strings.Contains(err.Error(), "Control.Explode") {
		t.Fatalf("unknown method: %v", err)
	}
	// Long names (lengths of 128 and more take several bytes) and a long
	// argument.
	long := "Control." + strings.Repeat("x", 300)
	if err := c.rpc.Call(long, strings.Repeat("y", 2000), &reply); err == nil {
		t.Fatal("long unknown method answered without error")
	}
	if err := c.rpc.Call("Control.Ping", true, &reply); err != nil {
		t.Fatalf("ping after refusals: %v", err)
	}
}

func TestControlYamuxPingAndWindows(t *testing.T) {
	c := newControlClient(t)
	if _, err := c.mux.Ping(); err != nil {
		t.Fatalf("yamux ping: %v", err)
	}
	// Four windows' worth on the standard error stream, which the worker
	// discards: the writes only finish if it gives the window back.
	data := bytes.Repeat([]byte("e"), 1<<20)
	done := make(chan error, 1)
	go func() {
		_, err := c.streams[2].Write(data)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("write of 1 MiB stalled: no window updates")
	}
	var reply struct{}
	if err := c.rpc.Call("Control.Ping", true, &reply); err != nil {
		t.Fatalf("ping: %v", err)
	}
}

func TestControlEndsOnStreamClose(t *testing.T) {
	c := newControlClient(t)
	var reply struct{}
	if err := c.rpc.Call("Control.Ping", true, &reply); err != nil {
		t.Fatal(err)
	}
	c.streams[0].Close() // FIN on the control stream
	select {
	case <-c.ended:
	case <-time.After(testTimeout):
		t.Fatal("serveControl still serving after the control stream closed")
	}
}

func TestControlRejectsGarbage(t *testing.T) {
	for _, in := range [][]byte{
		{1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0},                // yamux version 1
		{0, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0},                // frame type 9
		{0, 0, 0, 1, 0, 0, 0, 1, 0, 0x10, 0, 0},             // 1 MiB of data: beyond the window
		{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 4, 0xfd, 1, 0, 0}, // a message of 64 KiB
		{0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0},                // even stream
	} {
		host, ended := startControl(t, func() {})
		if _, err := host.Write(in); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ended:
		case <-time.After(testTimeout):
			t.Fatalf("% x: still serving", in)
		}
		host.Close()
	}
}

func TestGobUint(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 255, 256, 300, 65535, 1 << 32, 1<<64 - 1} {
		b := appendGobUint(nil, v)
		got, k, ok := gobUint(b)
		if !ok || got != v || k != len(b) {
			t.Errorf("%d: encoded % x, decoded %d, %d bytes, %v", v, b, got, k, ok)
		}
	}
	if b := appendGobUint(nil, 300); !bytes.Equal(b, []byte{0xfe, 0x01, 0x2c}) {
		t.Errorf("300 encoded as % x, want fe 01 2c", b)
	}
}

// controlSession is the start of a control connection as go-plugin's
// client makes it (PROTOCOL.md appendix B): three streams opened, then a
// Control.Ping call on stream 1, then one with a sequence number past 127.
func controlSession() []byte {
	var b []byte
	for _, id := range []uint32{1, 3, 5} {
		b = appendYamux(b, yamuxWindowUpdate, yamuxSYN, id, 0)
	}
	call := []byte{
		0x2e, 0x7f, 0x03, 0x01, 0x01, 0x07, 'R', 'e', 'q', 'u', 'e', 's', 't', 0x01, 0xff, 0x80, 0x00, 0x01, 0x02,
		0x01, 0x0d, 'S', 'e', 'r', 'v', 'i', 'c', 'e', 'M', 'e', 't', 'h', 'o', 'd', 0x01, 0x0c, 0x00,
		0x01, 0x03, 'S', 'e', 'q', 0x01, 0x06, 0x00, 0x00, 0x00,
		0x11, 0xff, 0x80, 0x01, 0x0c, 'C', 'o', 'n', 't', 'r', 'o', 'l', '.', 'P', 'i', 'n', 'g', 0x00,
		0x03, 0x02, 0x00, 0x01,
	}
	b = appendYamux(b, yamuxData, 0, 1, uint32(len(call)))
	b = append(b, call...)
	later := []byte{0x15, 0xff, 0x80, 0x01, 0x0c, 'C', 'o', 'n', 't', 'r', 'o', 'l', '.', 'P', 'i', 'n', 'g', 0x01, 0xff, 0xc8, 0x00,
		0x03, 0x02, 0x00, 0x01}
	b = appendYamux(b, yamuxData, 0, 1, uint32(len(later)))
	b = append(b, later...)
	return appendYamux(b, yamuxPing, yamuxSYN, 0, 7)
}

// TestControlSession: the recorded session is answered (three
// acknowledgements, two replies, a ping's answer), and the connection
// ends when the input does.
func TestControlSession(t *testing.T) {
	host, done := startControl(t, func() {})
	if _, err := host.Write(controlSession()); err != nil {
		t.Fatal(err)
	}
	host.(*net.UnixConn).CloseWrite()
	out, err := io.ReadAll(host)
	if err != nil {
		t.Fatal(err)
	}
	recvOrFail(t, done, "the end of serveControl")
	if !bytes.Contains(out, []byte("Control.Ping")) || !bytes.Contains(out, appendYamux(nil, yamuxPing, yamuxACK, 0, 7)) {
		t.Fatalf("replies missing from % x", out)
	}
	if n := bytes.Count(out, []byte("Control.Ping")); n != 2 {
		t.Errorf("%d replies to Control.Ping, want 2", n)
	}
}

// FuzzControl: whatever the dispatcher's end sends, serveControl neither
// panics nor keeps serving once the input has ended.
func FuzzControl(f *testing.F) {
	s := controlSession()
	f.Add(s)
	f.Add(s[:len(s)/2])
	f.Add(append(s, appendYamux(nil, yamuxGoAway, 0, 0, 0)...))
	f.Add(appendYamux(nil, yamuxData, yamuxSYN|yamuxFIN, 1, 0))
	f.Fuzz(func(t *testing.T, in []byte) {
		host, done := startControl(t, func() {})
		go io.Copy(io.Discard, host)
		host.Write(in)
		host.(*net.UnixConn).CloseWrite()
		recvOrFail(t, done, "the end of serveControl after the input ended")
	})
}

// A peer that keeps calling and never takes the replies (it gives no
// credit) is cut off once a megabyte of replies waits, not fed memory.
func TestControlUnreadReplies(t *testing.T) {
	host, done := startControl(t, func() {})
	go io.Copy(io.Discard, host) // reads the bytes, but sends no window update
	s := controlSession()
	call := []byte{0x13, 0xff, 0x80, 0x01, 0x0c, 'C', 'o', 'n', 't', 'r', 'o', 'l', '.', 'P', 'i', 'n', 'g', 0x01, 0x01, 0x00,
		0x03, 0x02, 0x00, 0x01}
	var frame []byte
	for range 4000 {
		frame = append(frame, call...)
	}
	in := append([]byte(nil), s[:len(s)-yamuxHeader]...) // the session without its final ping
	for range 100 {                                      // 400,000 calls: far more than 1 MiB of replies
		in = appendYamux(in, yamuxData, 0, 1, uint32(len(frame)))
		in = append(in, frame...)
	}
	go host.Write(in)
	recvOrFail(t, done, "serveControl giving up on a peer that takes no replies")
}
