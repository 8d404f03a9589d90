package main

// The load: C clients in closed loops on one keep-alive transport, each
// request healthy or, with the fault fraction, one of the faults, which
// the chaos worker acts out. Every answer is checked against what its kind
// must get.

import (
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/childproc/dispatcher/internal/chaos"
)

// A kind of request and the answer it must get.
type kind struct {
	name   string
	status int      // the status it must get
	hows   []string // variants, sent as &how=, chosen at random
	bound  bool     // the answer must arrive within --timeout + 1s
	marker bool     // the answer comes from the dispatcher (X-Dispatcher-Error: true)
}

var kinds = []kind{
	{name: "healthy", status: 200},
	{name: "crash", status: 502, hows: []string{"exit", "panic", "segv", "kill", "abort"}, bound: true, marker: true},
	{name: "hang", status: 504, bound: true, marker: true},
	{name: "oom", status: 502, bound: true, marker: true},
	{name: "malformed", status: 502, hows: []string{"junk", "giant", "kind", "msgpack", "truncated"}, bound: true, marker: true},
	{name: "exit-after", status: 200, bound: true},
	{name: "panic", status: 500, bound: true},
}

func kindByName(name string) (kind, bool) {
	for _, k := range kinds {
		if k.name == name {
			return k, true
		}
	}
	return kind{}, false
}

// stats are the results of one kind of request.
type stats struct {
	mu       sync.Mutex
	sent     int
	ok       int // the right status (and body), in time: set by finalize
	wrong    int // another status, a bad body, or a transport error
	late     int // the right answer, after the bound: set by finalize
	lost     int // wrong answers lost to a worker exiting on its own: set by finalize
	lat      []time.Duration
	statuses map[string]int // what came back ("200", "502", "error")
	examples []string
	pending  []answer // right answers whose time is checked by finalize
	wrongs   []answer // wrong answers, which finalize may find lost to an exit
}

// answer is one answer kept for finalize.
type answer struct {
	reqID   string
	got     string        // its status, or "error"
	end     time.Time     // when its body was read to the end
	lat     time.Duration // from when it was sent
	example string
}

// example keeps a description of a failure for the report: at most 6, at
// most 2 of each status, so that a rare kind of failure is not crowded out.
func (s *stats) example(got, desc string) {
	n := 0
	for _, e := range s.examples {
		if strings.HasPrefix(e, got+": ") {
			n++
		}
	}
	if len(s.examples) < 6 && n < 2 {
		s.examples = append(s.examples, got+": "+desc)
	}
}

func (s *stats) record(lat time.Duration, end time.Time, reqID, got string, good, bound bool, example string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent++
	s.lat = append(s.lat, lat)
	if s.statuses == nil {
		s.statuses = map[string]int{}
	}
	s.statuses[got]++
	switch {
	case !good:
		s.wrongs = append(s.wrongs, answer{reqID: reqID, got: got, end: end, lat: lat, example: example})
	case bound:
		s.pending = append(s.pending, answer{reqID: reqID, got: got, end: end, lat: lat, example: example})
	default:
		s.ok++
	}
}

// finalize sorts the wrong answers (lost to a worker that exited on its
// own after reading the request, by design, or wrong) and checks the time
// of the right answers with a bound: at most limit after the worker took
// the request (from the worker's log line), or, if its line is missing,
// after the request was sent.
func (s *stats) finalize(ev *events, limit time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.wrongs {
		if ev.lostToExit(a.reqID) {
			s.lost++
			continue
		}
		s.wrong++
		s.example(a.got, fmt.Sprintf("%s after %s", a.example, fmtDur(a.lat)))
	}
	s.wrongs = nil
	started := ev.faultStart
	for _, a := range s.pending {
		took := a.lat
		from := "sent"
		if t, ok := started[a.reqID]; ok {
			took, from = a.end.Sub(t), "taken by the worker"
		}
		if took <= limit {
			s.ok++
			continue
		}
		s.late++
		s.example(a.got, fmt.Sprintf("%s %s after it was %s (%s after it was sent)", a.example, fmtDur(took), from, fmtDur(a.lat)))
	}
	s.pending = nil
}

func (s *stats) percentile(p float64) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lat) == 0 {
		return 0
	}
	slices.Sort(s.lat)
	return s.lat[min(len(s.lat)-1, int(float64(len(s.lat))*p))]
}

// loadConfig is what one load run needs.
type loadConfig struct {
	url         string
	clients     int
	duration    time.Duration
	requests    int // stop after this many (0: no limit)
	faultFrac   float64
	faults      []kind
	timeout     time.Duration // the dispatcher's --timeout
	clientLimit time.Duration // the HTTP client's own limit per request
	maxUpload   int           // largest request body of a healthy POST
	seed        uint64
}

// loadResult is what a load run measured, per kind name.
type loadResult struct {
	byKind  map[string]*stats
	elapsed time.Duration
}

func newTransport(clients int) *http.Transport {
	return &http.Transport{
		Proxy:               nil, // loopback only, whatever the environment says
		MaxIdleConns:        clients * 2,
		MaxIdleConnsPerHost: clients * 2,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
}

// runLoad drives the load until the duration or request count is reached
// (or ctx is done, which also aborts requests in flight).
func runLoad(ctx context.Context, cfg loadConfig) *loadResult {
	res := &loadResult{byKind: map[string]*stats{}}
	res.byKind["healthy"] = &stats{}
	for _, k := range cfg.faults {
		res.byKind[k.name] = &stats{}
	}
	tr := newTransport(cfg.clients)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: cfg.clientLimit}
	healthy, _ := kindByName("healthy")
	var issued atomic.Int64
	t0 := time.Now()
	deadline := t0.Add(cfg.duration)
	var wg sync.WaitGroup
	for i := range cfg.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.seed, uint64(i)))
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if cfg.requests > 0 && issued.Add(1) > int64(cfg.requests) {
					return
				}
				k := healthy
				if len(cfg.faults) > 0 && rng.Float64() < cfg.faultFrac {
					k = cfg.faults[rng.IntN(len(cfg.faults))]
				}
				lat, reqID, got, good, example := send(ctx, client, cfg.url, k, rng, cfg.maxUpload)
				end := time.Now()
				if ctx.Err() != nil {
					return // interrupted: the answer means nothing
				}
				res.byKind[k.name].record(lat, end, reqID, got, good, k.bound, example)
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(t0)
	return res
}

// send makes one request of kind k and checks its answer. It returns the
// latency (to the end of the body), the request ID, what came back (a
// status or "error"), whether it is the right answer, and a description
// for the report.
func send(ctx context.Context, client *http.Client, base string, k kind, rng *rand.Rand, maxUpload int) (lat time.Duration, reqID, got string, good bool, desc string) {
	q := "fault=" + k.name
	if k.name == "healthy" {
		q = "fault=none"
	}
	if len(k.hows) > 0 {
		q += "&how=" + k.hows[rng.IntN(len(k.hows))]
	}
	token := strconv.FormatUint(rng.Uint64(), 36)
	size := 0
	method := http.MethodGet
	var reqBody []byte
	chunked := false
	healthyLike := k.status == http.StatusOK
	switch {
	case k.name == "exit-after":
		// A GET: the worker arms its death on the next read of its slot
		// connection once the handler runs, when the slot's reader must
		// have nothing more to read.
		size = []int{0, 16, 1 << 10, 16 << 10, 100 << 10}[rng.IntN(5)]
		q += "&token=" + token + "&size=" + strconv.Itoa(size)
	case healthyLike:
		// Bodies of several sizes, some over one 64 KiB frame, and some
		// request bodies for the worker to checksum, half of them chunked:
		// over 64 KiB or chunked, a body is streamed to the worker, and
		// retried with it when the worker died idle before reading it.
		size = []int{0, 16, 1 << 10, 16 << 10, 100 << 10}[rng.IntN(5)]
		if maxUpload > 0 && rng.IntN(4) == 0 {
			method = http.MethodPost
			reqBody = make([]byte, rng.IntN(maxUpload+1))
			for i := range reqBody {
				reqBody[i] = byte(rng.Uint32())
			}
			chunked = rng.IntN(2) == 0
		}
		q += "&token=" + token + "&size=" + strconv.Itoa(size)
	}
	desc = method + " /?" + q
	if reqBody != nil {
		desc += fmt.Sprintf(" (body %d bytes)", len(reqBody))
	}
	var rb io.Reader
	if reqBody != nil {
		rb = bytes.NewReader(reqBody)
		if chunked {
			desc += " chunked"
			rb = io.MultiReader(rb) // a reader NewRequest cannot take the length of
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, base+"/?"+q, rb)
	if err != nil {
		return 0, "", "error", false, desc + ": " + err.Error()
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return time.Since(t0), "", "error", false, desc + ": " + err.Error()
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	lat = time.Since(t0)
	got = strconv.Itoa(resp.StatusCode)
	reqID = resp.Header.Get("X-Request-Id")
	desc += " -> " + resp.Status + " (request id " + reqID + ")"
	if err != nil {
		return lat, reqID, "error", false, desc + ": body: " + err.Error()
	}
	if resp.StatusCode != k.status {
		return lat, reqID, got, false, desc + ": " + snippet(body)
	}
	if marked := resp.Header.Get("X-Dispatcher-Error") == "true"; marked != k.marker {
		return lat, reqID, got, false, fmt.Sprintf("%s: X-Dispatcher-Error %q", desc, resp.Header.Get("X-Dispatcher-Error"))
	}
	switch {
	case healthyLike:
		pid, err := strconv.Atoi(resp.Header.Get("X-Chaos-Pid"))
		if err != nil {
			return lat, reqID, got, false, desc + ": no X-Chaos-Pid"
		}
		var crc uint32
		n := int64(-1)
		if reqBody != nil {
			crc, n = crc32.ChecksumIEEE(reqBody), int64(len(reqBody))
		}
		if want := chaos.HealthyBody(token, size, pid, crc, n); !bytes.Equal(body, want) {
			return lat, reqID, got, false, fmt.Sprintf("%s: body of %d bytes differs from the expected %d: %s", desc, len(body), len(want), snippet(body))
		}
	case k.name == "panic":
		if string(body) != "Internal Server Error\n" {
			return lat, reqID, got, false, desc + ": " + snippet(body)
		}
	}
	return lat, reqID, got, true, desc
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return strconv.Quote(s)
}
