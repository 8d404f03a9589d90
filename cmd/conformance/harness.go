package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/sirupsen/logrus"
)

// target is the worker binary under test and how to run it.
type target struct {
	path         string
	args         []string
	env          []string      // added to the minimal environment
	uri          string        // request-target of the requests the checks send
	timeout      time.Duration // each wait for the worker
	startTimeout time.Duration
	socketDir    string
}

// launchOpts are what a check needs of its worker.
type launchOpts struct {
	slots    int // if zero, 1
	depth    int // if zero, 1
	maxFrame int // if zero, ipc.DefaultMaxFrame
}

// worker is a worker started for one check, with its raw slots.
type worker struct {
	child *launch.Child
	slots []*slot
	log   *lines
}

// launch starts the target through the production handshake (ipc.Launch,
// which is go-plugin's client and the slot pings the dispatcher does) and
// takes its slot connections raw.
func (t *target) launch(o launchOpts) (*worker, error) {
	if o.slots == 0 {
		o.slots = 1
	}
	if o.maxFrame == 0 {
		o.maxFrame = ipc.DefaultMaxFrame
	}
	log := &lines{}
	logger := logrus.New()
	logger.SetOutput(discard{})
	logger.SetLevel(logrus.DebugLevel)
	logger.AddHook(log)
	cmd := exec.Command(t.path, t.args...)
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, t.env...)
	child, err := launch.Start(launch.Config{
		Cmd:          cmd,
		Slots:        o.slots,
		MaxFrame:     o.maxFrame,
		Depth:        o.depth,
		StartTimeout: t.startTimeout,
		SocketDir:    t.socketDir,
		Control:      true, // a worker must still serve it (PROTOCOL.md 2.2)
		Logger:       logrus.NewEntry(logger),
	})
	if err != nil {
		return nil, err
	}
	w := &worker{child: child, log: log}
	for _, nc := range child.RawConns() {
		s := newSlot(nc, o.maxFrame, t.timeout)
		w.slots = append(w.slots, s)
	}
	// The start's pongs went to package ipc: one more ping on each slot
	// tells the checks which features the worker uses (a wide-window
	// acknowledgement grants credit beyond what was sent).
	for i, s := range w.slots {
		if err := s.ping(); err != nil {
			w.stop()
			return nil, fmt.Errorf("slot %d: %w", i, err)
		}
	}
	return w, nil
}

// stop kills the worker and closes its slots.
func (w *worker) stop() {
	w.child.Kill()
	w.child.CloseConns()
}

// waitExit waits up to d for the worker to exit by itself.
func (w *worker) waitExit(d time.Duration) (*os.ProcessState, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.child.Exited():
		return w.child.ExitState(), true
	case <-t.C:
		return nil, false
	}
}

// stopGracefully asks the worker to quit over the control connection, as
// the dispatcher does, and reports how it ended.
func (w *worker) stopGracefully(d time.Duration) *os.ProcessState {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_ = w.child.Stop(ctx)
	return w.child.ExitState()
}

// lines keeps what the worker wrote on stdout and stderr (and go-plugin's
// messages), to show with a failure.
type lines struct {
	mu   sync.Mutex
	list []string
}

func (l *lines) Levels() []logrus.Level { return logrus.AllLevels }

func (l *lines) Fire(e *logrus.Entry) error {
	if e.Data["component"] == "go-plugin" {
		return nil
	}
	s := e.Message
	if s == "" {
		return nil
	}
	var extra []string
	for k, v := range e.Data {
		if strings.HasPrefix(k, "child.") {
			extra = append(extra, fmt.Sprintf("%s=%v", strings.TrimPrefix(k, "child."), v))
		}
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, " ") + ")"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.list) == 50 {
		l.list = l.list[1:]
	}
	l.list = append(l.list, s)
	return nil
}

// tail returns the last n lines.
func (l *lines) tail(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.list[max(0, len(l.list)-n):]...)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
