// Command hol measures head-of-line blocking: what slow requests cost the
// fast ones that share their workers. A dispatcher serves bench/holworker;
// of -conns keep-alive connections, -slow-conns send one-second requests
// one after the other and the rest send hello requests. It reports the
// hello requests' latency with the default pipelining and with
// --pipeline 1, in interleaved rounds, and the ratio of their p99s:
//
//	go run ./bench/hol
//	go run ./bench/hol -rounds 5 -duration 10s
//
// Everything else is at the dispatcher's defaults. Loopback only; it stops
// by itself.
package main

import (
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
	"sync"
	"syscall"
	"time"
)

type config struct {
	dispatcher  string // a binary to measure instead of this tree's
	rounds      int
	duration    time.Duration
	conns       int
	slowConns   int
	slow        time.Duration
	poolSize    int
	concurrency int
	pipelines   []int
}

func main() {
	var c config
	var pipelines string
	flag.StringVar(&c.dispatcher, "dispatcher", "", "a dispatcher binary to measure (an older build, say) instead of this tree's")
	flag.IntVar(&c.rounds, "rounds", 3, "interleaved rounds")
	flag.DurationVar(&c.duration, "duration", 8*time.Second, "load per run")
	flag.IntVar(&c.conns, "conns", 32, "connections in all")
	flag.IntVar(&c.slowConns, "slow-conns", 3, "connections sending slow requests (10% of 32, rounded)")
	flag.DurationVar(&c.slow, "slow", time.Second, "how long a slow request takes")
	flag.IntVar(&c.poolSize, "pool-size", 2, "--pool-size")
	flag.IntVar(&c.concurrency, "concurrency", 4, "--concurrency")
	flag.StringVar(&pipelines, "pipelines", "16,1", "--pipeline settings to compare (16 is the default)")
	flag.Parse()
	for _, f := range strings.Split(pipelines, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "hol: -pipelines %q: want numbers of at least 1\n", pipelines)
			os.Exit(2)
		}
		c.pipelines = append(c.pipelines, n)
	}
	if c.slowConns >= c.conns {
		fmt.Fprintln(os.Stderr, "hol: -slow-conns must be below -conns")
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "hol:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	dir, err := os.MkdirTemp("", "hol-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/dispatcher", "./bench/holworker")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	if c.dispatcher != "" {
		if err := os.Symlink(c.dispatcher, filepath.Join(dir, "other-dispatcher")); err != nil {
			return err
		}
	}
	results := map[int][]*runResult{}
	for r := range c.rounds {
		order := slices.Clone(c.pipelines)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, p := range order {
			fmt.Fprintf(os.Stderr, "round %d, --pipeline %d\n", r+1, p)
			res, err := measure(c, dir, p)
			if err != nil {
				return fmt.Errorf("--pipeline %d: %w", p, err)
			}
			results[p] = append(results[p], res)
			for _, e := range res.examples {
				fmt.Fprintf(os.Stderr, "  error: %s\n", e)
			}
		}
	}
	fmt.Printf("Head-of-line blocking: %d connections, %d of them sending %s requests, the rest hello; --pool-size %d --concurrency %d, other flags at their defaults; %d rounds of %s (medians of the rounds).\n\n",
		c.conns, c.slowConns, c.slow, c.poolSize, c.concurrency, c.rounds, c.duration)
	fmt.Println("| --pipeline | hello req/s | hello p50 ms | hello p99 ms | hello p99.9 ms | hello max ms | slow done | errors | p99 per round (ms) |")
	fmt.Println("|--:|--:|--:|--:|--:|--:|--:|--:|---|")
	p99 := map[int]float64{}
	for _, p := range c.pipelines {
		rs := results[p]
		med := func(f func(*runResult) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		var per []string
		for _, r := range rs {
			per = append(per, fmt.Sprintf("%.1f", ms(r.pct(0.99))))
		}
		p99[p] = med(func(r *runResult) float64 { return ms(r.pct(0.99)) })
		fmt.Printf("| %d | %.0f | %.2f | %.1f | %.1f | %.1f | %.0f | %.0f | %s |\n", p,
			med(func(r *runResult) float64 { return float64(len(r.hello)) / c.duration.Seconds() }),
			med(func(r *runResult) float64 { return ms(r.pct(0.5)) }), p99[p],
			med(func(r *runResult) float64 { return ms(r.pct(0.999)) }),
			med(func(r *runResult) float64 { return ms(r.pct(1)) }),
			med(func(r *runResult) float64 { return float64(r.slowDone) }),
			med(func(r *runResult) float64 { return float64(r.errors) }), strings.Join(per, ", "))
	}
	if len(c.pipelines) == 2 && p99[c.pipelines[1]] > 0 {
		fmt.Printf("\nhello p99, --pipeline %d over --pipeline %d: %.2f\n", c.pipelines[0], c.pipelines[1], p99[c.pipelines[0]]/p99[c.pipelines[1]])
	}
	return nil
}

type runResult struct {
	hello    []time.Duration // sorted
	slowDone int
	errors   int
	examples []string // of errors
}

func (r *runResult) pct(q float64) time.Duration {
	if len(r.hello) == 0 {
		return 0
	}
	return r.hello[min(int(q*float64(len(r.hello))), len(r.hello)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// measure starts a dispatcher with --pipeline p, loads it for c.duration
// and stops it.
func measure(c config, dir string, p int) (*runResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	bin := filepath.Join(dir, "dispatcher")
	if c.dispatcher != "" {
		bin = filepath.Join(dir, "other-dispatcher")
	}
	cmd := exec.Command(bin, "--workers", filepath.Join(dir, "holworker"),
		"--listen", addr, "--admin-listen", "", "--pool-size", strconv.Itoa(c.poolSize),
		"--concurrency", strconv.Itoa(c.concurrency), "--pipeline", strconv.Itoa(p))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}()
	base := "http://" + addr
	if err := waitReady(base+"/", 20*time.Second); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.duration)
	defer cancel()
	res := &runResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range c.conns {
		slow := i < c.slowConns
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			url := base + "/"
			if slow {
				url = base + "/slow?d=" + c.slow.String()
			}
			for ctx.Err() == nil {
				t0 := time.Now()
				err := get(ctx, client, url)
				d := time.Since(t0)
				if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
					return // cut by the end of the run
				}
				mu.Lock()
				switch {
				case err != nil:
					res.errors++
					if len(res.examples) < 3 {
						res.examples = append(res.examples, err.Error())
					}
				case slow:
					res.slowDone++
				default:
					res.hello = append(res.hello, d)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(res.hello)
	return res, nil
}

func get(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d from %s", resp.StatusCode, url)
	}
	return nil
}

func waitReady(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s", url, timeout)
}
