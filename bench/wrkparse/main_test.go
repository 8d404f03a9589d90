package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

const sample = `Running 8s test @ http://127.0.0.1:40123/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   839.51us    1.02ms  25.13ms   92.10%
    Req/Sec    41.23k     2.01k   44.80k    71.25%
  Latency Distribution
     50%  612.00us
     75%    0.98ms
     90%    1.50ms
     99%    1.20s
  328123 requests in 8.00s, 38.48MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 17
Requests/sec:  41012.34
Transfer/sec:      4.81MB
`

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestParse(t *testing.T) {
	r, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if !near(r.RPS, 41012.34) || !near(r.P50, 0.612) || !near(r.P99, 1200) || r.Non2xx != 17 || r.SocketErrors != 10 {
		t.Fatalf("got %+v", r)
	}
}

func TestParseNoErrors(t *testing.T) {
	in := strings.NewReader(`  Latency Distribution
     50%    1.00ms
     75%    2.00ms
     90%    3.00ms
     99%    1.50m
  10 requests in 1.00s, 1.00KB read
Requests/sec:     10.00
`)
	r, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	if !near(r.P99, 90000) || r.Non2xx != 0 || r.SocketErrors != 0 || !near(r.RPS, 10) {
		t.Fatalf("got %+v", r)
	}
}

func TestParseMissing(t *testing.T) {
	// Without --latency there is no distribution.
	_, err := Parse(strings.NewReader("Requests/sec:  5.00\n"))
	if err == nil || !strings.Contains(err.Error(), "latency 50%") {
		t.Fatalf("err = %v", err)
	}
	_, err = Parse(strings.NewReader("unable to connect to 127.0.0.1:1 Connection refused\n"))
	if err == nil || !strings.Contains(err.Error(), "Requests/sec") {
		t.Fatalf("err = %v", err)
	}
}

// table renders the report of the given result rows (the header line is
// added).
func table(t *testing.T, rows ...string) string {
	t.Helper()
	parsed, err := ReadRows(strings.NewReader(strings.Join(columns, "\t") + "\n" + strings.Join(rows, "")))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Table(&b, parsed); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestTableWithFloor(t *testing.T) {
	out := table(t,
		"1\tdispatcher\thello\t40\t2\t4\t0\t0\t150\t1000\t100\t80\t100\n",
		"1\tfloor\thello\t50\t2\t5\t0\t0\t150\t1000\t100\t100\t100\n",
		"1\tinproc\thello\t100\t1\t2\t0\t0\t100\t1000\t100\t50\t100\n")
	order := []string{
		"| inproc | hello | 1 | 100 | 1.000 | 2.000 | 0 / 0 | 100 | 10000.0 | 10000.0 | 0.50 |",
		"| floor | hello |", "| dispatcher | hello |",
		"### Ratios",
		"| dispatcher / inproc | hello | 0.400 | 0.400 (0.400-0.400) | 2.00 | 3.75 | 4.00 |",
		"| floor / inproc | hello | 0.500 | 0.500 (0.500-0.500) | 2.50 | 3.00 | 4.00 |",
		"| dispatcher / floor | hello | 0.800 | 0.800 (0.800-0.800) | 0.80 | 1.25 | 1.00 |",
		"### Every round",
	}
	at := 0
	for _, want := range order {
		i := strings.Index(out[at:], want)
		if i < 0 {
			t.Fatalf("table lacks %q after offset %d:\n%s", want, at, out)
		}
		at += i + len(want)
	}
}

func TestTable(t *testing.T) {
	out := table(t,
		"1\tinproc\thello\t100\t1\t2\t0\t0\t100\t1000\t100\t0\t50\n",
		"1\tdispatcher\thello\t50\t2\t6\t1\t0\t150\t1000\t100\t0\t50\n",
		"1\tdispatcher-nolog\thello\t50\t2\t6\t1\t0\t150\t1000\t100\t0\t50\n",
		"2\tdispatcher-nolog\thello\t100\t2\t6\t1\t0\t150\t1000\t100\t0\t50\n",
		"2\tdispatcher\thello\t70\t2\t4\t0\t2\t150\t1000\t100\t0\t50\n",
		"2\tinproc\thello\t100\t1\t2\t0\t0\t100\t1000\t100\t0\t50\n")
	for _, want := range []string{
		"| inproc | hello | 2 | 100 | 1.000 | 2.000 | 0 / 0 | 100 | 10000.0 | 5000.0 | 0.00 |",
		"| dispatcher | hello | 2 | 60 | 2.000 | 5.000 | 1 / 2 | 150 | 25714.3 | 8571.4 | 0.00 |",
		"| dispatcher / inproc | hello | 0.600 | 0.600 (0.500-0.700) | 2.50 | 2.57 | n/a |",
		// The median of the rounds' ratios is not the ratio of the medians.
		"| dispatcher / dispatcher-nolog | hello | 0.800 | 0.850 (0.700-1.000) | 0.83 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "floor") || strings.Contains(out, "old") {
		t.Errorf("ratios of servers that did not run:\n%s", out)
	}
}
