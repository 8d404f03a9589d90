// Command modes measures the serverless modes of the dispatcher on loopback
// and prints a markdown report (see bench/README.md):
//
//   - ondemand cold start: the first request on an idle dispatcher (spawn,
//     handshake and request), repeated after each idle stop; median and p90;
//   - oneshot throughput (closed loop, -conns clients) with warm spares,
//     in the default sandbox and with --sandbox=off, against the same mode
//     without spares (a spawn on every request's path),
//     and against two fork-per-request baselines in the same run: a net/http
//     server running a small static Go program per request, stdin to stdout,
//     as of-watchdog's serializing mode does (bench/inproc -fork,
//     bench/forkchild; ../shared/ANCHORS.md, ofwd-serializing), and the
//     standard library's net/http/cgi running a static Go net/http handler
//     per request (bench/inproc -cgi, bench/cgichild): what a fresh process
//     per request costs for the same handler without the dispatcher;
//   - p50 latency at concurrency 1: oneshot with spares against pool mode;
//   - p50 latency at low concurrency, paced (one client, a request every
//     -pace, slower than spares are replenished, so each finds a warm
//     spare): oneshot with spares against pool mode;
//   - spawn + handshake (the dispatcher's own start_ms) on an idle machine
//     (the cold starts' spawns) against a bare fork+exec+wait of the same
//     binary; and, for information, start_ms while the oneshot load
//     saturates both cores.
//
// Usage: go run ./bench/modes -dispatcher bin/dispatcher -worker bin/hello
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	dispatcherBin = flag.String("dispatcher", "bin/dispatcher", "dispatcher binary")
	workerBin     = flag.String("worker", "bin/hello", "worker binary (hello)")
	colds         = flag.Int("cold", 15, "cold starts to measure")
	duration      = flag.Duration("duration", 5*time.Second, "length of each load run")
	conns         = flag.Int("conns", 4, "clients of the oneshot throughput runs")
	pace          = flag.Duration("pace", 20*time.Millisecond, "interval between the requests of the paced latency runs")
	paced         = flag.Int("paced", 200, "requests of each paced latency run")
	rounds        = flag.Int("rounds", 3, "oneshot throughput runs of each kind, interleaved (medians are reported)")
	extra         = flag.String("flags", "", "extra dispatcher flags, space separated")
)

type server struct {
	cmd  *exec.Cmd
	url  string
	logs *lines
	dir  string // removed by stop
}

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(s string) { l.mu.Lock(); l.l = append(l.l, s); l.mu.Unlock() }
func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.l)
}

func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func start(args ...string) *server {
	addr := freePort()
	args = append([]string{"--workers", *workerBin, "--listen", addr, "--access-log=false", "--log-level", "debug"}, args...)
	if *extra != "" {
		args = append(args, strings.Fields(*extra)...)
	}
	cmd := exec.Command(*dispatcherBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		fail(err)
	}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	s := &server{cmd: cmd, url: "http://" + addr, logs: &lines{}}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			s.logs.add(sc.Text())
			if strings.Contains(sc.Text(), "dispatcher listening") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		s.stop()
		fail(fmt.Errorf("dispatcher %v did not start", args))
	}
	return s
}

// startFork starts a fork-per-request baseline, both programs built static
// (CGO_ENABLED=0), as the anchors' ofwd-serializing entry runs a static Go
// binary: with kind "fork", bench/inproc -fork with bench/forkchild; with
// kind "cgi", bench/inproc -cgi with bench/cgichild.
func startFork(kind string) *server {
	dir, err := os.MkdirTemp("", "modes-"+kind+"-")
	if err != nil {
		fail(err)
	}
	child := map[string]string{"fork": "forkchild", "cgi": "cgichild"}[kind]
	build := exec.Command("go", "build", "-o", dir+"/", "./bench/inproc", "./bench/"+child)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fail(fmt.Errorf("go build: %v\n%s", err, out))
	}
	addr := freePort()
	cmd := exec.Command(filepath.Join(dir, "inproc"), "-listen", addr, "-"+kind, filepath.Join(dir, child))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	s := &server{cmd: cmd, url: "http://" + addr, logs: &lines{}, dir: dir}
	c := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(30 * time.Second); get(c, s.url+"/") != nil; {
		if time.Now().After(deadline) {
			s.stop()
			fail(fmt.Errorf("the %s baseline did not start", kind))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

func (s *server) stop() {
	if s.dir != "" {
		defer os.RemoveAll(s.dir)
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// children returns the pids whose parent is pid.
func children(pid int) []int {
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		fields := strings.Fields(rest)
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) && fields[0] != "Z" {
			n, _ := strconv.Atoi(strings.Split(f, "/")[2])
			out = append(out, n)
		}
	}
	return out
}

func get(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

// coldStarts returns the first-request latencies and the spawn times
// (start_ms) of the workers started for them.
func coldStarts() ([]time.Duration, []time.Duration) {
	s := start("--mode", "ondemand", "--max-workers", "1", "--idle-timeout", "100ms")
	defer s.stop()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	var out []time.Duration
	for range *colds {
		deadline := time.Now().Add(10 * time.Second)
		for len(children(s.cmd.Process.Pid)) > 0 {
			if time.Now().After(deadline) {
				fail(fmt.Errorf("the idle worker was not stopped"))
			}
			time.Sleep(5 * time.Millisecond)
		}
		t0 := time.Now()
		if err := get(client, s.url+"/"); err != nil {
			fail(err)
		}
		out = append(out, time.Since(t0))
	}
	return out, spawnTimes(s)
}

// pacedLatencies sends *paced requests, one at a time, one every *pace, and
// returns their latencies.
func pacedLatencies(url string) []time.Duration {
	client := &http.Client{Timeout: 30 * time.Second}
	var lat []time.Duration
	tick := time.NewTicker(*pace)
	defer tick.Stop()
	for range *paced {
		<-tick.C
		t := time.Now()
		if err := get(client, url); err != nil {
			fail(err)
		}
		lat = append(lat, time.Since(t))
	}
	return lat
}

// load runs n clients in a closed loop for *duration; it returns req/s and
// the latencies.
func load(url string, n int) (float64, []time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	var count atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	t0 := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			var mine []time.Duration
			for ctx.Err() == nil {
				t := time.Now()
				if err := get(client, url); err != nil {
					fail(err)
				}
				mine = append(mine, time.Since(t))
				count.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(count.Load()) / time.Since(t0).Seconds(), lat
}

var startMS = regexp.MustCompile(`start_ms=([0-9.]+)`)

func spawnTimes(s *server) []time.Duration {
	var out []time.Duration
	for _, l := range s.logs.all() {
		if m := startMS.FindStringSubmatch(l); m != nil {
			f, _ := strconv.ParseFloat(m[1], 64)
			out = append(out, time.Duration(f*float64(time.Millisecond)))
		}
	}
	return out
}

func bareForkExec(n int) []time.Duration {
	var out []time.Duration
	for range n {
		cmd := exec.Command(*workerBin)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		t0 := time.Now()
		_ = cmd.Run() // a worker outside the dispatcher explains itself and exits 1
		out = append(out, time.Since(t0))
	}
	return out
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "modes:", err)
	os.Exit(1)
}

func main() {
	flag.Parse()
	fmt.Printf("## Modes (%s, %d CPUs)\n\n", time.Now().UTC().Format("2006-01-02 15:04"), numCPU())

	cold, idleSpawns := coldStarts()
	fmt.Printf("ondemand cold start (first request on an idle dispatcher, %d runs): median %s, p90 %s\n\n", len(cold), ms(pct(cold, 0.5)), ms(pct(cold, 0.9)))

	// Throughput: with and without spares, interleaved, medians.
	var rpsSparesAll, rpsNoneAll, rpsForkAll, ratioForkAll, rpsCGIAll, ratioCGIAll, rpsOffAll, ratioOffAll []float64
	var spawns []time.Duration
	for r := range *rounds {
		for _, spares := range rotate([]string{"2", "0", "fork", "cgi", "off"}, r) {
			if spares == "off" { // with spares, without the sandbox
				s := start("--mode", "oneshot", "--spares", "2", "--max-workers", "4", "--sandbox=off")
				rps, _ := load(s.url+"/", *conns)
				rpsOffAll = append(rpsOffAll, rps)
				s.stop()
				continue
			}
			if spares == "fork" || spares == "cgi" {
				s := startFork(spares)
				rps, _ := load(s.url+"/", *conns)
				if spares == "fork" {
					rpsForkAll = append(rpsForkAll, rps)
				} else {
					rpsCGIAll = append(rpsCGIAll, rps)
				}
				s.stop()
				continue
			}
			s := start("--mode", "oneshot", "--spares", spares, "--max-workers", "4")
			rps, _ := load(s.url+"/", *conns)
			if spares == "0" {
				rpsNoneAll = append(rpsNoneAll, rps)
			} else {
				rpsSparesAll = append(rpsSparesAll, rps)
				spawns = append(spawns, spawnTimes(s)...)
			}
			s.stop()
		}
	}
	for i := range rpsForkAll {
		ratioForkAll = append(ratioForkAll, rpsSparesAll[i]/rpsForkAll[i])
		ratioCGIAll = append(ratioCGIAll, rpsSparesAll[i]/rpsCGIAll[i])
		ratioOffAll = append(ratioOffAll, rpsSparesAll[i]/rpsOffAll[i])
	}
	rpsSpares, rpsNone, rpsFork, rpsCGI := median(rpsSparesAll), median(rpsNoneAll), median(rpsForkAll), median(rpsCGIAll)

	withSpares := start("--mode", "oneshot", "--spares", "2", "--max-workers", "4")
	_, latSpares := load(withSpares.url+"/", 1)
	pacedSpares := pacedLatencies(withSpares.url + "/")
	withSpares.stop()

	pool := start("--mode", "pool")
	_, latPool := load(pool.url+"/", 1)
	pacedPool := pacedLatencies(pool.url + "/")
	pool.stop()

	bare := bareForkExec(50)

	fmt.Println("| measure | value |")
	fmt.Println("|---|--:|")
	fmt.Printf("| oneshot, %d clients, req/s with spares (median of %d: %s) | %.0f |\n", *conns, len(rpsSparesAll), floats(rpsSparesAll), rpsSpares)
	fmt.Printf("| oneshot without spares (spawn on the request's path), req/s (median of %d: %s) | %.0f |\n", len(rpsNoneAll), floats(rpsNoneAll), rpsNone)
	fmt.Printf("| ratio spares / no spares | %.2f |\n", rpsSpares/rpsNone)
	fmt.Printf("| fork-per-request baseline (inproc -fork forkchild, static), %d clients, req/s (median of %d: %s) | %.0f |\n", *conns, len(rpsForkAll), floats(rpsForkAll), rpsFork)
	fmt.Printf("| ratio oneshot with spares / fork-per-request baseline (per round: %s) | %.2f |\n", floatsPrec(ratioForkAll, 2), median(ratioForkAll))
	fmt.Printf("| CGI baseline (inproc -cgi cgichild: net/http/cgi running a net/http handler per request, static), %d clients, req/s (median of %d: %s) | %.0f |\n", *conns, len(rpsCGIAll), floats(rpsCGIAll), rpsCGI)
	fmt.Printf("| ratio oneshot with spares / CGI baseline (per round: %s) | %.2f |\n", floatsPrec(ratioCGIAll, 2), median(ratioCGIAll))
	fmt.Printf("| oneshot with spares, --sandbox=off, req/s (median of %d: %s) | %.0f |\n", len(rpsOffAll), floats(rpsOffAll), median(rpsOffAll))
	fmt.Printf("| ratio oneshot with spares, default (sandbox where it can be set up) / --sandbox=off (per round: %s) | %.2f |\n", floatsPrec(ratioOffAll, 2), median(ratioOffAll))
	fmt.Printf("| ratio oneshot with spares, --sandbox=off / CGI baseline | %.2f |\n", median(rpsOffAll)/rpsCGI)
	fmt.Printf("| ratio spares / node fork-per-request (22 req/s, ../shared/ANCHORS.md) | %.1f |\n", rpsSpares/22)
	fmt.Printf("| p50 at concurrency 1, closed loop: oneshot with spares | %s |\n", ms(pct(latSpares, 0.5)))
	fmt.Printf("| p50 at concurrency 1, closed loop: pool | %s |\n", ms(pct(latPool, 0.5)))
	fmt.Printf("| ratio oneshot / pool p50, closed loop (spares run out: requests wait for spawns) | %.1f |\n", float64(pct(latSpares, 0.5))/float64(pct(latPool, 0.5)))
	fmt.Printf("| p50 paced, a request every %s: oneshot with spares | %s |\n", *pace, ms(pct(pacedSpares, 0.5)))
	fmt.Printf("| p50 paced, a request every %s: pool | %s |\n", *pace, ms(pct(pacedPool, 0.5)))
	fmt.Printf("| ratio oneshot / pool p50, paced (warm spares) | %.1f |\n", float64(pct(pacedSpares, 0.5))/float64(pct(pacedPool, 0.5)))
	fmt.Printf("| spawn + handshake on an idle machine (start_ms of the cold starts, median of %d) | %s |\n", len(idleSpawns), ms(pct(idleSpawns, 0.5)))
	fmt.Printf("| bare fork+exec+wait of the worker binary (median of %d) | %s |\n", len(bare), ms(pct(bare, 0.5)))
	fmt.Printf("| ratio spawn / bare | %.1f |\n", float64(pct(idleSpawns, 0.5))/float64(pct(bare, 0.5)))
	fmt.Printf("| spawn + handshake under the oneshot load, both cores busy (median of %d) | %s |\n", len(spawns), ms(pct(spawns, 0.5)))
}

// rotate returns l rotated by r: interleaved runs alternate their order.
func rotate(l []string, r int) []string {
	r %= len(l)
	return append(slices.Clone(l[r:]), l[:r]...)
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func floats(v []float64) string {
	var s []string
	for _, f := range v {
		s = append(s, fmt.Sprintf("%.0f", f))
	}
	return strings.Join(s, ", ")
}

func floatsPrec(v []float64, prec int) string {
	var s []string
	for _, f := range v {
		s = append(s, strconv.FormatFloat(f, 'f', prec, 64))
	}
	return strings.Join(s, ", ")
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}
