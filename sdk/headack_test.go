package sdk

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// readFrame reads one frame a worker wrote and decodes its payload loosely.
func readFrame(tb testing.TB, c net.Conn) (ipc.Kind, []any) {
	tb.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		tb.Fatal(err)
	}
	p := make([]byte, binary.BigEndian.Uint32(hdr[:4])-1)
	if _, err := io.ReadFull(c, p); err != nil {
		tb.Fatal(err)
	}
	var fields []any
	if err := msgpack.Unmarshal(p, &fields); err != nil {
		tb.Fatal(err)
	}
	return ipc.Kind(hdr[4]), fields
}

// serveOneSlot serves one slot of w, listing features in its pongs, and
// returns the dispatcher's end of it; the slot stops with the test.
func serveOneSlot(t *testing.T, w *worker, features []string) net.Conn {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	host, wc := fdConn(t, fds[0]), fdConn(t, fds[1])
	sc := ipc.NewServerConn(wc, 0)
	sc.SetFeatures(features)
	s := &slot{w: w, sc: sc}
	w.slots.Add(1)
	go s.serve()
	t.Cleanup(func() {
		host.Close()
		w.slots.Wait()
		w.inflight.Wait()
	})
	return host
}

// With FeatureHeadAck announced, the worker lists it in its pongs and
// acknowledges a streamed request with a window frame [id, 0] before
// anything its handler writes; without it, neither.
func TestHeadAck(t *testing.T) {
	for _, announced := range []bool{true, false} {
		t.Run(fmt.Sprintf("announced %v", announced), func(t *testing.T) {
			w := &worker{depth: 1, headAck: announced, h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(201)
				w.(http.Flusher).Flush()
				n, _ := io.Copy(io.Discard, r.Body)
				fmt.Fprint(w, n)
			})}
			var features []string
			wantPong := "[1]"
			if announced {
				features = []string{ipc.FeatureHeadAck}
				wantPong = "[1 [head-ack]]"
			}
			host := serveOneSlot(t, w, features)

			in := append(fuzzFrame(ipc.KindPing, 1), reqFrame(2, "POST", "/", []byte("0123456789"), false, nil)...)
			if _, err := host.Write(in); err != nil {
				t.Fatal(err)
			}
			if k, f := readFrame(t, host); k != ipc.KindPong || fmt.Sprint(f) != wantPong {
				t.Fatalf("got %s %v, want a pong %s", k, f, wantPong)
			}
			k, f := readFrame(t, host)
			if announced {
				if k != ipc.KindWindow || fmt.Sprint(f) != "[2 0]" {
					t.Fatalf("got %s %v, want the acknowledgement: window [2 0]", k, f)
				}
				k, f = readFrame(t, host)
			}
			if k != ipc.KindResponse || fmt.Sprint(f[:2]) != "[2 201]" {
				t.Fatalf("got %s %v, want the response head", k, f)
			}
			if _, err := host.Write(fuzzFrame(ipc.KindEnd, 2, nil)); err != nil {
				t.Fatal(err)
			}
			var body string
			for k != ipc.KindEnd {
				if k, f = readFrame(t, host); k == ipc.KindBody {
					body += string(f[1].([]byte))
				}
			}
			if body != "10" {
				t.Errorf("the handler read %q bytes, want 10", body)
			}
		})
	}
}

// With FeatureWideWindow too, the acknowledgement grants the wide window's
// extra credit, the worker lists both features, and it takes a whole
// WideWindow of body its handler has not read yet; credit then comes a
// quarter of the wide window at a time.
func TestWideWindow(t *testing.T) {
	read := make(chan struct{})
	w := &worker{depth: 1, headAck: true, wide: true, h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-read // the whole window arrives before the handler reads a byte
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	})}
	host := serveOneSlot(t, w, []string{ipc.FeatureHeadAck, ipc.FeatureWideWindow})

	first := make([]byte, 10)
	if _, err := host.Write(append(fuzzFrame(ipc.KindPing, 1), reqFrame(2, "POST", "/", first, false, nil)...)); err != nil {
		t.Fatal(err)
	}
	if k, f := readFrame(t, host); k != ipc.KindPong || fmt.Sprint(f) != "[1 [head-ack wide-window]]" {
		t.Fatalf("got %s %v, want a pong listing head-ack and wide-window", k, f)
	}
	if k, f := readFrame(t, host); k != ipc.KindWindow || fmt.Sprint(f) != fmt.Sprintf("[2 %d]", ipc.WideWindow-ipc.Window) {
		t.Fatalf("got %s %v, want the acknowledgement granting %d", k, f, ipc.WideWindow-ipc.Window)
	}
	// A whole wide window, unacknowledged, then a ping: the slot must
	// still answer (a worker over its window closes the slot instead).
	chunk := make([]byte, ipc.ChunkSize)
	for sent := len(first); sent < ipc.WideWindow; sent += len(chunk) {
		chunk = chunk[:min(ipc.ChunkSize, ipc.WideWindow-sent)]
		if _, err := host.Write(fuzzFrame(ipc.KindBody, 2, chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := host.Write(fuzzFrame(ipc.KindPing, 3)); err != nil {
		t.Fatal(err)
	}
	if k, f := readFrame(t, host); k != ipc.KindPong || fmt.Sprint(f[:1]) != "[3]" {
		t.Fatalf("got %s %v after a full wide window, want the pong to ping 3", k, f)
	}
	close(read)
	if _, err := host.Write(fuzzFrame(ipc.KindEnd, 2, nil)); err != nil {
		t.Fatal(err)
	}
	var credit int
	var body string
	for {
		k, f := readFrame(t, host)
		switch k {
		case ipc.KindWindow:
			var n int
			fmt.Sscan(fmt.Sprint(f[1]), &n) // msgpack picks the integer type by size
			if n < ipc.WideWindow/4 {
				t.Errorf("credit of %d bytes, want steps of at least %d", n, ipc.WideWindow/4)
			}
			credit += n
			continue
		case ipc.KindResponse:
			body += string(f[3].([]byte))
			if f[4] == true {
				break
			}
			continue
		case ipc.KindBody:
			body += string(f[1].([]byte))
			continue
		}
		break
	}
	if want := fmt.Sprint(ipc.WideWindow); body != want {
		t.Errorf("the handler read %s bytes, want %s", body, want)
	}
	if credit > ipc.WideWindow {
		t.Errorf("credit %d for %d bytes", credit, ipc.WideWindow)
	}
}

// A request marked continue (ipc.FeatureContinue) comes with no credit: the
// acknowledgement grants none, even with the wide window, and the whole
// window is granted when the handler first reads the body; a handler that
// answers without reading grants nothing.
func TestContinue(t *testing.T) {
	for _, reads := range []bool{true, false} {
		t.Run(fmt.Sprintf("handler reads %v", reads), func(t *testing.T) {
			start := make(chan struct{})
			w := &worker{depth: 1, headAck: true, wide: true, h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !reads {
					w.WriteHeader(http.StatusUnauthorized)
					return
				}
				<-start
				n, _ := io.Copy(io.Discard, r.Body)
				fmt.Fprint(w, n)
			})}
			host := serveOneSlot(t, w, []string{ipc.FeatureHeadAck, ipc.FeatureWideWindow, ipc.FeatureContinue})
			req := fuzzFrame(ipc.KindRequest, 2, "PUT", "/", "HTTP/1.1", map[string][]string{"Expect": {"100-continue"}},
				"example.com", "192.0.2.1:1234", 5, "rid", []byte{}, false, true)
			if _, err := host.Write(req); err != nil {
				t.Fatal(err)
			}
			if k, f := readFrame(t, host); k != ipc.KindWindow || fmt.Sprint(f) != "[2 0]" {
				t.Fatalf("got %s %v, want the acknowledgement granting nothing: window [2 0]", k, f)
			}
			if !reads {
				k, f := readFrame(t, host)
				if k != ipc.KindResponse || fmt.Sprint(f[:2]) != "[2 401]" || f[4] != true {
					t.Fatalf("got %s %v, want the whole 401 and no credit", k, f)
				}
				return
			}
			close(start)
			k, f := readFrame(t, host)
			var n int
			fmt.Sscan(fmt.Sprint(f[1]), &n)
			if k != ipc.KindWindow || n != ipc.WideWindow {
				t.Fatalf("got %s %v, want the whole window granted: [2 %d]", k, f, ipc.WideWindow)
			}
			if _, err := host.Write(append(fuzzFrame(ipc.KindBody, 2, []byte("hello")), fuzzFrame(ipc.KindEnd, 2, nil)...)); err != nil {
				t.Fatal(err)
			}
			for {
				k, f := readFrame(t, host)
				if k == ipc.KindResponse {
					if body := string(f[3].([]byte)); f[4] == true && body != "5" {
						t.Fatalf("the handler read %q bytes, want 5", body)
					}
					return
				}
				if k != ipc.KindWindow {
					t.Fatalf("got %s %v, want the response", k, f)
				}
			}
		})
	}
}

// With FeatureWideChunk, the worker lists it, takes a request body chunk
// of ipc.WideChunkSize bytes, and after a first chunk of at most
// ipc.ChunkSize sends its response body in chunks of up to
// ipc.WideChunkSize; without it, in chunks of at most ipc.ChunkSize.
func TestWideChunkFrames(t *testing.T) {
	for _, wide := range []bool{true, false} {
		t.Run(fmt.Sprintf("announced %v", wide), func(t *testing.T) {
			const size = 1 << 20
			w := &worker{depth: 1, wideChunk: wide, h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n, err := io.Copy(io.Discard, r.Body)
				fmt.Fprintf(w, "%08d %v|", n, err)
				chunk := make([]byte, 32<<10)
				for sent := 0; sent < size; sent += len(chunk) {
					w.Write(chunk)
				}
			})}
			var features []string
			wantPong, largest := "[1]", ipc.ChunkSize
			if wide {
				features = []string{ipc.FeatureWideChunk}
				wantPong, largest = "[1 [wide-chunk]]", ipc.WideChunkSize
			}
			host := serveOneSlot(t, w, features)

			first := make([]byte, 10)
			in := append(fuzzFrame(ipc.KindPing, 1), reqFrame(2, "POST", "/", first, false, nil)...)
			in = append(in, fuzzFrame(ipc.KindBody, 2, make([]byte, ipc.Window-len(first)))...)
			in = append(in, fuzzFrame(ipc.KindEnd, 2, nil)...)
			if _, err := host.Write(in); err != nil {
				t.Fatal(err)
			}
			if k, f := readFrame(t, host); k != ipc.KindPong || fmt.Sprint(f) != wantPong {
				t.Fatalf("got %s %v, want a pong %s", k, f, wantPong)
			}
			var body []byte
			var sizes []int
			for k := ipc.Kind(0); k != ipc.KindEnd; {
				var f []any
				switch k, f = readFrame(t, host); k {
				case ipc.KindResponse:
					b, _ := f[3].([]byte)
					if len(b) > ipc.ChunkSize {
						t.Errorf("response head with %d bytes of body, more than %d", len(b), ipc.ChunkSize)
					}
					body = append(body, b...)
				case ipc.KindBody:
					b := f[1].([]byte)
					sizes = append(sizes, len(b))
					body = append(body, b...)
				case ipc.KindWindow, ipc.KindEnd:
				default:
					t.Fatalf("got %s %v", k, f)
				}
			}
			head := fmt.Sprintf("%08d <nil>|", ipc.Window)
			if !strings.HasPrefix(string(body), head) || len(body) != len(head)+size {
				t.Fatalf("body of %d bytes starting %.20q, want %q and %d more bytes", len(body), body, head, size)
			}
			if slices.Max(sizes) != largest {
				t.Errorf("body chunks of %v bytes, want at most and at least once %d", sizes, largest)
			}
		})
	}
}
