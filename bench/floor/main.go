// Command floor is the process-hop floor for the benchmarks in bench/: the
// least a Go net/http front can do to serve each request from another
// process, against which the dispatcher's own costs are measured.
//
// It serves the same two endpoints as bench/inproc (GET / answers
// "hello world\n"; POST /echo answers the request body) by handing every
// request to one of -children child processes (this binary run again with
// -child, GOMAXPROCS=1, as the dispatcher runs its workers). Each child
// holds -conns socket pairs; a request takes a free one, writes one frame,
// reads one frame back, and gives the pair back: one write and one read per
// direction, the floor the performance issue names. The frames are a
// 4-byte big-endian length and raw bytes: no msgpack, no headers, no
// request ids, no pipelining, no supervision, no flow control, no
// limits. Nothing here is fit to serve anything else.
//
//	floor -listen 127.0.0.1:8080 [-children 2] [-conns 16]
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
	"syscall"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to serve HTTP on")
	children := flag.Int("children", runtime.NumCPU(), "child processes")
	conns := flag.Int("conns", 16, "socket pairs per child: requests one child serves at once")
	child := flag.Bool("child", false, "serve the inherited socket pairs (internal)")
	flag.Parse()
	if *child {
		serveChild(*conns)
		return
	}
	if *children < 1 || *conns < 1 {
		log.Fatal("floor: -children and -conns must be positive")
	}
	pool := make(chan *pair, *children**conns)
	for range *children {
		if err := spawn(*conns, pool); err != nil {
			log.Fatal(err)
		}
	}
	h := &front{pool: pool}
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

// spawn starts one child holding n socket pairs and puts the front's ends
// in pool.
func spawn(n int, pool chan *pair) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-child", "-conns", strconv.Itoa(n))
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	var mine []*pair
	for range n {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		theirs := os.NewFile(uintptr(fds[1]), "child")
		cmd.ExtraFiles = append(cmd.ExtraFiles, theirs)
		f := os.NewFile(uintptr(fds[0]), "front")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return err
		}
		mine = append(mine, &pair{c: c, r: bufio.NewReaderSize(c, 16<<10)})
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	go func() {
		err := cmd.Wait()
		log.Fatalf("floor: child exited: %v", err)
	}()
	for _, p := range mine {
		pool <- p
	}
	return nil
}

type front struct{ pool chan *pair }

// call sends one request frame (kind, then body) and returns the answer.
func (f *front) call(kind byte, body []byte) ([]byte, error) {
	p := <-f.pool
	defer func() { f.pool <- p }()
	p.out = binary.BigEndian.AppendUint32(p.out[:0], uint32(1+len(body)))
	p.out = append(p.out, kind)
	p.out = append(p.out, body...)
	if _, err := p.c.Write(p.out); err != nil {
		return nil, err
	}
	in, err := readFrame(p.r, p.in)
	p.in = in
	return in, err
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
	b, err := f.call(kind, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Write(b)
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

// serveChild answers frames on the inherited descriptors 3..3+n-1 until the
// front closes them.
func serveChild(n int) {
	done := make(chan struct{}, n)
	for i := range n {
		c, err := net.FileConn(os.NewFile(uintptr(3+i), "pair"))
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer func() { done <- struct{}{} }()
			r := bufio.NewReaderSize(c, 16<<10)
			var in, out []byte
			hello := []byte("hello world\n")
			for {
				var err error
				if in, err = readFrame(r, in); err != nil || len(in) == 0 {
					return
				}
				answer := hello
				if in[0] == 'e' {
					answer = in[1:]
				}
				out = binary.BigEndian.AppendUint32(out[:0], uint32(len(answer)))
				out = append(out, answer...)
				if _, err := c.Write(out); err != nil {
					return
				}
			}
		}()
	}
	for range n {
		<-done
	}
}
