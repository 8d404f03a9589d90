// Command stream measures large bodies through the dispatcher against the
// same handlers in-process (bench/inproc), interleaved in one run, and
// prints a markdown report: MiB/s of a download (GET /big, the worker
// writes N bytes in 32 KiB writes) and of an upload (POST /count, the
// worker reads and discards the body), medians and the ratio, and the
// dispatcher's peak resident memory (VmHWM), which stays bounded because
// bodies stream through in 64 KiB chunks with flow control.
//
// Usage: go run ./bench/stream [-size 64M] [-rounds 7]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/internal/procstatus"
)

var (
	size   = flag.String("size", "64M", "body size: bytes, or with K/M/G")
	rounds = flag.Int("rounds", 7, "measurements of each (server, direction)")
	keep   = flag.String("bin", "", "directory of prebuilt dispatcher, fidelity and inproc binaries (default: build them)")
)

func main() {
	flag.Parse()
	n, err := parseSize(*size)
	if err != nil || *rounds < 1 {
		fmt.Fprintf(os.Stderr, "stream: bad -size %q or -rounds %d\n", *size, *rounds)
		os.Exit(2)
	}
	if err := run(n); err != nil {
		fmt.Fprintln(os.Stderr, "stream:", err)
		os.Exit(1)
	}
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 {
		return 0, errors.New("bad size")
	}
	return v * mult, nil
}

type server struct {
	name string
	cmd  *exec.Cmd
	url  string
}

func run(n int64) error {
	dir := *keep
	if dir == "" {
		tmp, err := os.MkdirTemp("", "stream-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
		fmt.Fprintln(os.Stderr, "building...")
		build := exec.Command("go", "build", "-o", dir+"/", "./cmd/dispatcher", "./testdata/workers/fidelity", "./bench/inproc")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build: %w", err)
		}
	}
	inproc, err := start("in-process", filepath.Join(dir, "inproc"), func(addr string) []string { return []string{"--listen", addr} })
	if err != nil {
		return err
	}
	defer inproc.stop()
	disp, err := start("dispatcher", filepath.Join(dir, "dispatcher"), func(addr string) []string {
		return []string{"--workers", filepath.Join(dir, "fidelity"), "--listen", addr, "--pool-size", "1",
			"--admin-listen", "", "--access-log=false", "--max-body", "0", "--timeout", "60s"}
	})
	if err != nil {
		return err
	}
	defer disp.stop()

	// Large client buffers keep the client's own cost per byte low, so
	// that the servers' costs decide the figures (with net/http's 4 KiB
	// defaults and io.Discard's 8 KiB reads, the client spent about as
	// much CPU as the server it measured).
	client := &http.Client{Transport: &http.Transport{DisableCompression: true,
		ReadBufferSize: 256 << 10, WriteBufferSize: 256 << 10}}
	type key struct{ server, dir string }
	results := map[key][]float64{}
	servers := []*server{inproc, disp}
	for r := range *rounds {
		order := servers
		if r%2 == 1 {
			order = []*server{disp, inproc}
		}
		for _, s := range order {
			for _, d := range []string{"download", "upload"} {
				mibs, err := measure(client, s, d, n)
				if err != nil {
					return fmt.Errorf("%s %s: %w", s.name, d, err)
				}
				results[key{s.name, d}] = append(results[key{s.name, d}], mibs)
				fmt.Fprintf(os.Stderr, "round %d: %s %s %.0f MiB/s\n", r+1, s.name, d, mibs)
			}
		}
	}
	hwm, _ := procstatus.Bytes(disp.cmd.Process.Pid, "VmHWM")
	fmt.Printf("## Streaming %s bodies (%d rounds, interleaved; medians)\n\n", *size, *rounds)
	fmt.Println("| direction | in-process MiB/s | dispatcher MiB/s | ratio of the medians | median of the rounds' ratios (min-max) |")
	fmt.Println("|---|---:|---:|---:|---|")
	for _, d := range []string{"download", "upload"} {
		ins, dis := results[key{"in-process", d}], results[key{"dispatcher", d}]
		var ratios []float64
		for i := range ins {
			ratios = append(ratios, dis[i]/ins[i])
		}
		in, di := median(ins), median(dis)
		fmt.Printf("| %s | %.0f | %.0f | %.2f | %.2f (%.2f-%.2f) |\n", d, in, di, di/in,
			median(ratios), slices.Min(ratios), slices.Max(ratios))
	}
	fmt.Printf("\nDispatcher peak RSS (VmHWM) after all rounds: %.1f MiB; the body was %s.\n", float64(hwm)/(1<<20), *size)
	return nil
}

func measure(c *http.Client, s *server, dir string, n int64) (float64, error) {
	var req *http.Request
	if dir == "download" {
		req, _ = http.NewRequest("GET", fmt.Sprintf("%s/big?n=%d&cl=1", s.url, n), nil)
	} else {
		req, _ = http.NewRequest("POST", s.url+"/count", io.LimitReader(pattern{}, n))
		req.ContentLength = n
	}
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	got, err := io.CopyBuffer(discard{}, resp.Body, make([]byte, 256<<10))
	if err != nil {
		return 0, err
	}
	d := time.Since(t0)
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	if dir == "download" && got != n {
		return 0, fmt.Errorf("got %d bytes, want %d", got, n)
	}
	return float64(n) / (1 << 20) / d.Seconds(), nil
}

// discard is io.Discard without its ReaderFrom, which would read in 8 KiB
// pieces whatever buffer io.CopyBuffer is given.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// pattern is an endless reader of a-z (26 × 1260 bytes, copied: the client
// must not be the bottleneck).
type pattern struct{}

var block = func() []byte {
	b := make([]byte, 26*1260)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}()

func (pattern) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], block)
	}
	return n, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// start runs a server on a free loopback port and waits until it answers.
func start(name, bin string, args func(addr string) []string) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, args(addr)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { // keep the pipe drained
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
		}
	}()
	s := &server{name: name, cmd: cmd, url: "http://" + addr}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if resp, err := http.Get(s.url + "/big?n=1"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s, nil
			}
		}
		select {
		case <-ctx.Done():
			s.stop()
			return nil, fmt.Errorf("%s did not answer on %s", name, addr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}
