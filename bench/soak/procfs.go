package main

// What the soak reads from /proc and the cgroup file systems: resident
// memory, open descriptors, the children of a process and their states,
// and the cgroup cells a dispatcher leaves behind.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/childproc/dispatcher/internal/chaos"
	"golang.org/x/sys/unix"
)

// procStat is what /proc/PID/stat tells about one process.
type procStat struct {
	pid       int
	comm      string
	state     byte // R, S, D, Z, T, ...
	ppid      int
	startTime uint64 // clock ticks after boot: with pid, it names the process
}

// readStat parses /proc/PID/stat.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	// comm is in parentheses and may contain anything, ')' included.
	lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if lp < 0 || rp < lp {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	rest := strings.Fields(s[rp+1:])
	// rest[0] is field 3 (state); starttime is field 22.
	if len(rest) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ppid, err := strconv.Atoi(rest[1])
	if err != nil {
		return procStat{}, err
	}
	st, err := strconv.ParseUint(rest[19], 10, 64)
	if err != nil {
		return procStat{}, err
	}
	return procStat{pid: pid, comm: s[lp+1 : rp], state: rest[0][0], ppid: ppid, startTime: st}, nil
}

// allPIDs lists the processes in /proc.
func allPIDs() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	pids := make([]int, 0, len(entries))
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// childrenOf returns the processes whose parent is ppid.
func childrenOf(ppid int) []procStat {
	var out []procStat
	for _, pid := range allPIDs() {
		st, err := readStat(pid)
		if err == nil && st.ppid == ppid {
			out = append(out, st)
		}
	}
	return out
}

// alive reports whether the process pid started at startTime still exists,
// and its state.
func alive(pid int, startTime uint64) (procStat, bool) {
	st, err := readStat(pid)
	if err != nil || st.startTime != startTime {
		return procStat{}, false
	}
	return st, true
}

// openFDs counts the open file descriptors of pid.
func openFDs(pid int) (int, error) {
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0, err
	}
	return len(entries), nil
}

// processesRunning returns the processes whose executable is exe.
func processesRunning(exe string) []procStat {
	var out []procStat
	for _, pid := range allPIDs() {
		if l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil && l == exe {
			if st, err := readStat(pid); err == nil {
				out = append(out, st)
			}
		}
	}
	return out
}

// becomeSubreaper makes the soak the reaper of orphans among its
// descendants: a worker that outlives its dispatcher becomes the soak's
// child, where it is found, counted and killed.
func becomeSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// reapOrphans kills and reaps the soak's children that are not in known
// (processes it did not start directly: descendants of a dispatcher
// reparented to it) and describes them.
func reapOrphans(known map[int]bool) []string {
	var found []string
	for _, st := range childrenOf(os.Getpid()) {
		if known[st.pid] {
			continue
		}
		found = append(found, fmt.Sprintf("pid %d (%s, state %c)", st.pid, st.comm, st.state))
		_ = unix.Kill(st.pid, unix.SIGKILL)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(st.pid, &ws, 0, nil)
	}
	return found
}

// cgroupDirs returns the directories of the soak's own cgroups, in every
// mounted hierarchy (a dispatcher it starts inherits them and makes its
// cells below them).
func cgroupDirs() []string {
	var dirs []string
	for _, g := range chaos.OwnCgroups() {
		if fi, err := os.Stat(g.Dir); err == nil && fi.IsDir() && !slices.Contains(dirs, g.Dir) {
			dirs = append(dirs, g.Dir)
		}
	}
	return dirs
}

// leftoverCells returns the cgroup directories the dispatcher pid made
// ("dispatcher-PID-...") that still exist.
func leftoverCells(pid int) []string {
	var out []string
	for _, d := range cgroupDirs() {
		m, _ := filepath.Glob(filepath.Join(d, "dispatcher-"+strconv.Itoa(pid)+"-*"))
		out = append(out, m...)
	}
	return out
}

// dirEntries lists what is left in dir, recursively, as paths relative to
// it.
func dirEntries(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out, err
}

// tcpConns counts the accepted TCP connections on local port that still
// hold a descriptor (ESTABLISHED or CLOSE_WAIT), from /proc/net/tcp and
// tcp6.
func tcpConns(port int) int {
	n := 0
	want := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			// sl local_address rem_address st ...
			if len(fs) > 3 && strings.HasSuffix(fs[1], want) && (fs[3] == "01" || fs[3] == "08") {
				n++
			}
		}
	}
	return n
}
