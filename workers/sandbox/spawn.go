package sandbox

import (
	"fmt"
	"os/exec"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// The spawning thread starts the workers that start without the shim. A
// new process inherits no_new_privs from the thread that creates it, and
// the attribute cannot be set on every thread of a program that links cgo
// (AllThreadsSyscall refuses): one OS thread, locked for the life of the
// program, sets it and makes every such start. It never exits, which also
// keeps the parent-death signal (sent when the creating thread ends) for
// the dispatcher's own death.
var spawner struct {
	once sync.Once
	err  error
	reqs chan spawnRequest
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// spawn starts cmd from the spawning thread.
func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		ready := make(chan error)
		spawner.reqs = make(chan spawnRequest)
		go func() {
			// Never unlocked: the thread carries no_new_privs, which no
			// other goroutine may get.
			runtime.LockOSThread()
			if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
				ready <- fmt.Errorf("no_new_privs: %w", err)
				return // the locked thread ends with its goroutine
			}
			close(ready)
			for r := range spawner.reqs {
				r.done <- r.cmd.Start()
			}
		}()
		spawner.err = <-ready
	})
	if spawner.err != nil {
		return spawner.err
	}
	done := make(chan error, 1)
	spawner.reqs <- spawnRequest{cmd, done}
	return <-done
}
