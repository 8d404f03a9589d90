// Command wrkparse is the parsing and reporting helper of bench/run.sh.
//
//	wrkparse parse FILE   reads the output of `wrk --latency` and prints one
//	                      tab-separated line: req/s, p50 ms, p99 ms, non-2xx
//	                      responses, socket errors (connect+read+write+timeout)
//	wrkparse table FILE   reads the tab-separated results run.sh collected
//	                      (with a header line) and prints markdown tables: the
//	                      medians per (server, workload), the ratios of the
//	                      pairs of servers compared (those that ran: each
//	                      against in-process and the floor, the access log
//	                      on against off, new against old), and every round
//
// Latencies are normalised to milliseconds whatever unit wrk chose (us, ms,
// s, m, h).
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: wrkparse parse|table FILE")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "wrkparse:", err)
		os.Exit(1)
	}
	defer f.Close()
	switch os.Args[1] {
	case "parse":
		var r Result
		r, err = Parse(f)
		if err == nil {
			fmt.Printf("%.2f\t%.3f\t%.3f\t%d\t%d\n", r.RPS, r.P50, r.P99, r.Non2xx, r.SocketErrors)
		}
	case "table":
		var rows []Row
		rows, err = ReadRows(f)
		if err == nil {
			err = Table(os.Stdout, rows)
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wrkparse:", err)
		os.Exit(1)
	}
}

// Result is what one wrk run measured.
type Result struct {
	RPS          float64
	P50, P99     float64 // milliseconds
	Non2xx       int64
	SocketErrors int64
}

var (
	reRPS     = regexp.MustCompile(`^\s*Requests/sec:\s*([0-9.]+)\s*$`)
	reDist    = regexp.MustCompile(`^\s*Latency Distribution`)
	rePct     = regexp.MustCompile(`^\s*(50|75|90|99)(?:\.0+)?%\s+([0-9.]+)\s*(us|ms|s|m|h)\s*$`)
	reNon2xx  = regexp.MustCompile(`^\s*Non-2xx or 3xx responses:\s*([0-9]+)\s*$`)
	reSockErr = regexp.MustCompile(`^\s*Socket errors:\s*connect\s+([0-9]+),\s*read\s+([0-9]+),\s*write\s+([0-9]+),\s*timeout\s+([0-9]+)\s*$`)
)

var unitMS = map[string]float64{"us": 0.001, "ms": 1, "s": 1e3, "m": 60e3, "h": 3600e3}

// Parse reads the output of `wrk --latency`. Requests/sec and the 50% and
// 99% lines of the latency distribution are required; the error lines are
// absent when there were no errors.
func Parse(r io.Reader) (Result, error) {
	var res Result
	var haveRPS, inDist, have50, have99 bool
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case reDist.MatchString(line):
			inDist = true
			continue
		case inDist:
			if m := rePct.FindStringSubmatch(line); m != nil {
				v, err := strconv.ParseFloat(m[2], 64)
				if err != nil {
					return res, fmt.Errorf("latency %q: %v", line, err)
				}
				v *= unitMS[m[3]]
				switch m[1] {
				case "50":
					res.P50, have50 = v, true
				case "99":
					res.P99, have99 = v, true
				}
				continue
			}
			inDist = false
		}
		if m := reRPS.FindStringSubmatch(line); m != nil {
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				return res, fmt.Errorf("requests/sec %q: %v", line, err)
			}
			res.RPS, haveRPS = v, true
		} else if m := reNon2xx.FindStringSubmatch(line); m != nil {
			res.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
		} else if m := reSockErr.FindStringSubmatch(line); m != nil {
			for _, s := range m[1:] {
				n, _ := strconv.ParseInt(s, 10, 64)
				res.SocketErrors += n
			}
		}
	}
	if err := sc.Err(); err != nil {
		return res, err
	}
	var missing []string
	if !haveRPS {
		missing = append(missing, "Requests/sec")
	}
	if !have50 {
		missing = append(missing, "latency 50%")
	}
	if !have99 {
		missing = append(missing, "latency 99%")
	}
	if len(missing) > 0 {
		return res, fmt.Errorf("wrk output lacks %s (was --latency given?)", strings.Join(missing, ", "))
	}
	return res, nil
}

// Row is one line of the results file run.sh writes: a Result plus where it
// came from and the CPU the server's processes used while wrk ran.
type Row struct {
	Round            int
	Server, Workload string
	Result
	CPUTicks  int64 // utime+stime of the server and its children, clock ticks
	ElapsedMS int64 // wall time over which CPUTicks was measured
	ClkTck    int64
	CtxSw     int64 // context switches of the server's threads over the run
	// FrontTicks is CPUTicks of the server process alone, without its
	// workers or children.
	FrontTicks int64
}

// CPUPercent is the CPU the server used, in percent of one core.
func (r Row) CPUPercent() float64 {
	if r.ElapsedMS <= 0 || r.ClkTck <= 0 {
		return 0
	}
	return float64(r.CPUTicks) / float64(r.ClkTck) / (float64(r.ElapsedMS) / 1e3) * 100
}

// CPUPerRequest is the server CPU time per request, in microseconds.
func (r Row) CPUPerRequest() float64 {
	if r.RPS <= 0 {
		return 0
	}
	return r.CPUPercent() / 100 / r.RPS * 1e6
}

// FrontPerRequest is the server process's own CPU time per request, in
// microseconds.
func (r Row) FrontPerRequest() float64 {
	if r.RPS <= 0 || r.ElapsedMS <= 0 || r.ClkTck <= 0 {
		return 0
	}
	return float64(r.FrontTicks) / float64(r.ClkTck) / (r.RPS * float64(r.ElapsedMS) / 1e3) * 1e6
}

// CtxSwPerRequest is the server's context switches per request.
func (r Row) CtxSwPerRequest() float64 {
	if r.RPS <= 0 || r.ElapsedMS <= 0 {
		return 0
	}
	return float64(r.CtxSw) / (r.RPS * float64(r.ElapsedMS) / 1e3)
}

var columns = []string{"round", "server", "workload", "rps", "p50_ms", "p99_ms", "non2xx", "sockerr", "cpu_ticks", "elapsed_ms", "clk_tck", "ctxsw", "front_ticks"}

// ReadRows reads the tab-separated results; the first line is the header.
func ReadRows(r io.Reader) ([]Row, error) {
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		return nil, errors.New("empty results file")
	}
	if h := strings.Join(columns, "\t"); sc.Text() != h {
		return nil, fmt.Errorf("results header %q, want %q", sc.Text(), h)
	}
	var rows []Row
	for n := 2; sc.Scan(); n++ {
		f := strings.Split(sc.Text(), "\t")
		if len(f) != len(columns) {
			return nil, fmt.Errorf("line %d: %d fields, want %d", n, len(f), len(columns))
		}
		var row Row
		var errs []error
		atoi := func(s string) int64 {
			v, err := strconv.ParseInt(s, 10, 64)
			errs = append(errs, err)
			return v
		}
		atof := func(s string) float64 {
			v, err := strconv.ParseFloat(s, 64)
			errs = append(errs, err)
			return v
		}
		row.Round = int(atoi(f[0]))
		row.Server, row.Workload = f[1], f[2]
		row.RPS, row.P50, row.P99 = atof(f[3]), atof(f[4]), atof(f[5])
		row.Non2xx, row.SocketErrors = atoi(f[6]), atoi(f[7])
		row.CPUTicks, row.ElapsedMS, row.ClkTck, row.CtxSw = atoi(f[8]), atoi(f[9]), atoi(f[10]), atoi(f[11])
		row.FrontTicks = atoi(f[12])
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		rows = append(rows, row)
	}
	return rows, sc.Err()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

type key struct{ server, workload string }

type summary struct {
	n                  int
	rps, p50, p99, cpu float64 // medians
	cpuPerReq, ctxsw   float64 // medians, per request
	frontPerReq        float64 // median
	non2xx, sockErrs   int64   // totals over the rounds
	rounds             map[int]float64
}

// servers are those run.sh knows, in the order of the tables: the
// in-process baseline, the process-hop floors (bench/floor), the
// dispatcher with and without the access log, and the same at an older
// revision.
var servers = []string{"inproc", "floor", "floor-mux", "floor-coalesce", "dispatcher", "dispatcher-nolog", "old", "old-nolog"}

// ratios are the (candidate, baseline) pairs reported, when both ran.
var ratios = [][2]string{
	{"dispatcher", "inproc"}, {"dispatcher-nolog", "inproc"}, {"old", "inproc"}, {"old-nolog", "inproc"},
	{"floor", "inproc"}, {"floor-mux", "inproc"}, {"floor-coalesce", "inproc"},
	{"dispatcher", "floor"}, {"dispatcher", "dispatcher-nolog"}, {"old", "old-nolog"}, {"dispatcher", "old"},
}

// rank orders the servers in the tables.
func rank(server string) int { return indexOf(servers, server) }

// Table writes the medians, the ratios and the raw rounds as markdown.
func Table(w io.Writer, rows []Row) error {
	if len(rows) == 0 {
		return errors.New("no results")
	}
	var order []key
	groups := map[key][]Row{}
	var workloads []string
	seenWL := map[string]bool{}
	for _, r := range rows {
		k := key{r.Server, r.Workload}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
		if !seenWL[r.Workload] {
			seenWL[r.Workload] = true
			workloads = append(workloads, r.Workload)
		}
	}
	// Group by workload, baseline first, then the floor.
	sort.SliceStable(order, func(i, j int) bool {
		wi, wj := indexOf(workloads, order[i].workload), indexOf(workloads, order[j].workload)
		if wi != wj {
			return wi < wj
		}
		return rank(order[i].server) < rank(order[j].server)
	})
	sums := map[key]summary{}
	for _, k := range order {
		var rps, p50, p99, cpu, cpr, csw, fpr []float64
		s := summary{rounds: map[int]float64{}}
		for _, r := range groups[k] {
			rps, p50, p99, cpu = append(rps, r.RPS), append(p50, r.P50), append(p99, r.P99), append(cpu, r.CPUPercent())
			cpr, csw = append(cpr, r.CPUPerRequest()), append(csw, r.CtxSwPerRequest())
			fpr = append(fpr, r.FrontPerRequest())
			s.non2xx += r.Non2xx
			s.sockErrs += r.SocketErrors
			s.rounds[r.Round] = r.RPS
		}
		s.n, s.rps, s.p50, s.p99, s.cpu = len(rps), median(rps), median(p50), median(p99), median(cpu)
		s.cpuPerReq, s.ctxsw, s.frontPerReq = median(cpr), median(csw), median(fpr)
		sums[k] = s
	}

	fmt.Fprintln(w, "### Medians per (server, workload)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| server | workload | rounds | req/s | p50 ms | p99 ms | errors (non-2xx / socket, total) | server CPU % | server CPU µs/req | front µs/req | ctx sw/req |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, k := range order {
		s := sums[k]
		fmt.Fprintf(w, "| %s | %s | %d | %.0f | %.3f | %.3f | %d / %d | %.0f | %.1f | %.1f | %.2f |\n",
			k.server, k.workload, s.n, s.rps, s.p50, s.p99, s.non2xx, s.sockErrs, s.cpu, s.cpuPerReq, s.frontPerReq, s.ctxsw)
	}
	fmt.Fprintln(w)
	ratioTable(w, workloads, sums)
	fmt.Fprintln(w, "### Every round")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| round | server | workload | req/s | p50 ms | p99 ms | non-2xx | socket errors | server CPU % | CPU µs/req | front µs/req | ctx sw/req |")
	fmt.Fprintln(w, "|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %d | %s | %s | %.0f | %.3f | %.3f | %d | %d | %.0f | %.1f | %.1f | %.2f |\n",
			r.Round, r.Server, r.Workload, r.RPS, r.P50, r.P99, r.Non2xx, r.SocketErrors, r.CPUPercent(), r.CPUPerRequest(), r.FrontPerRequest(), r.CtxSwPerRequest())
	}
	return nil
}

// ratioTable writes the ratios of each pair of servers that both ran:
// of their medians, and the median (and range) of the ratios within each
// round, where the two ran minutes apart at most.
func ratioTable(w io.Writer, workloads []string, sums map[key]summary) {
	header := false
	for _, pair := range ratios {
		for _, wl := range workloads {
			c, okc := sums[key{pair[0], wl}]
			b, okb := sums[key{pair[1], wl}]
			if !okc || !okb || b.rps == 0 || b.p99 == 0 {
				continue
			}
			if !header {
				header = true
				fmt.Fprintln(w, "### Ratios")
				fmt.Fprintln(w)
				fmt.Fprintln(w, "| servers | workload | req/s ratio of medians (1 = parity) | req/s ratio, median of rounds (min-max) | p99 ratio (lower is better) | CPU/req ratio (lower is better) | ctx sw/req ratio |")
				fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|")
			}
			var per []float64
			for r, crps := range c.rounds {
				if brps, ok := b.rounds[r]; ok && brps > 0 {
					per = append(per, crps/brps)
				}
			}
			sort.Float64s(per)
			rounds := "n/a"
			if len(per) > 0 {
				rounds = fmt.Sprintf("%.3f (%.3f-%.3f)", median(per), per[0], per[len(per)-1])
			}
			fmt.Fprintf(w, "| %s / %s | %s | %.3f | %s | %.2f | %s | %s |\n", pair[0], pair[1], wl,
				c.rps/b.rps, rounds, c.p99/b.p99, ratio(c.cpuPerReq, b.cpuPerReq, "%.2f"), ratio(c.ctxsw, b.ctxsw, "%.2f"))
		}
	}
	if header {
		fmt.Fprintln(w)
	}
}

func ratio(a, b float64, format string) string {
	if b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf(format, a/b)
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return len(xs)
}
