package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// hexBlocks returns the bytes of each ```hex block of ipc/PROTOCOL.md, where
// ';' starts a comment.
func hexBlocks(t *testing.T) [][]byte {
	t.Helper()
	doc, err := os.ReadFile("../../ipc/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks [][]byte
	rest := string(doc)
	for {
		_, after, ok := strings.Cut(rest, "\n```hex\n")
		if !ok {
			return blocks
		}
		body, tail, ok := strings.Cut(after, "\n```\n")
		if !ok {
			t.Fatal("unterminated hex block")
		}
		rest = tail
		var digits strings.Builder
		for _, line := range strings.Split(body, "\n") {
			line, _, _ = strings.Cut(line, ";")
			digits.WriteString(strings.Join(strings.Fields(line), ""))
		}
		b, err := hex.DecodeString(digits.String())
		if err != nil {
			t.Fatalf("hex block %d: %v", len(blocks)+1, err)
		}
		blocks = append(blocks, b)
	}
}

// frames splits b into frames, checking each length prefix.
func frames(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("%d stray bytes", len(b))
		}
		n := int(binary.BigEndian.Uint32(b))
		if n < 1 || 4+n > len(b) {
			t.Fatalf("length prefix %d with %d bytes left", n, len(b)-4)
		}
		out = append(out, b[:4+n])
		b = b[4+n:]
	}
	return out
}

// workerWrites returns what a worker's ServerConn writes when write runs.
func workerWrites(t *testing.T, write func(*ipc.ServerConn) error) []byte {
	t.Helper()
	w, h := net.Pipe()
	defer h.Close()
	sc := ipc.NewServerConn(w, 0)
	errc := make(chan error, 1)
	go func() {
		errc <- write(sc)
		w.Close()
	}()
	b, err := io.ReadAll(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return b
}

// workerReads decodes b as frames a worker receives, with package ipc.
func workerReads(t *testing.T, b []byte) []ipc.Frame {
	t.Helper()
	w, h := net.Pipe()
	defer w.Close()
	go func() {
		h.Write(b)
		h.Close()
	}()
	sc := ipc.NewServerConn(w, 0)
	var out []ipc.Frame
	for {
		f, err := sc.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("frame %d: %v", len(out)+1, err)
		}
		if f.Request != nil {
			r := *f.Request
			f.Request = &r
		}
		out = append(out, f)
	}
}

// dispatcherConn returns a dispatcher's Conn whose next exchange has id 2,
// as in the examples, and the worker's end of it.
func dispatcherConn(t *testing.T) (*ipc.Conn, net.Conn) {
	t.Helper()
	h, w := net.Pipe()
	t.Cleanup(func() { h.Close(); w.Close() })
	conn := ipc.NewConn(h, 0)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	w.SetDeadline(time.Now().Add(10 * time.Second))
	pinged := make(chan error, 1)
	go func() { pinged <- conn.Ping() }()
	sc := ipc.NewServerConn(w, 0)
	if f, err := sc.Next(); err != nil || f.Kind != ipc.KindPing || f.ID != 1 {
		t.Fatalf("first frame %v, %v; want ping 1", f, err)
	}
	if err := sc.WritePong(1); err != nil {
		t.Fatal(err)
	}
	if err := <-pinged; err != nil {
		t.Fatal(err)
	}
	return conn, w
}

func frameBytes(t *testing.T, r io.Reader) []byte {
	t.Helper()
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatal(err)
	}
	return append(hdr[:], b...)
}

// The example frames of PROTOCOL.md's appendix A are what package ipc sends
// and decodes, and what the kit's own decoder accepts.
func TestProtocolExamples(t *testing.T) {
	blocks := hexBlocks(t)
	if len(blocks) != 5 {
		t.Fatalf("%d hex blocks, want 5", len(blocks))
	}
	get := &ipc.Request{Method: "GET", URI: "/hi?x=1", Proto: "HTTP/1.1", Header: http.Header{"Accept": {"*/*"}},
		Host: "example.com", RemoteAddr: "192.0.2.7:51234", RequestID: "r1", EOF: true}
	hi := &ipc.Response{ID: 2, Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("hi\n"), EOF: true}

	t.Run("request", func(t *testing.T) {
		conn, w := dispatcherConn(t)
		type result struct {
			resp *ipc.Response
			body []byte
			err  error
		}
		done := make(chan result, 1)
		go func() {
			resp, body, err := conn.RoundTrip(get, nil)
			var b []byte
			if err == nil {
				b, err = io.ReadAll(body)
			}
			done <- result{resp, b, err}
		}()
		if sent := frameBytes(t, w); !bytes.Equal(sent, blocks[0]) {
			t.Errorf("the dispatcher sends\n%x\nthe document shows\n%x", sent, blocks[0])
		}
		got := workerReads(t, blocks[0])
		want := *get
		want.ID = 2
		if len(got) != 1 || !reflect.DeepEqual(*got[0].Request, want) {
			t.Errorf("decoded %+v, want %+v", got, want)
		}
		// The complete answer of the second block.
		if _, err := w.Write(blocks[1]); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.err != nil || r.resp.Status != 200 || r.resp.Header.Get("Content-Type") != "text/plain" || string(r.body) != "hi\n" {
			t.Errorf("the dispatcher read %+v %q %v", r.resp, r.body, r.err)
		}
	})

	t.Run("complete response", func(t *testing.T) {
		written := workerWrites(t, func(sc *ipc.ServerConn) error { return sc.WriteResponse(hi) })
		if !bytes.Equal(written, blocks[1]) {
			t.Errorf("a worker writes\n%x\nthe document shows\n%x", written, blocks[1])
		}
		kitDecodes(t, blocks[1])
	})

	t.Run("streamed response", func(t *testing.T) {
		written := workerWrites(t, func(sc *ipc.ServerConn) error {
			head := *hi
			head.Body, head.EOF = nil, false
			if err := sc.WriteResponse(&head); err != nil {
				return err
			}
			if err := sc.WriteBody(2, []byte("hi\n")); err != nil {
				return err
			}
			return sc.WriteEnd(2, http.Header{"Sum": {"36"}})
		})
		if !bytes.Equal(written, blocks[2]) {
			t.Errorf("a worker writes\n%x\nthe document shows\n%x", written, blocks[2])
		}
		kitDecodes(t, blocks[2])

		conn, w := dispatcherConn(t)
		answered := make(chan error, 1)
		go func() {
			// Skip the request, then answer with the document's frames.
			var hdr [4]byte
			_, err := io.ReadFull(w, hdr[:])
			if err == nil {
				_, err = io.CopyN(io.Discard, w, int64(binary.BigEndian.Uint32(hdr[:])))
			}
			if err == nil {
				_, err = w.Write(blocks[2])
			}
			answered <- err
		}()
		resp, body, err := conn.RoundTrip(get, nil)
		if werr := <-answered; werr != nil {
			t.Fatal(werr)
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(body)
		if err != nil || resp.Status != 200 || string(b) != "hi\n" || conn.Trailer().Get("Sum") != "36" {
			t.Errorf("the dispatcher read %+v %q %v, trailer %v", resp, b, err, conn.Trailer())
		}
	})

	t.Run("cancel, abort, ping, pong", func(t *testing.T) {
		fs := frames(t, blocks[3])
		if len(fs) != 4 {
			t.Fatalf("%d frames, want 4", len(fs))
		}
		got := workerReads(t, append(append([]byte(nil), fs[0]...), fs[2]...))
		if len(got) != 2 || got[0].Kind != ipc.KindCancel || got[0].ID != 4 || got[1].Kind != ipc.KindPing || got[1].ID != 5 {
			t.Errorf("decoded %+v, want cancel 4 and ping 5", got)
		}
		abort := workerWrites(t, func(sc *ipc.ServerConn) error { return sc.WriteAbort(4, "cancelled before it started") })
		if !bytes.Equal(abort, fs[1]) {
			t.Errorf("a worker's abort is %x, the document shows %x", abort, fs[1])
		}
		if pong := workerWrites(t, func(sc *ipc.ServerConn) error { return sc.WritePong(5) }); !bytes.Equal(pong, fs[3]) {
			t.Errorf("a worker's pong is %x, the document shows %x", pong, fs[3])
		}
		kitDecodes(t, append(append([]byte(nil), fs[1]...), fs[3]...))
	})

	t.Run("head-ack pong and acknowledgement", func(t *testing.T) {
		fs := frames(t, blocks[4])
		if len(fs) != 2 {
			t.Fatalf("%d frames, want 2", len(fs))
		}
		written := workerWrites(t, func(sc *ipc.ServerConn) error {
			sc.SetFeatures([]string{ipc.FeatureInformational, ipc.FeatureHeadAck})
			if err := sc.WritePong(1); err != nil {
				return err
			}
			return sc.WriteAck(3)
		})
		if !bytes.Equal(written, blocks[4]) {
			t.Errorf("a worker writes\n%x\nthe document shows\n%x", written, blocks[4])
		}
		kitDecodes(t, blocks[4])
		if f, err := decodeW(fs[0][4], fs[0][5:]); err != nil || !reflect.DeepEqual(f.features, []string{"informational", "head-ack"}) {
			t.Errorf("the kit decodes the pong's features as %q, %v", f.features, err)
		}
		// The dispatcher reads the pong's list.
		h, w := net.Pipe()
		t.Cleanup(func() { h.Close(); w.Close() })
		conn := ipc.NewConn(h, 0)
		pinged := make(chan error, 1)
		go func() { pinged <- conn.Ping() }()
		if _, err := io.ReadFull(w, make([]byte, 7)); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(fs[0]); err != nil {
			t.Fatal(err)
		}
		if err := <-pinged; err != nil || !conn.HeadAck() {
			t.Errorf("the dispatcher read the pong: %v, HeadAck %v", err, conn.HeadAck())
		}
	})
}

// kitDecodes checks that the kit's strict decoder accepts frames a worker
// sends.
func kitDecodes(t *testing.T, b []byte) {
	t.Helper()
	for i, f := range frames(t, b) {
		if _, err := decodeW(f[4], f[5:]); err != nil {
			t.Errorf("frame %d: %v", i+1, err)
		}
	}
}

// The table of section 11 of PROTOCOL.md lists every check with its
// section, as -list does.
func TestSpecListsEveryCheck(t *testing.T) {
	doc, err := os.ReadFile("../../ipc/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(doc), "\n## 11. Conformance\n")
	if !ok {
		t.Fatal("no section 11")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	listed := map[string]string{} // check name -> section
	for _, line := range strings.Split(sec, "\n") {
		cells := strings.Split(line, " | ")
		if len(cells) != 3 || !strings.HasPrefix(cells[0], "| `") {
			continue
		}
		for _, name := range strings.Split(strings.TrimPrefix(cells[0], "| "), ", ") {
			listed[strings.Trim(name, "`")] = cells[1]
		}
	}
	for _, c := range checks {
		if sec, ok := listed[c.name]; !ok || sec != c.section {
			t.Errorf("check %s (section %s): the document lists it with section %q", c.name, c.section, sec)
		}
		delete(listed, c.name)
	}
	for name := range listed {
		t.Errorf("the document lists a check %s that does not exist", name)
	}
}
