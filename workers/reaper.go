package workers

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper finds the descendants of workers that escaped them, on a machine
// where no cgroup holds a worker's process tree (Cell): a process that
// left its worker's process group and session, and whose parent died,
// would otherwise be adopted by init and outlive everything. NewReaper
// makes the calling process a child subreaper (PR_SET_CHILD_SUBREAPER), so
// such orphans become its children instead; Sweep kills and reaps every
// child it did not start itself.
//
// It is process-wide: a program uses at most one, and every child it
// starts while the Reaper exists must go through Track (Config.Reaper does
// it for workers), or a Sweep kills it.
type Reaper struct {
	mu    sync.RWMutex // Track and Hold hold it to read, Sweep to write
	kmu   sync.Mutex   // guards known among concurrent Tracks
	known map[int]int  // children started through Track and not yet forgotten
}

// NewReaper makes the calling process a child subreaper.
func NewReaper() (*Reaper, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("workers: become a child subreaper: %w", err)
	}
	return &Reaper{known: make(map[int]int)}, nil
}

// Track runs start, which starts a child process and returns its pid, and
// records the child as one of this process's own: Sweep leaves it alone
// until Forget.
func (r *Reaper) Track(start func() (int, error)) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pid, err := start()
	if err != nil {
		return err
	}
	r.kmu.Lock()
	r.known[pid]++ // counted: a pid reaped and reused before its Forget
	r.kmu.Unlock()
	return nil
}

// Forget drops a child that was reaped.
func (r *Reaper) Forget(pid int) {
	r.kmu.Lock()
	if r.known[pid]--; r.known[pid] <= 0 {
		delete(r.known, pid)
	}
	r.kmu.Unlock()
}

// Hold runs f, which may start and reap children of its own, with no
// Sweep meanwhile.
func (r *Reaper) Hold(f func()) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	f()
}

// Sweep kills every child of this process that it did not start through
// Track (orphaned descendants of workers), and reaps them within a bound.
// It returns how many it killed.
func (r *Reaper) Sweep() int {
	r.mu.Lock()
	var strays []int
	for _, pid := range childPIDs(os.Getpid()) {
		r.kmu.Lock()
		ours := r.known[pid] > 0
		r.kmu.Unlock()
		// A worker reaped and forgotten since childPIDs read it is not a
		// stray: only a process that is still a child is.
		if !ours && parentOf(pid) == os.Getpid() {
			strays = append(strays, pid)
		}
	}
	r.mu.Unlock()
	for _, pid := range strays {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range strays {
		go reap(pid)
	}
	return len(strays)
}

// reap waits for a killed stray, which only its (new) parent, this
// process, can do, for at most a few seconds.
func reap(pid int) {
	deadline := time.Now().Add(5 * time.Second)
	for d := time.Millisecond; time.Now().Before(deadline); d = min(2*d, 100*time.Millisecond) {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid || err != nil {
			return
		}
		time.Sleep(d)
	}
}

// parentOf returns pid's parent, or 0 if pid is gone.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}
