package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// The cgroup layout: below the dispatcher's own cgroup in each hierarchy it
// uses, one directory per Sandbox ("dispatcher-PID-N"), and below it one
// per worker ("wN"). Limits are set on the worker's directory; killing a
// worker's cell kills everything in its directory.

// hierarchy is one mounted cgroup hierarchy, seen from this process.
type hierarchy struct {
	v2          bool
	mount       string   // where it is mounted
	base        string   // the dispatcher's own cgroup in it (absolute path)
	controllers []string // v1: the controllers bound to it; v2: those available in base
	// kill: whether cells have cgroup.kill (v2, Linux 5.14): 0 not known
	// yet, 1 yes, 2 no. Looked up in the first cell killAll finds in use: the
	// root cgroup, which base may be, never has the file.
	kill atomic.Int32
}

// hasKill reports whether g, a cell of a v2 hierarchy, has cgroup.kill,
// looking once per hierarchy.
func (g group) hasKill() bool {
	h := g.h
	if !h.v2 {
		return false
	}
	if k := h.kill.Load(); k != 0 {
		return k == 1
	}
	switch {
	case fileExists(filepath.Join(g.dir, "cgroup.kill")):
		h.kill.Store(1)
		return true
	case fileExists(g.dir):
		h.kill.Store(2)
	}
	return false
}

func (h *hierarchy) String() string {
	if h.v2 {
		return "cgroup v2 at " + h.mount
	}
	return "cgroup v1 " + strings.Join(h.controllers, ",") + " at " + h.mount
}

func (h *hierarchy) has(ctrl string) bool { return slices.Contains(h.controllers, ctrl) }

// cgroupMachine is what the machine offers: the v2 hierarchy, if mounted,
// and the v1 hierarchies by controller.
type cgroupMachine struct {
	v2 *hierarchy
	v1 map[string]*hierarchy // controller (or "name=x") -> hierarchy
}

// probeCgroups reads /proc/self/mountinfo and /proc/self/cgroup.
func probeCgroups() (*cgroupMachine, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	return parseCgroups(mi, own), nil
}

// parseCgroups builds a cgroupMachine from the contents of mountinfo and
// /proc/self/cgroup. Hierarchies whose own cgroup lies outside the mounted
// subtree are left out.
func parseCgroups(mountinfo, self []byte) *cgroupMachine {
	m := &cgroupMachine{v1: map[string]*hierarchy{}}
	ownV2 := ""
	ownV1 := map[string]string{} // controller list as written in /proc/self/cgroup -> path
	for line := range strings.SplitSeq(string(self), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			// The leaf the dispatcher moved itself into: its pools go
			// beside it.
			ownV2 = strings.TrimSuffix(f[2], "/"+selfCgroup)
		} else {
			ownV1[f[1]] = f[2]
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		root, mnt := unescapeMount(pf[3]), unescapeMount(pf[4])
		switch qf[0] {
		case "cgroup2":
			if m.v2 != nil || ownV2 == "" {
				continue
			}
			if base, ok := within(mnt, root, ownV2); ok {
				m.v2 = &hierarchy{v2: true, mount: mnt, base: base}
			}
		case "cgroup":
			var ctrls []string
			for _, o := range strings.Split(qf[2], ",") {
				switch {
				case o == "rw" || o == "ro" || strings.HasPrefix(o, "release_agent=") ||
					o == "clone_children" || o == "noprefix" || o == "xattr" || o == "cpuset_v2_mode":
				default:
					ctrls = append(ctrls, o)
				}
			}
			path, ok := ownV1[strings.Join(ctrls, ",")]
			if !ok {
				continue
			}
			base, ok := within(mnt, root, path)
			if !ok {
				continue
			}
			h := &hierarchy{mount: mnt, base: base, controllers: ctrls}
			for _, c := range ctrls {
				if _, dup := m.v1[c]; !dup {
					m.v1[c] = h
				}
			}
		}
	}
	if m.v2 != nil {
		if b, err := os.ReadFile(filepath.Join(m.v2.base, "cgroup.controllers")); err == nil {
			m.v2.controllers = strings.Fields(string(b))
		}
	}
	return m
}

// within returns the directory of cgroup path own in a hierarchy whose
// subtree root is mounted at mnt.
func within(mnt, root, own string) (string, bool) {
	if root != "/" {
		if own != root && !strings.HasPrefix(own, root+"/") {
			return "", false
		}
		own = strings.TrimPrefix(own, root)
	}
	return filepath.Join(mnt, own), true
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// group is a cgroup directory the sandbox made in one hierarchy.
type group struct {
	h   *hierarchy
	dir string
}

func (g group) write(file, value string) error {
	err := os.WriteFile(filepath.Join(g.dir, file), []byte(value), 0)
	if err != nil {
		return fmt.Errorf("cgroup: write %q to %s: %w", value, filepath.Join(g.dir, file), err)
	}
	return nil
}

func (g group) read(file string) (string, error) {
	b, err := os.ReadFile(filepath.Join(g.dir, file))
	return string(b), err
}

// procs lists the processes in the group.
func (g group) procs() ([]int, error) {
	s, err := g.read("cgroup.procs")
	if err != nil {
		return nil, err
	}
	var pids []int
	for f := range strings.FieldsSeq(s) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// populated reports whether any process is left in the group (or, for v2,
// in its subtree).
func (g group) populated() (bool, error) {
	if g.h.v2 {
		s, err := g.read("cgroup.events")
		if err != nil {
			return false, err
		}
		return strings.Contains(s, "populated 1"), nil
	}
	pids, err := g.procs()
	return len(pids) > 0, err
}

// statField returns the value of key in a "key value" per line file such
// as memory.events or memory.oom_control, or 0.
func (g group) statField(file, key string) int64 {
	s, err := g.read(file)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(s, "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// killAll kills every process in the group and waits until it is empty.
// cgroup v2 has cgroup.kill; v1 loops over cgroup.procs (the freezer makes
// the loop race-free, but any v1 controller will do: a process forking as
// it is killed is caught on the next round).
func (g group) killAll(timeout time.Duration) error {
	// Most cells are empty by now (their worker was reaped): nothing to
	// kill, no cgroup.kill to write.
	if busy, err := g.populated(); errors.Is(err, fs.ErrNotExist) || err == nil && !busy {
		return nil
	}
	deadline := time.Now().Add(timeout)
	useKill := g.hasKill()
	frozen := false
	if !g.h.v2 && g.h.has("freezer") && g.write("freezer.state", "FROZEN") == nil {
		frozen = true
	}
	for d := time.Millisecond; ; d = min(2*d, 50*time.Millisecond) {
		if useKill {
			if err := g.write("cgroup.kill", "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		} else {
			pids, err := g.procs()
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			if frozen {
				// A frozen process dies of SIGKILL only once thawed.
				_ = g.write("freezer.state", "THAWED")
				frozen = false
			}
		}
		busy, err := g.populated()
		if errors.Is(err, fs.ErrNotExist) || err == nil && !busy {
			return nil
		}
		if err != nil {
			return err
		}
		if time.Now().After(deadline) {
			pids, _ := g.procs()
			return fmt.Errorf("cgroup %s: processes %v still running %s after being killed", g.dir, pids, timeout)
		}
		time.Sleep(d) // waiting on the kernel to finish the kills
	}
}

// signalAll sends SIGKILL to every process in the group once, without
// waiting: cgroup.kill on v2; on v1, the listed processes, frozen first if
// the freezer is there (a process forking meanwhile is caught by the
// killAll of Release).
func (g group) signalAll() {
	if g.hasKill() {
		_ = g.write("cgroup.kill", "1")
		return
	}
	frozen := !g.h.v2 && g.h.has("freezer") && g.write("freezer.state", "FROZEN") == nil
	pids, _ := g.procs()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if frozen {
		_ = g.write("freezer.state", "THAWED")
	}
}

// remove kills what is in the group and removes its directory.
func (g group) remove(timeout time.Duration) error {
	if err := g.killAll(timeout); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for d := time.Millisecond; ; d = min(2*d, 50*time.Millisecond) {
		err := syscall.Rmdir(g.dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		// EBUSY: the last exiting process is not quite gone yet.
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("cgroup: remove %s: %w", g.dir, err)
		}
		time.Sleep(d)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// sweep removes the cgroups of sandboxes whose dispatcher died without
// cleaning up (SIGKILL), killing any process still in them: a worker's
// escaped descendants do not outlive the next dispatcher start.
func sweep(h *hierarchy) {
	entries, err := os.ReadDir(h.base)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := stalePoolPID(e.Name())
		if !ok || !e.IsDir() || pid == os.Getpid() || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			// Only a pid that names no process is dead: EPERM is a live
			// dispatcher of another user, whose workers may share this
			// one's user (nobody) and could otherwise be killed.
			continue
		}
		pool := group{h: h, dir: filepath.Join(h.base, e.Name())}
		if subs, err := os.ReadDir(pool.dir); err == nil {
			for _, s := range subs {
				if s.IsDir() {
					_ = group{h: h, dir: filepath.Join(pool.dir, s.Name())}.remove(time.Second)
				}
			}
		}
		_ = pool.remove(time.Second)
	}
}

// poolPrefix starts the name of a Sandbox's cgroup directory.
const poolPrefix = "dispatcher-"

func stalePoolPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, poolPrefix)
	if !ok {
		return 0, false
	}
	p, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	return pid, err == nil && pid > 0
}
