package workers

import (
	"errors"
	"os/exec"
)

// ErrOutOfMemory marks the error of a request whose worker was killed for
// going over its memory limit (an *ExitError wraps it).
var ErrOutOfMemory = errors.New("out of memory: the worker went over its memory limit and was killed")

// Sandbox confines worker processes: identity, limits, namespaces, and the
// guarantee that whatever a worker starts dies with it. Package
// workers/sandbox implements it.
type Sandbox interface {
	// Prepare adjusts the command of a worker about to start (it may
	// replace Path and Args with a wrapper that confines the process and
	// then runs the worker) and returns the worker's Cell. socketDir is the
	// pool's directory in which each worker gets its private control
	// socket directory. An error fails that start.
	Prepare(cmd *exec.Cmd, socketDir string) (Cell, error)
}

// Cell is the confinement of one worker process.
type Cell interface {
	// Start starts the command Prepare adjusted (exec.Cmd.Start, made
	// however the confinement needs it made).
	Start(cmd *exec.Cmd) error
	// Kill sends SIGKILL to every process in the cell, wherever it moved
	// in the process tree, without waiting for them to die. Safe to call
	// at any time, also concurrently with Release or after it.
	Kill()
	// Release kills every process left in the cell, including those that
	// left the worker's process group (setsid, double fork), and removes
	// the cell. The pool calls it once the worker has exited (or failed to
	// start); later calls return the first result.
	Release() error
	// OutOfMemory reports whether the cell's memory limit killed one of its
	// processes. It stays valid after Release.
	OutOfMemory() bool
	// ReapsOrphans reports whether the worker runs under an init of its own
	// (a PID namespace) that reaps its orphans: none is ever adopted by the
	// dispatcher, whose Reaper then need not sweep when the worker exits.
	ReapsOrphans() bool
}
