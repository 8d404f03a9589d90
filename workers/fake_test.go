package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// fakeBinary starts in-memory workers (Config.Start) for tests of the
// pool's logic under testing/synctest: each worker serves its slots over
// net.Pipe with the real ipc framing, and answers by path:
//
//	/ok          200 "ok" at once
//	/slow?d=D    200 "slow" after D
//	/hang        never answers, until killed
//	/crash       the worker dies (its slots close)
//
// Requests queued on a slot run in order; with the withdraw feature, a
// queued request is given back when withdrawn.
type fakeBinary struct {
	tb       testing.TB
	features []string // listed in pongs

	mu         sync.Mutex
	failStarts int // the next starts that fail
	starts     []time.Time
	procs      []*fakeProc
	unkillable bool          // Kill does not end the workers started from now on
	startDelay time.Duration // how long a start takes
	handled    []string
}

func newFakeBinary(tb testing.TB) *fakeBinary {
	b := &fakeBinary{tb: tb, features: []string{ipc.FeatureWithdraw}}
	// After the pool's Close (cleanups run last first): unkillable workers
	// too end with the test.
	tb.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, p := range b.procs {
			p.exit()
		}
	})
	return b
}

var errFakeStart = errors.New("fake: the binary does not start")

func (b *fakeBinary) start(spec StartSpec) (Process, error) {
	b.mu.Lock()
	b.starts = append(b.starts, time.Now())
	if d := b.startDelay; d > 0 {
		b.mu.Unlock()
		time.Sleep(d)
		b.mu.Lock()
	}
	if b.failStarts > 0 {
		b.failStarts--
		b.mu.Unlock()
		return nil, errFakeStart
	}
	p := &fakeProc{b: b, pid: 1000 + len(b.procs), exited: make(chan struct{}), unkillable: b.unkillable}
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	for range spec.Slots {
		hc, wc := net.Pipe()
		p.host = append(p.host, ipc.NewConn(hc, spec.MaxFrame))
		p.wconns = append(p.wconns, wc)
		p.slots.Add(1)
		go p.serve(ipc.NewServerConn(wc, 0))
	}
	go func() {
		p.slots.Wait()
		p.exit()
	}()
	for _, c := range p.host {
		c.SetDeadline(time.Now().Add(spec.Timeout))
		if err := c.Ping(); err != nil {
			p.exit()
			return nil, err
		}
		c.SetDeadline(time.Time{})
	}
	return p, nil
}

// startCount returns how many starts were attempted.
func (b *fakeBinary) startCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.starts)
}

// live returns the workers that have not exited.
func (b *fakeBinary) live() []*fakeProc {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*fakeProc
	for _, p := range b.procs {
		select {
		case <-p.exited:
		default:
			out = append(out, p)
		}
	}
	return out
}

type fakeProc struct {
	b          *fakeBinary
	pid        int
	host       []*ipc.Conn
	wconns     []net.Conn
	slots      sync.WaitGroup
	exited     chan struct{}
	exitOnce   sync.Once
	unkillable bool

	mu      sync.Mutex
	signals []syscall.Signal
}

var _ Process = (*fakeProc)(nil)

func (p *fakeProc) PID() int           { return p.pid }
func (p *fakeProc) Conns() []*ipc.Conn { return p.host }
func (p *fakeProc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	p.mu.Unlock()
	return nil
}

func (p *fakeProc) Kill() {
	if !p.unkillable {
		p.exit()
	}
}

func (p *fakeProc) exit() {
	p.exitOnce.Do(func() {
		for _, c := range p.wconns {
			c.Close()
		}
		close(p.exited)
	})
}

func (p *fakeProc) Stop(ctx context.Context) error {
	for _, c := range p.host {
		c.Close()
	}
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
	}
	p.Kill()
	select {
	case <-p.exited:
		return ctx.Err()
	case <-time.After(2 * time.Second):
		return fmt.Errorf("fake: not reaped: %w", ctx.Err())
	}
}

func (p *fakeProc) Exited() <-chan struct{}                      { return p.exited }
func (p *fakeProc) ExitState() *os.ProcessState                  { return nil }
func (p *fakeProc) StderrTail(time.Time, time.Duration) []string { return nil }
func (p *fakeProc) OutOfMemory() bool                            { return false }

// serve answers one slot: a reader that queues requests, and a runner that
// answers them in order.
func (p *fakeProc) serve(sc *ipc.ServerConn) {
	defer p.slots.Done()
	sc.SetFeatures(p.b.features)
	type queued struct {
		id        uint64
		path      string
		cancelled bool
	}
	var mu sync.Mutex
	var queue []*queued
	work := make(chan struct{}, 1)
	done := make(chan struct{})
	ran := make(chan struct{})
	// Once the slot is closed, the process exits only when its handler
	// returns, as the sdk's does: a hanging one waits for the kill.
	defer func() {
		close(done)
		<-ran
	}()
	go func() {
		defer close(ran)
		for {
			select {
			case <-work:
			case <-done:
				return
			}
			for {
				mu.Lock()
				if len(queue) == 0 {
					mu.Unlock()
					break
				}
				q := queue[0]
				mu.Unlock()
				p.answer(sc, q.id, q.path, q.cancelled)
				mu.Lock()
				queue = queue[1:]
				mu.Unlock()
			}
		}
	}()
	for {
		f, err := sc.Next()
		if err != nil {
			return
		}
		switch f.Kind {
		case ipc.KindPing:
			_ = sc.WritePong(f.ID)
		case ipc.KindRequest:
			mu.Lock()
			queue = append(queue, &queued{id: f.ID, path: f.Request.URI})
			mu.Unlock()
			select {
			case work <- struct{}{}:
			default:
			}
		case ipc.KindCancel:
			mu.Lock()
			for i, q := range queue {
				if q.id == f.ID && i > 0 {
					q.cancelled = true
				}
			}
			mu.Unlock()
		case ipc.KindWithdraw:
			mu.Lock()
			i := slices.IndexFunc(queue, func(q *queued) bool { return q.id == f.ID })
			if i > 0 { // the head has started
				queue = slices.Delete(queue, i, i+1)
			}
			mu.Unlock()
			if i > 0 {
				_ = sc.WriteWithdrawn(f.ID)
			}
		}
	}
}

func (p *fakeProc) answer(sc *ipc.ServerConn, id uint64, uri string, cancelled bool) {
	if cancelled {
		_ = sc.WriteAbort(id, "cancelled before it started")
		return
	}
	u, _ := url.Parse(uri)
	p.b.mu.Lock()
	p.b.handled = append(p.b.handled, u.Path)
	p.b.mu.Unlock()
	body := "ok"
	switch u.Path {
	case "/slow":
		d, _ := time.ParseDuration(u.Query().Get("d"))
		select {
		case <-time.After(d):
		case <-p.exited:
			return
		}
		body = "slow"
	case "/hang":
		<-p.exited
		return
	case "/crash":
		p.exit()
		return
	}
	_ = sc.WriteResponse(&ipc.Response{ID: id, Status: 200, Header: http.Header{}, Body: []byte(body), EOF: true})
}

// fakePool starts a pool of b's workers; the test's cleanup closes it.
func fakePool(tb testing.TB, b *fakeBinary, cfg Config) (*Pool, *test.Hook) {
	tb.Helper()
	logger, hook := test.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	cfg.Path = "fake"
	cfg.Start = b.start
	cfg.Logger = logrus.NewEntry(logger)
	if cfg.Size == 0 {
		cfg.Size = 1
	}
	p, err := NewPool(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = p.Close(context.Background()) })
	return p, hook
}

// fakeGet sends a GET for uri and reads the whole answer.
func fakeGet(ctx context.Context, p *Pool, uri string) (string, error) {
	resp, err := p.RoundTrip(ctx, &ipc.Request{Method: "GET", URI: uri, Proto: "HTTP/1.1", EOF: true}, nil)
	if err != nil {
		return "", err
	}
	defer resp.Close()
	var body []byte
	for {
		b, err := resp.Next()
		if err == io.EOF {
			return string(body), nil
		}
		if err != nil {
			return "", err
		}
		body = append(body, b...)
	}
}
