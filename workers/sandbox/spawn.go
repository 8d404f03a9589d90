package sandbox

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sync"

	"github.com/childproc/dispatcher/workers/sandbox/shim"
	"golang.org/x/sys/unix"
)

// A spawning thread starts workers from one OS thread whose attributes
// they inherit, locked until stop (the direct one never stops): while it
// lives, the parent-death signal (sent when the creating thread ends) is
// kept for the dispatcher's own death. The Go runtime never hands a locked
// thread to other goroutines, and starts new threads from a clean template
// rather than from it, so its attributes stay its own.
type spawnThread struct {
	setup func() error // run once on the thread
	once  sync.Once
	err   error
	reqs  chan spawnRequest

	mu      sync.Mutex
	stopped bool
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	// direct starts the workers that start without the shim. A new process
	// inherits no_new_privs from the thread that creates it, and the
	// attribute cannot be set on every thread of a program that links cgo
	// (AllThreadsSyscall refuses).
	direct = &spawnThread{setup: func() error {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
		return nil
	}}
)

// newEmptyNet returns the thread that starts the sandboxes of one Sandbox
// of a root dispatcher without network: it is in a network namespace of
// its own with only a loopback device, which every worker of that Sandbox
// shares (creating and destroying one per worker is slow in the kernel),
// and no other Sandbox's workers see.
func newEmptyNet() *spawnThread {
	return &spawnThread{setup: func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("an empty network namespace: %w", err)
		}
		if err := shim.LoopbackUp(); err != nil {
			return fmt.Errorf("bring up the loopback device of the empty network namespace: %w", err)
		}
		return nil
	}}
}

// spawn starts cmd from the no_new_privs thread.
func spawn(cmd *exec.Cmd) error { return direct.start(cmd) }

// start starts cmd from the thread.
func (t *spawnThread) start(cmd *exec.Cmd) error {
	t.once.Do(func() {
		ready := make(chan error)
		t.reqs = make(chan spawnRequest)
		go func() {
			// Never unlocked: no other goroutine may run with the
			// thread's attributes.
			runtime.LockOSThread()
			if err := t.setup(); err != nil {
				ready <- err
				return // the locked thread ends with its goroutine
			}
			close(ready)
			for r := range t.reqs {
				r.done <- r.cmd.Start()
			}
		}()
		t.err = <-ready
	})
	if t.err != nil {
		return t.err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return errors.New("sandbox: closed")
	}
	done := make(chan error, 1)
	t.reqs <- spawnRequest{cmd, done}
	return <-done
}

// stop ends the thread, once the processes it started are gone: they get
// their parent-death signal when it ends.
func (t *spawnThread) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stopped = true
	t.once.Do(func() { t.err = errors.New("sandbox: closed") }) // never started
	if t.err == nil {
		close(t.reqs)
	}
}
