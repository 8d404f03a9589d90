package workers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

var (
	// ErrClosed reports a request made after Close.
	ErrClosed = errors.New("workers: pool closed")
	// ErrNoWorker reports that no worker could take the request: every
	// attempt found its worker dead before it read anything.
	ErrNoWorker = errors.New("workers: no live worker took the request")
)

// ExitError reports a request that failed because its worker died or broke
// the protocol. The worker has been killed and will be replaced.
type ExitError struct {
	Path   string           // worker binary
	PID    int              // worker process
	State  *os.ProcessState // how it ended; nil if unknown
	Stderr []string         // its last stderr lines
	Err    error            // what the dispatcher saw: ipc.ErrPeerClosed, *ipc.ProtocolError, ...
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("worker %q pid %d %s: %v", e.Path, e.PID, e.How(), e.Err)
}

func (e *ExitError) Unwrap() error { return e.Err }

// How describes how the process ended: "exited with status 3", "killed by
// signal segmentation fault", or "was killed" when the dispatcher killed it.
func (e *ExitError) How() string {
	return describeExit(e.State)
}

func describeExit(st *os.ProcessState) string {
	if st == nil {
		return "ended"
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
		return st.String()
	case ws.Signaled():
		s := "killed by signal " + strings.ToUpper(ws.Signal().String()[:1]) + ws.Signal().String()[1:]
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	default:
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	}
}

// TimeoutError reports a request that outlived Config.Timeout. Its worker's
// process group has been killed. It matches context.DeadlineExceeded.
type TimeoutError struct {
	Path    string
	PID     int
	Timeout time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("worker %q pid %d did not answer within %s; killed", e.Path, e.PID, e.Timeout)
}

func (e *TimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }
