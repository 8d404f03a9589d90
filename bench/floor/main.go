// Command floor is the process-hop floor for the benchmarks in bench/: the
// least a Go net/http front can do to serve each request from another
// process, against which the dispatcher's own costs are measured.
//
// It serves the same two endpoints as bench/inproc (GET / answers
// "hello world\n"; POST /echo answers the request body) by handing every
// request to one of -children child processes (this binary run again with
// -child, GOMAXPROCS=1, as the dispatcher runs its workers). The frames are
// a 4-byte big-endian length and raw bytes: no msgpack, no headers, no
// pipelining, no supervision, no flow control, no limits. Nothing here is
// fit to serve anything else. -mode says how requests travel:
//
//   - pairs (default): each child holds -conns socket pairs; a request takes
//     a free one, writes one frame, reads one frame back, and gives the pair
//     back: one write and one read per direction, the floor the performance
//     issue names.
//
//   - mux: each child holds -conns sockets, each carrying up to -depth
//     requests at once, told apart by a 2-byte id in every frame (as the
//     dispatcher pipelines requests on a worker's slot). Every frame is
//     written on its own; one goroutine per socket reads the answers,
//     several per read when several are there, and hands each to its
//     request.
//
//   - coalesce: mux, and frames ready for the same socket go out in one
//     write, both ways: a request whose socket is being written appends its
//     frame for the writer to send next, and a child answers every request
//     it has read before it writes (and waits for more). Nothing waits to
//     fill a batch.
//
//     floor -listen 127.0.0.1:8080 [-children 2] [-mode pairs|mux|coalesce] [-conns N] [-depth N]
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to serve HTTP on")
	children := flag.Int("children", runtime.NumCPU(), "child processes")
	mode := flag.String("mode", "pairs", "how requests travel: pairs, mux or coalesce (see the package doc)")
	conns := flag.Int("conns", 0, "sockets per child (default: 16 for pairs, 1 for mux and coalesce)")
	depth := flag.Int("depth", 16, "mux, coalesce: requests in flight on one socket")
	child := flag.Bool("child", false, "serve the inherited sockets (internal)")
	flag.Parse()
	if *conns == 0 {
		*conns = 16
		if *mode != "pairs" {
			*conns = 1
		}
	}
	if *child {
		serveChild(*conns, *mode)
		return
	}
	if *children < 1 || *conns < 1 || *depth < 1 || *depth > 1<<16 {
		log.Fatal("floor: -children, -conns and -depth must be positive (depth at most 65536)")
	}
	h := &front{}
	switch *mode {
	case "pairs":
		pool := make(chan *pair, *children**conns)
		for range *children {
			conns, err := spawn(*conns, *mode)
			if err != nil {
				log.Fatal(err)
			}
			for _, c := range conns {
				pool <- &pair{c: c, r: bufio.NewReaderSize(c, 16<<10)}
			}
		}
		h.call = (&pairs{pool: pool}).call
	case "mux", "coalesce":
		m := &muxed{free: make(chan token, *children**conns**depth), coalesce: *mode == "coalesce"}
		for range *children {
			conns, err := spawn(*conns, *mode)
			if err != nil {
				log.Fatal(err)
			}
			for _, c := range conns {
				m.add(c, *depth)
			}
		}
		h.call = m.call
	default:
		log.Fatalf("floor: -mode %q: want pairs, mux or coalesce", *mode)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", h.hello)
	mux.HandleFunc("POST /echo", h.echo)
	log.Fatal(http.ListenAndServe(*listen, mux))
}

// pair is the front's end of one socket pair to a child.
type pair struct {
	c   net.Conn
	r   *bufio.Reader
	out []byte // the frame being written
	in  []byte // the last frame read
}

// spawn starts one child holding n sockets and returns the front's ends.
func spawn(n int, mode string) ([]net.Conn, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-child", "-conns", strconv.Itoa(n), "-mode", mode)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	var mine []net.Conn
	for range n {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		theirs := os.NewFile(uintptr(fds[1]), "child")
		cmd.ExtraFiles = append(cmd.ExtraFiles, theirs)
		f := os.NewFile(uintptr(fds[0]), "front")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		mine = append(mine, c)
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	go func() {
		err := cmd.Wait()
		log.Fatalf("floor: child exited: %v", err)
	}()
	return mine, nil
}

// front serves HTTP; call sends one request (kind, then body) to a child
// and returns the answer, valid until the next call.
type front struct {
	call func(kind byte, body []byte, answer func([]byte))
}

type pairs struct{ pool chan *pair }

func (f *pairs) call(kind byte, body []byte, answer func([]byte)) {
	p := <-f.pool
	defer func() { f.pool <- p }()
	p.out = binary.BigEndian.AppendUint32(p.out[:0], uint32(1+len(body)))
	p.out = append(p.out, kind)
	p.out = append(p.out, body...)
	if _, err := p.c.Write(p.out); err != nil {
		log.Fatalf("floor: %v", err)
	}
	in, err := readFrame(p.r, p.in)
	if err != nil {
		log.Fatalf("floor: %v", err)
	}
	p.in = in
	answer(in)
}

func (f *front) hello(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	f.answer(w, 'h', nil, "text/plain; charset=utf-8")
}

func (f *front) echo(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.answer(w, 'e', body, "application/octet-stream")
}

// answer writes what a child answers to one request frame.
func (f *front) answer(w http.ResponseWriter, kind byte, body []byte, contentType string) {
	f.call(kind, body, func(b []byte) {
		w.Header().Set("Content-Type", contentType)
		w.Write(b)
	})
}

// muxed is the front of the mux and coalesce modes.
type muxed struct {
	free     chan token // requests that may be sent: one per socket and id
	coalesce bool
}

// token is the right to send one request on a socket, under an id.
type token struct {
	s  *muxSocket
	id uint16
}

// muxSocket is the front's end of one socket of the mux and coalesce modes.
type muxSocket struct {
	c       net.Conn
	mu      sync.Mutex
	out     []byte // coalesce: frames waiting to be written
	spare   []byte
	writing bool            // coalesce: a request is writing out
	frames  [][]byte        // by id: the request's frame, then its answer
	ready   []chan struct{} // by id: the answer is in frames[id]
}

func (m *muxed) add(c net.Conn, depth int) {
	s := &muxSocket{c: c, frames: make([][]byte, depth), ready: make([]chan struct{}, depth)}
	for id := range depth {
		s.ready[id] = make(chan struct{}, 1)
		m.free <- token{s, uint16(id)}
	}
	go s.read()
}

func (m *muxed) call(kind byte, body []byte, answer func([]byte)) {
	t := <-m.free
	defer func() { m.free <- t }()
	s := t.s
	f := binary.BigEndian.AppendUint32(s.frames[t.id][:0], uint32(3+len(body)))
	f = binary.BigEndian.AppendUint16(f, t.id)
	f = append(f, kind)
	f = append(f, body...)
	s.frames[t.id] = f
	if m.coalesce {
		s.send(f)
	} else {
		s.mu.Lock()
		_, err := s.c.Write(f)
		s.mu.Unlock()
		if err != nil {
			log.Fatalf("floor: %v", err)
		}
	}
	<-s.ready[t.id]
	answer(s.frames[t.id])
}

// send writes frame with the others waiting: if a request is already
// writing, frame goes out with its next write; else this one writes until
// nothing is left.
func (s *muxSocket) send(frame []byte) {
	s.mu.Lock()
	s.out = append(s.out, frame...)
	if s.writing {
		s.mu.Unlock()
		return
	}
	s.writing = true
	for len(s.out) > 0 {
		b := s.out
		s.out = s.spare[:0]
		s.mu.Unlock()
		if _, err := s.c.Write(b); err != nil {
			log.Fatalf("floor: %v", err)
		}
		s.mu.Lock()
		s.spare = b[:0]
	}
	s.writing = false
	s.mu.Unlock()
}

// read hands each answer (a frame: id, then the answer) to its request.
func (s *muxSocket) read() {
	r := bufio.NewReaderSize(s.c, 64<<10)
	var in []byte
	for {
		var err error
		if in, err = readFrame(r, in); err != nil || len(in) < 2 {
			log.Fatalf("floor: reading an answer: %v", err)
		}
		id := binary.BigEndian.Uint16(in)
		if int(id) >= len(s.frames) {
			log.Fatalf("floor: answer for id %d", id)
		}
		s.frames[id] = append(s.frames[id][:0], in[2:]...)
		s.ready[id] <- struct{}{}
	}
}

func readFrame(r *bufio.Reader, buf []byte) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return buf, err
	}
	size := int(binary.BigEndian.Uint32(n[:]))
	if size > 64<<20 {
		return buf, errors.New("floor: frame too large")
	}
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	_, err := io.ReadFull(r, buf)
	return buf, err
}

// frameBuffered reports whether r holds a whole frame: reading it will not
// wait for the socket.
func frameBuffered(r *bufio.Reader) bool {
	if r.Buffered() < 4 {
		return false
	}
	n, _ := r.Peek(4)
	return r.Buffered() >= 4+int(binary.BigEndian.Uint32(n))
}

// serveChild answers frames on the inherited descriptors 3..3+n-1 until the
// front closes them.
func serveChild(n int, mode string) {
	done := make(chan struct{}, n)
	for i := range n {
		c, err := net.FileConn(os.NewFile(uintptr(3+i), "socket"))
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer func() { done <- struct{}{} }()
			serveSocket(c, mode)
		}()
	}
	for range n {
		<-done
	}
}

// serveSocket answers the frames of one socket: a kind byte ('h' hello,
// 'e' echo) and a body, after a 2-byte id in the mux and coalesce modes
// (repeated in the answer). In the coalesce mode, answers are written when
// no whole request is left to read.
func serveSocket(c net.Conn, mode string) {
	r := bufio.NewReaderSize(c, 64<<10)
	hdr := 0
	if mode != "pairs" {
		hdr = 2
	}
	var in, out []byte
	hello := []byte("hello world\n")
	for {
		if len(out) > 0 && (mode != "coalesce" || !frameBuffered(r)) {
			if _, err := c.Write(out); err != nil {
				return
			}
			out = out[:0]
		}
		var err error
		if in, err = readFrame(r, in); err != nil || len(in) < hdr+1 {
			return
		}
		answer := hello
		if in[hdr] == 'e' {
			answer = in[hdr+1:]
		}
		out = binary.BigEndian.AppendUint32(out, uint32(hdr+len(answer)))
		out = append(out, in[:hdr]...)
		out = append(out, answer...)
	}
}
