package main

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/ipc"
)

// check is one conformance check. Each runs against a worker process of
// its own, so that a check that breaks a slot or the process cannot affect
// another.
type check struct {
	name    string
	section string // of PROTOCOL.md
	what    string // what a passing worker does
	launch  launchOpts
	noStart bool // the check starts the binary itself
	// run drives the worker and returns a detail for the report, or why the
	// worker failed the check.
	run func(t *target, w *worker) (string, error)
}

var checks = []check{
	{name: "handshake", section: "2", what: "completes go-plugin's handshake and answers a ping on each of 3 slots",
		launch: launchOpts{slots: 3}, run: checkHandshake},
	{name: "outside-dispatcher", section: "2.3", what: "started without the handshake environment, exits non-zero without a handshake line",
		noStart: true, run: checkOutside},
	{name: "ping", section: "5", what: "answers each ping with a pong echoing its id, in order, also when pings come back to back",
		run: checkPing},
	{name: "request", section: "4.1, 4.3", what: "answers a request with one complete response, twice on the same slot",
		run: checkRequest},
	{name: "request-fields", section: "3.4, 10", what: "accepts a request with every field set and extra fields appended",
		run: checkRequestFields},
	{name: "continue", section: "4.2, 10", what: "if it lists continue, completes a request marked continue: no credit before the handler reads, then the whole window",
		run: checkContinue},
	{name: "bin-strings", section: "3.2", what: "accepts every str field sent as bin",
		run: checkBinStrings},
	{name: "streamed-body", section: "4.2", what: "takes a 1 MiB request body in body frames within its window, then an end frame with trailers",
		run: checkStreamedBody},
	{name: "wide-chunk", section: "4.2, 10", what: "if it lists wide-chunk, takes a 1 MiB request body in chunks of up to 256 KiB; never sends a body chunk over 256 KiB, or over 64 KiB where wide-chunk was not announced",
		run: checkWideChunk},
	{name: "head-ack", section: "4.2, 10", what: "lists only announced features in its pongs; if it lists head-ack, acknowledges a streamed request with a window frame [id, 0] (with wide-window, [id, 786432]) before any other frame of it, without waiting for its body",
		run: checkHeadAck},
	{name: "small-max-frame", section: "6", what: "keeps every frame within a DISPATCHER_IPC_MAX_FRAME of 128 KiB",
		launch: launchOpts{maxFrame: minMaxFrame}, run: checkSmallMaxFrame},
	{name: "body-abort", section: "4.2", what: "completes the response when the request body ends with an abort frame",
		run: checkBodyAbort},
	{name: "cancel", section: "4.6", what: "still completes the response of a cancelled request",
		run: checkCancel},
	{name: "cancel-streamed-body", section: "4.6", what: "completes a cancelled request whose body will never end, without waiting for it",
		run: checkCancelStreamed},
	{name: "late-frames", section: "4.7", what: "ignores body, end, cancel and abort frames for an exchange that is over",
		run: checkLateFrames},
	{name: "concurrent-slots", section: "3", what: "serves its slots independently",
		launch: launchOpts{slots: 2}, run: checkConcurrentSlots},
	{name: "ping-while-busy", section: "5", what: "answers a ping on one slot while another slot's request waits for the rest of its body",
		launch: launchOpts{slots: 2}, run: checkPingWhileBusy},
	{name: "pipelining", section: "4.5", what: "with DISPATCHER_IPC_DEPTH=4, answers 4 back-to-back requests in order, one at a time",
		launch: launchOpts{depth: 4}, run: checkPipelining},
	{name: "pipelined-cancel", section: "4.5, 4.6", what: "answers a cancelled queued request in its turn, after the requests before it",
		launch: launchOpts{depth: 4}, run: checkPipelinedCancel},
	{name: "withdraw", section: "4.5, 10", what: "if it lists withdraw, gives back a queued request it was asked to withdraw with a withdrawn frame, while the request before it runs, and never answers it",
		launch: launchOpts{depth: 4}, run: checkWithdraw},
	{name: "oversized-frame", section: "7", what: "closes the slot on a frame longer than DISPATCHER_IPC_MAX_FRAME, without waiting for its payload",
		run: malformed(func(t *target, s *slot) []byte {
			return []byte{0, 0x10, 0, 1, kRequest} // 1 MiB + 1, announced limit 1 MiB
		}, false)},
	{name: "empty-frame", section: "7", what: "closes the slot on a frame of length 0",
		run: malformed(func(t *target, s *slot) []byte { return []byte{0, 0, 0, 0} }, true)},
	{name: "unknown-kind", section: "7", what: "closes the slot on a frame of an unknown kind",
		run: malformed(func(t *target, s *slot) []byte { return frame(0x63, idPayload(s.nextID())) }, true)},
	{name: "wrong-direction", section: "7", what: "closes the slot on a frame only a worker sends (a response)",
		run: malformed(func(t *target, s *slot) []byte {
			e := &enc{}
			e.arrayLen(6)
			e.uint(s.nextID())
			e.int(200)
			e.nil()
			e.bin(nil)
			e.bool(true)
			e.nil()
			return frame(kResponse, e.b)
		}, true)},
	{name: "malformed-msgpack", section: "7", what: "closes the slot on a payload that is not msgpack",
		run: malformed(func(t *target, s *slot) []byte { return frame(kRequest, []byte{0xc1, 0xc1}) }, true)},
	{name: "short-request", section: "7", what: "closes the slot on a request of 10 fields",
		run: malformed(func(t *target, s *slot) []byte {
			r := get(t.uri)
			r.omitLast = true
			return frame(kRequest, r.payload(s.nextID()))
		}, true)},
	{name: "wrong-type", section: "7", what: "closes the slot on a request whose method is an integer",
		run: malformed(func(t *target, s *slot) []byte {
			r := get(t.uri)
			r.wrongTypes = true
			return frame(kRequest, r.payload(s.nextID()))
		}, true)},
	{name: "trailing-bytes", section: "7", what: "closes the slot on a request with bytes after its payload array",
		run: malformed(func(t *target, s *slot) []byte {
			return frame(kRequest, append(get(t.uri).payload(s.nextID()), 0xc0))
		}, true)},
	{name: "huge-length", section: "7", what: "closes the slot on a header map declaring 4 billion entries in a small frame",
		run: malformed(func(t *target, s *slot) []byte {
			e := &enc{}
			e.arrayLen(11)
			e.uint(s.nextID())
			e.str("GET")
			e.str(t.uri)
			e.str("HTTP/1.1")
			e.b = append(e.b, 0xdf, 0xff, 0xff, 0xff, 0xff) // map32
			return frame(kRequest, e.b)
		}, true)},
	{name: "slots-closed", section: "9", what: "exits once the dispatcher has closed every slot",
		launch: launchOpts{slots: 2}, run: checkSlotsClosed},
	{name: "quit", section: "9", what: "exits with status 0 within 2 s of Control.Quit",
		run: checkQuit},
}

// get returns a plain GET request for uri.
func get(uri string) *request {
	return &request{method: "GET", uri: uri, proto: "HTTP/1.1", host: "conformance.test",
		remoteAddr: "192.0.2.1:40000", requestID: "conformance", eof: true,
		header: map[string][]string{"User-Agent": {"dispatcher-conformance"}}}
}

// post returns a POST with a body of n bytes, of which the first chunk goes
// in the request frame.
func post(uri string, n int) (*request, []byte) {
	body := bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n]
	r := get(uri)
	r.method = "POST"
	r.contentLength = int64(n)
	r.header["Content-Type"] = []string{"application/octet-stream"}
	first := min(n, chunkSize)
	r.body, r.eof = body[:first], n <= chunkSize
	return r, body[first:]
}

// exchange sends r and awaits its complete answer.
func exchange(s *slot, r *request) (*result, error) {
	id := s.nextID()
	if err := s.send(kRequest, r.payload(id)); err != nil {
		return nil, err
	}
	return s.await(id)
}

func checkHandshake(t *target, w *worker) (string, error) {
	// Launch did it all: go-plugin's handshake line and protocol version,
	// Control.Ping on the control connection, a ping on every slot.
	if st := w.child.ExitState(); st != nil {
		return "", fmt.Errorf("exited right after the handshake: %v", st)
	}
	return fmt.Sprintf("pid %d, 3 slots", w.child.PID()), nil
}

func checkOutside(t *target, _ *worker) (string, error) {
	cmd := exec.Command(t.path, t.args...)
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, t.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(t.timeout)
	defer timer.Stop()
	var err error
	select {
	case err = <-done:
	case <-timer.C:
		_ = cmd.Process.Kill()
		<-done
		return "", fmt.Errorf("still running %s after being started without DISPATCHER_WORKER_COOKIE", t.timeout)
	}
	if line, _, _ := strings.Cut(stdout.String(), "\n"); strings.Count(line, "|") >= 3 {
		return "", violated("printed a handshake line without the cookie: %q", line)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return "", violated("exited with status 0 without the cookie: it must refuse to run")
	}
	msg, _, _ := strings.Cut(strings.TrimSpace(stderr.String()), "\n")
	return fmt.Sprintf("%v: %q", ee, msg), nil
}

func checkPing(t *target, w *worker) (string, error) {
	s := w.slots[0]
	for range 3 {
		if err := s.ping(); err != nil {
			return "", err
		}
	}
	var ids []uint64
	var burst []byte
	for range 3 {
		id := s.nextID()
		ids = append(ids, id)
		burst = append(burst, frame(kPing, idPayload(id))...)
	}
	if err := s.write(burst); err != nil {
		return "", err
	}
	for _, id := range ids {
		if err := s.expectPong(id); err != nil {
			return "", err
		}
	}
	return "6 pongs", nil
}

func checkRequest(t *target, w *worker) (string, error) {
	s := w.slots[0]
	var first *result
	for i := range 2 {
		r, err := exchange(s, get(t.uri))
		if err != nil {
			return "", fmt.Errorf("request %d: %w", i+1, err)
		}
		if first == nil {
			first = r
		}
	}
	return "GET " + t.uri + ": " + first.String(), nil
}

func checkRequestFields(t *target, w *worker) (string, error) {
	r := get(t.uri + "?a=1&a=2&b=%20c")
	r.header = map[string][]string{
		"Accept":          {"text/plain", "application/json"},
		"X-Empty":         {},
		"X-Nil":           nil,
		"X-Request-Id":    {"conformance-fields"},
		"Accept-Encoding": {"identity"},
	}
	r.requestID = "conformance-fields"
	r.proto = "HTTP/2.0"
	// The twelfth element is continue (false: the body is whole), the
	// thirteenth timeout_ms, then elements of a future version.
	r.extraCount = 6
	r.extra = func(e *enc) {
		e.bool(false)
		e.uint(30000)
		e.float64(1.5)
		e.mapLen(1)
		e.str("future")
		e.arrayLen(2)
		e.nil()
		e.int(-1 << 40)
		e.b = append(e.b, 0xd6, 0x01, 1, 2, 3, 4) // fixext 4
		e.str(strings.Repeat("x", 300))
	}
	res, err := exchange(w.slots[0], r)
	if err != nil {
		return "", err
	}
	return res.String(), w.slots[0].ping()
}

func checkBinStrings(t *target, w *worker) (string, error) {
	r := get(t.uri)
	r.asBin = true
	res, err := exchange(w.slots[0], r)
	if err != nil {
		return "", err
	}
	return res.String(), w.slots[0].ping()
}

// streamed sends a POST whose body follows in body frames and awaits the
// answer; it reports how much of the body was sent and acknowledged.
func streamed(s *slot, uri string, n int, abort string) (*result, string, error) {
	res, p, err := streamedPump(s, uri, n, abort)
	return res, fmt.Sprintf("%d of %d body bytes sent, %d acknowledged", p.sent, n, p.granted), err
}

// streamedPump is streamed, returning the stopped pump.
func streamedPump(s *slot, uri string, n int, abort string) (*result, *pump, error) {
	r, rest := post(uri, n)
	id := s.nextID()
	if err := s.send(kRequest, r.payload(id)); err != nil {
		return nil, &pump{}, err
	}
	p := startPump(s, id, len(r.body), rest, map[string][]string{"X-Conformance": {"trailer"}}, abort)
	res, err := s.await(id)
	p.stop()
	if err == nil && p.err != nil {
		err = p.err
	}
	return res, p, err
}

func checkStreamedBody(t *target, w *worker) (string, error) {
	res, detail, err := streamed(w.slots[0], t.uri, 1<<20, "")
	if err != nil {
		return "", err
	}
	return res.String() + "; " + detail, w.slots[0].ping()
}

// checkWideChunk streams a body in wide chunks to a worker that lists the
// wide-chunk feature (every read checks the worker's own chunks).
func checkWideChunk(t *target, w *worker) (string, error) {
	s := w.slots[0]
	if err := s.ping(); err != nil {
		return "", err
	}
	if !slices.Contains(s.features, ipc.FeatureWideChunk) {
		return "its pongs do not list wide-chunk: it gets chunks of at most 64 KiB (optional)", nil
	}
	res, p, err := streamedPump(s, t.uri, 1<<20, "")
	if err != nil {
		return "", err
	}
	if p.largest == 0 {
		return fmt.Sprintf("the handler answered before any body frame (%s): point -path at one that reads the body to send it wide chunks", res), s.ping()
	}
	return fmt.Sprintf("%d body bytes sent, in chunks of up to %d; %s", p.sent, p.largest, res), s.ping()
}

// checkHeadAck holds back the body of a request: a worker that lists the
// head-ack feature in its pongs owes the acknowledgement at once, before
// its handler starts (PROTOCOL.md §4.2).
func checkHeadAck(t *target, w *worker) (string, error) {
	s := w.slots[0]
	if err := s.ping(); err != nil {
		return "", err
	}
	for _, f := range s.features {
		if !slices.Contains(ipc.Features, f) {
			return "", violated("its pong lists the feature %q, which the dispatcher did not announce (%s=%s)", f, ipc.EnvFeatures, strings.Join(ipc.Features, ","))
		}
	}
	listed := "its pongs list no feature"
	if len(s.features) > 0 {
		listed = "its pongs list " + strings.Join(s.features, ", ")
	}
	if !slices.Contains(s.features, ipc.FeatureHeadAck) {
		return listed + ": it does not acknowledge request heads (optional)", nil
	}
	r, rest := post(t.uri, 3*chunkSize)
	id := s.nextID()
	if err := s.send(kRequest, r.payload(id)); err != nil {
		return "", err
	}
	f, err := s.read()
	if err != nil {
		return "", fmt.Errorf("waiting for the acknowledgement of request %d, whose body is held back: %w", id, err)
	}
	ack := uint64(0)
	if slices.Contains(s.features, ipc.FeatureWideWindow) {
		ack = wideWindow - window
	}
	if f.kind != kWindow || f.id != id || f.n != ack {
		return "", violated("%s frame (exchange %d) where the acknowledgement of request %d, a window frame [%d, %d], was due", kindName(f.kind), f.id, id, id, ack)
	}
	p := startPump(s, id, len(r.body), rest, nil, "")
	res, err := s.await(id)
	p.stop()
	if err != nil {
		return "", fmt.Errorf("once its body was sent: %w", err)
	}
	return listed + "; acknowledged a request before its body came, then " + res.String(), s.ping()
}

// checkContinue sends a request marked continue to a worker that lists the
// continue feature: it starts with no credit, and the worker grants the
// whole window when its handler reads the body, or answers without it
// (PROTOCOL.md §4.2). Either way the exchange completes.
func checkContinue(t *target, w *worker) (string, error) {
	s := w.slots[0]
	if err := s.ping(); err != nil {
		return "", err
	}
	if !slices.Contains(s.features, ipc.FeatureContinue) {
		return "its pongs do not list continue: it gets no request marked continue (optional)", nil
	}
	r, rest := post(t.uri, 3*chunkSize)
	rest = append(r.body, rest...)
	r.body, r.eof, r.cont = nil, false, true
	r.header["Expect"] = []string{"100-continue"}
	id := s.nextID()
	if err := s.send(kRequest, r.payload(id)); err != nil {
		return "", err
	}
	p := startPumpCredit(s, id, 0, rest, nil, "", 0, true)
	res, err := s.await(id)
	sent, _ := p.stop()
	if err == nil && p.err != nil {
		err = p.err
	}
	if err != nil {
		return "", err
	}
	how := "answered without the body"
	if sent > 0 {
		how = fmt.Sprintf("granted the window, then got %d body bytes", sent)
	}
	return how + "; " + res.String(), s.ping()
}

func checkSmallMaxFrame(t *target, w *worker) (string, error) {
	s := w.slots[0]
	res, detail, err := streamed(s, t.uri, 512<<10, "")
	if err != nil {
		return "", err
	}
	if _, err := exchange(s, get(t.uri)); err != nil {
		return "", err
	}
	return res.String() + "; " + detail, s.ping()
}

func checkBodyAbort(t *target, w *worker) (string, error) {
	res, _, err := streamed(w.slots[0], t.uri, 3*chunkSize, "client body: connection reset by peer")
	if err != nil {
		return "", err
	}
	return res.String(), w.slots[0].ping()
}

func checkCancel(t *target, w *worker) (string, error) {
	s := w.slots[0]
	id := s.nextID()
	msg := append(frame(kRequest, get(t.uri).payload(id)), frame(kCancel, idPayload(id))...)
	if err := s.write(msg); err != nil {
		return "", err
	}
	res, err := s.await(id)
	if err != nil {
		return "", err
	}
	return res.String(), s.ping()
}

func checkCancelStreamed(t *target, w *worker) (string, error) {
	s := w.slots[0]
	r, _ := post(t.uri, 4*chunkSize) // only the first chunk is ever sent
	id := s.nextID()
	if err := s.send(kRequest, r.payload(id)); err != nil {
		return "", err
	}
	if err := s.send(kCancel, idPayload(id)); err != nil {
		return "", err
	}
	s.credit = func(uint64, uint64) error { return nil }
	res, err := s.await(id)
	if err != nil {
		return "", fmt.Errorf("after the cancel: %w", err)
	}
	return res.String(), s.ping()
}

func checkLateFrames(t *target, w *worker) (string, error) {
	s := w.slots[0]
	id := s.nextID()
	if err := s.send(kRequest, get(t.uri).payload(id)); err != nil {
		return "", err
	}
	if _, err := s.await(id); err != nil {
		return "", err
	}
	var late []byte
	late = append(late, frame(kBody, bodyPayload(id, []byte("late")))...)
	late = append(late, frame(kEnd, endPayload(id, nil))...)
	late = append(late, frame(kCancel, idPayload(id))...)
	late = append(late, frame(kAbort, abortPayload(id, "late"))...)
	if err := s.write(late); err != nil {
		return "", err
	}
	if err := s.ping(); err != nil {
		return "", err
	}
	res, err := exchange(s, get(t.uri))
	if err != nil {
		return "", fmt.Errorf("the next request: %w", err)
	}
	return "next request: " + res.String(), nil
}

func checkConcurrentSlots(t *target, w *worker) (string, error) {
	a, b := w.slots[0], w.slots[1]
	ida, idb := a.nextID(), b.nextID()
	if err := a.send(kRequest, get(t.uri).payload(ida)); err != nil {
		return "", err
	}
	if err := b.send(kRequest, get(t.uri).payload(idb)); err != nil {
		return "", err
	}
	// Read the second slot first: neither may wait for the other.
	if _, err := b.await(idb); err != nil {
		return "", fmt.Errorf("slot 2: %w", err)
	}
	if _, err := a.await(ida); err != nil {
		return "", fmt.Errorf("slot 1: %w", err)
	}
	return "", nil
}

// checkPingWhileBusy holds back the body of a request on one slot (a
// handler that reads its body waits for it) and, once the worker shows it
// has the request (a window frame for its first chunk, or an answer),
// pings the other slot, as the dispatcher's health pings do.
func checkPingWhileBusy(t *target, w *worker) (string, error) {
	busy, idle := w.slots[0], w.slots[1]
	r, rest := post(t.uri, 3*chunkSize)
	id := busy.nextID()
	if err := busy.send(kRequest, r.payload(id)); err != nil {
		return "", err
	}
	first, err := busy.read()
	if err != nil {
		return "", fmt.Errorf("slot 1, waiting for a window frame or an answer to a request whose body is held back: %w", err)
	}
	busy.unread(first)
	if err := idle.ping(); err != nil {
		return "", fmt.Errorf("slot 2, while the request on slot 1 waits for its body: %w", err)
	}
	p := startPump(busy, id, len(r.body), rest, nil, "")
	res, err := busy.await(id)
	p.stop()
	if err != nil {
		return "", fmt.Errorf("slot 1, once its body was sent: %w", err)
	}
	if first.kind != kWindow {
		return "slot 1 answered without waiting for its body: " + res.String(), nil
	}
	return "then slot 1: " + res.String(), nil
}

func checkPipelining(t *target, w *worker) (string, error) {
	s := w.slots[0]
	var ids []uint64
	var burst []byte
	for range 4 {
		id := s.nextID()
		ids = append(ids, id)
		burst = append(burst, frame(kRequest, get(t.uri).payload(id))...)
	}
	if err := s.write(burst); err != nil {
		return "", err
	}
	for i, id := range ids {
		if _, err := s.await(id); err != nil {
			return "", fmt.Errorf("request %d of 4: %w", i+1, err)
		}
	}
	// Once the last answer has ended, a request with a streamed body may
	// follow at once.
	res, _, err := streamed(s, t.uri, 3*chunkSize, "")
	if err != nil {
		return "", fmt.Errorf("streamed request after the pipelined ones: %w", err)
	}
	return "then a streamed POST: " + res.String(), s.ping()
}

// checkPipelinedCancel keeps a first request running by holding back the
// rest of its body (a worker whose handler reads the body cannot answer
// before it arrives; one whose handler does not may answer at once), queues
// two complete requests behind it and cancels the last one. Whatever the
// handler does, the answers must come in request order: the cancelled
// request is answered in its turn, with an abort frame if it never started
// or a full response if the cancel came too late.
func checkPipelinedCancel(t *target, w *worker) (string, error) {
	s := w.slots[0]
	first, rest := post(t.uri, 3*chunkSize)
	ids := []uint64{s.nextID(), s.nextID(), s.nextID()}
	burst := frame(kRequest, first.payload(ids[0]))
	for _, id := range ids[1:] {
		burst = append(burst, frame(kRequest, get(t.uri).payload(id))...)
	}
	burst = append(burst, frame(kCancel, idPayload(ids[2]))...)
	if err := s.write(burst); err != nil {
		return "", err
	}
	// Only now the rest of the first body, within the worker's credit.
	p := startPump(s, ids[0], len(first.body), rest, nil, "")
	results := make([]*result, len(ids))
	var err error
	for i, id := range ids {
		if results[i], err = s.await(id); err != nil {
			break
		}
		if i == 0 {
			p.stop() // as the dispatcher stops a body once its response ended
		}
	}
	if err != nil {
		p.stop()
		var ooo *outOfOrder
		if errors.As(err, &ooo) && ooo.got == ids[2] {
			err = violated("%v; the cancelled request %d was answered ahead of the ones before it instead of in its turn", err, ids[2])
		}
		return "", err
	}
	last := results[2]
	if !last.aborted {
		return "cancelled third request: " + last.String() + " (the cancel came after it started)", s.ping()
	}
	return "cancelled third request, in its turn: " + last.String(), s.ping()
}

// checkWithdraw keeps a first request running by holding back the rest of
// its body, as checkPipelinedCancel does, queues a complete request behind
// it and withdraws that one. A worker that lists withdraw answers with a
// withdrawn frame, amid the first exchange's frames if it likes, and never
// answers the withdrawn request; if the first request was already over
// (its handler did not wait for the body), the second may have started and
// is answered in its turn instead. A request sent afterwards is answered
// next.
func checkWithdraw(t *target, w *worker) (string, error) {
	s := w.slots[0]
	if err := s.ping(); err != nil {
		return "", err
	}
	if !slices.Contains(s.features, ipc.FeatureWithdraw) {
		return "its pongs do not list withdraw: it gets no withdraw frame (optional)", nil
	}
	first, rest := post(t.uri, 3*chunkSize)
	id1, id2 := s.nextID(), s.nextID()
	burst := frame(kRequest, first.payload(id1))
	burst = append(burst, frame(kRequest, get(t.uri).payload(id2))...)
	burst = append(burst, frame(kWithdraw, idPayload(id2))...)
	if err := s.write(burst); err != nil {
		return "", err
	}
	p := startPump(s, id1, len(first.body), rest, nil, "")
	defer p.stop()
	withdrawn, over := false, false
	for !over || !withdrawn {
		f, err := s.readSkippingCredit()
		if err != nil {
			return "", fmt.Errorf("waiting for the withdrawn frame and the first answer: %w", err)
		}
		switch {
		case f.kind == kWithdrawn && f.id == id2 && !withdrawn:
			withdrawn = true
		case f.kind == kWithdrawn:
			return "", violated("withdrawn frame for exchange %d, which was not withdrawn (or twice)", f.id)
		case f.id == id1 && !over:
			over = f.kind == kAbort || f.kind == kEnd || f.kind == kResponse && f.eof
		case f.id == id2 && over && !withdrawn:
			// It had started: answered in its turn.
			res, err := s.awaitRest(id2, f)
			if err != nil {
				return "", err
			}
			return "the queued request had started when the withdraw came: answered in its turn, " + res.String(), s.ping()
		default:
			return "", violated("%s frame for exchange %d while exchange %d runs and %d is withdrawn", kindName(f.kind), f.id, id1, id2)
		}
	}
	p.stop()
	res, err := exchange(s, get(t.uri))
	if err != nil {
		return "", fmt.Errorf("the request after the withdrawn one: %w", err)
	}
	return "withdrawn while the first request ran; the next request: " + res.String(), s.ping()
}

// malformed returns a check that sends the frame bad builds and expects the
// worker to close the slot. If ping, a ping follows the bad frame, which a
// worker that ignored the violation would answer.
func malformed(bad func(t *target, s *slot) []byte, ping bool) func(t *target, w *worker) (string, error) {
	return func(t *target, w *worker) (string, error) {
		s := w.slots[0]
		msg := bad(t, s)
		if ping {
			msg = append(msg, frame(kPing, idPayload(s.nextID()))...)
		}
		if err := s.write(msg); err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			return "", err
		}
		if err := s.expectClosed("the bad frame"); err != nil {
			return "", err
		}
		how := "closed the slot"
		if st, ok := w.waitExit(0); ok {
			how += fmt.Sprintf(" (the process exited: %v)", st)
		}
		return how, nil
	}
}

func checkSlotsClosed(t *target, w *worker) (string, error) {
	for _, s := range w.slots {
		s.nc.Close()
	}
	st, ok := w.waitExit(t.timeout)
	if !ok {
		return "", violated("still running %s after every slot was closed", t.timeout)
	}
	return st.String(), nil
}

func checkQuit(t *target, w *worker) (string, error) {
	if err := w.slots[0].ping(); err != nil {
		return "", err
	}
	st := w.stopGracefully(t.timeout)
	if st == nil {
		return "", fmt.Errorf("did not exit within %s", t.timeout)
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		return "", violated("did not exit within 2 s of Control.Quit, so it was %v", ws.Signal())
	case st.ExitCode() != 0:
		return "", violated("exited with status %d after Control.Quit, want 0", st.ExitCode())
	}
	return st.String(), nil
}
