package dispatcher

// Streaming with bounded memory, and streaming throughput against an
// in-process net/http handler.
//
// The full-size memory check (a 1 GiB upload echoed back):
//
//	go test ./dispatcher -run TestEchoMemoryBounded -echo-mib 1024 -v
//
// Throughput (64 MiB per operation, reported in MB/s by the testing package):
//
//	go test ./dispatcher -run '^$' -bench BenchmarkStream -benchtime 10x

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/workers"
)

var echoMiB = flag.Int64("echo-mib", 0, "MiB echoed by TestEchoMemoryBounded (default 128, 32 with -short)")

// maxGrowth is the most the process's resident memory may grow while a large
// body streams through the dispatcher.
const maxGrowth = 64 << 20

// pattern is an endless deterministic byte stream: byte i is i%251.
type pattern struct {
	off, n int64 // position, bytes left
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	for i := range b {
		b[i] = byte((p.off + int64(i)) % 251)
	}
	p.off += int64(len(b))
	p.n -= int64(len(b))
	return len(b), nil
}

// checkPattern reads r to the end and checks it is the pattern; it returns
// the number of bytes read.
func checkPattern(r io.Reader) (int64, error) {
	buf := make([]byte, 64<<10)
	want := make([]byte, 64<<10)
	p := &pattern{n: -1}
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.n = int64(n)
			p.Read(want[:n])
			if !bytes.Equal(buf[:n], want[:n]) {
				return total, fmt.Errorf("echo differs from what was sent in the %d bytes after offset %d", n, total)
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// procStatus returns a field of /proc/self/status in bytes (VmRSS, VmHWM).
func procStatus(tb testing.TB, field string) int64 {
	tb.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatalf("%s: %v", field, err)
			}
			return kb << 10
		}
	}
	tb.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// TestEchoMemoryBounded streams a large upload through the dispatcher, in
// this process, to the echo worker, which writes it back as it reads it, and
// checks every byte of the echo and that the process's peak resident memory
// (the dispatcher, the HTTP server and the client; the worker is another
// process) grew by less than maxGrowth. The peak is reset through
// /proc/self/clear_refs before the transfer.
func TestEchoMemoryBounded(t *testing.T) {
	mib := *echoMiB
	if mib == 0 {
		mib = 128
		if testing.Short() {
			mib = 32
		}
	}
	size := mib << 20
	// The request timeout is not what is tested: on a loaded machine the
	// race-enabled transfer can take longer than the default.
	f := startFrontWith(t, "echo", frontOpts{server: Config{MaxBody: -1}, workers: workers.Config{Timeout: 10 * time.Minute}})
	if r, _ := mustGet(t, f.url+"/json"); r.StatusCode != 200 { // warm up: connection, buffers
		t.Fatalf("warm-up: %d", r.StatusCode)
	}

	runtime.GC()
	debug.FreeOSMemory()
	base := procStatus(t, "VmRSS")
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("resetting the peak RSS: %v", err)
	}
	start := time.Now()
	req, _ := http.NewRequest("POST", f.url+"/", &pattern{n: size})
	req.ContentLength = size
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, err := checkPattern(resp.Body)
	resp.Body.Close()
	elapsed := time.Since(start)
	peak := procStatus(t, "VmHWM")
	if err != nil || n != size {
		t.Fatalf("echoed %d of %d bytes: %v", n, size, err)
	}
	growth := peak - base
	t.Logf("%d MiB echoed in %s (%.0f MiB/s each way); RSS %d MiB before, peak %d MiB: grew %.1f MiB",
		mib, elapsed.Round(time.Millisecond), float64(mib)/elapsed.Seconds(), base>>20, peak>>20, float64(growth)/(1<<20))
	if growth >= maxGrowth {
		t.Errorf("resident memory grew by %.1f MiB, want less than %d MiB", float64(growth)/(1<<20), maxGrowth>>20)
	}
}

// inprocStream is the in-process baseline for BenchmarkStream: the same
// handlers as the fidelity worker's /count and /big, and the echo worker's
// raw echo.
func inprocStream() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "read %d bytes\n", n)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Type", "application/octet-stream")
		buf := make([]byte, 32<<10)
		for i := range buf {
			buf[i] = 'a' + byte(i%26)
		}
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Content-Type", "application/octet-stream")
		io.Copy(w, r.Body)
	})
	return mux
}

// BenchmarkStream measures throughput of a 64 MiB upload, download and echo
// through the dispatcher (HTTP/1.1 on loopback, one worker) and through an
// in-process net/http handler doing the same, in the same run. MB/s is per
// direction.
func BenchmarkStream(b *testing.B) {
	const size = 64 << 20
	disp := map[string]*front{
		"fidelity": startFrontWith(b, "fidelity", frontOpts{server: Config{MaxBody: -1}}),
		"echo":     startFrontWith(b, "echo", frontOpts{server: Config{MaxBody: -1}}),
	}
	inproc := httptest.NewServer(inprocStream())
	b.Cleanup(inproc.Close)
	type target struct {
		url    string
		client *http.Client
	}
	servers := []struct {
		name                   string
		upload, download, echo target
	}{
		{"inproc", target{inproc.URL + "/count", inproc.Client()}, target{inproc.URL + "/big", inproc.Client()}, target{inproc.URL + "/echo", inproc.Client()}},
		{"dispatcher", target{disp["fidelity"].url + "/count", disp["fidelity"].client}, target{disp["fidelity"].url + "/big", disp["fidelity"].client},
			target{disp["echo"].url + "/", disp["echo"].client}},
	}
	do := func(b *testing.B, c *http.Client, method, url string, body io.Reader, want int64) {
		req, _ := http.NewRequestWithContext(context.Background(), method, url, body)
		if body != nil {
			req.ContentLength = size
		}
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || (want >= 0 && n != want) {
			b.Fatalf("%s %s: %d, %d bytes, %v", method, url, resp.StatusCode, n, err)
		}
	}
	for _, s := range servers {
		b.Run("upload/"+s.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				do(b, s.upload.client, "POST", s.upload.url, &pattern{n: size}, -1)
			}
		})
		b.Run("download/"+s.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				do(b, s.download.client, "GET", s.download.url+"?n="+strconv.Itoa(size), nil, size)
			}
		})
		b.Run("echo/"+s.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				do(b, s.echo.client, "POST", s.echo.url, &pattern{n: size}, size)
			}
		})
	}
}
