// Package sandbox confines worker processes: it implements workers.Sandbox.
//
// No untrusted instruction runs before a worker's confinement is complete.
// With the default confinement, optionally a User, and a cgroup v2 cell (or
// none), the dispatcher starts the worker directly: the kernel creates the
// process inside its cell (clone3 with CLONE_INTO_CGROUP), from a thread
// that has no_new_privs set, which the process inherits, and with its
// identity changed before the worker binary is executed. Every other
// confinement (namespaces, an open files limit, a checksum, cgroup v1
// cells) starts the worker through a shim: the executable that started the
// dispatcher (/proc/self/exe), run again in a mode that confines itself and
// then executes the worker (package shim, which this one links: it runs
// from that package's init). Both ways are tried once by New.
//
// What every worker gets, whatever the Options:
//   - no_new_privs: neither it nor its descendants gain privileges through
//     set-user-ID binaries or file capabilities;
//   - a cell: a cgroup of its own (v2, or v1 where that is all the machine
//     has), so that when the worker exits, is recycled or is killed, every
//     process it started dies with it, even one that left its process group
//     with setsid or a double fork. On a machine without a writable cgroup
//     hierarchy, New says so in Warnings and workers fall back to their
//     process group.
//
// The Options add an identity (User), limits (memory, processes, CPU, open
// files), a sandbox (Namespaces: a user namespace whose root is an
// unprivileged user outside, the other namespaces, a minimal root file
// system planned from the worker binary (root.go) and built by the shim
// (package shim), and a seccomp filter), and a checksum of the worker binary. New
// refuses options the machine cannot honour with an *UnsupportedError
// naming what is missing; it never runs a worker less confined than asked.
//
// The sandbox does not own the worker's environment (workers.Config.Env) or
// its control socket (package ipc unlinks it once connected, so no other
// process can connect to it).
package sandbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/workers"
	"github.com/childproc/dispatcher/workers/sandbox/shim"
	"golang.org/x/sys/unix"
)

// Options says how to confine workers. The zero value confines with what
// every worker gets (see the package documentation).
type Options struct {
	// User is the identity workers run as: "USER[:GROUP]", names or
	// numbers. Without GROUP, the user's primary group; supplementary
	// groups are dropped. Requires running as root. If empty, the
	// dispatcher's identity.
	User string
	// MemoryLimit caps the memory (bytes, page cache and kernel memory
	// included, no swap) of each worker and everything it starts; past it
	// the kernel kills a process of the cell (the pool logs "out of
	// memory"). If zero, no limit.
	MemoryLimit int64
	// PidsLimit caps the number of tasks (processes and threads: a Go
	// worker needs about ten) in each worker's cell. If zero, no limit.
	PidsLimit int64
	// CPULimit caps each cell's CPU time, in cores (0.5 is half of one
	// core). If zero, no limit.
	CPULimit float64
	// NoFile is each worker process's limit on open files (RLIMIT_NOFILE,
	// soft and hard). If zero, inherited.
	NoFile uint64
	// Namespaces runs each worker in a sandbox: new user, PID, mount, IPC,
	// UTS, cgroup and network namespaces (see NetworkShared), a minimal
	// root file system (a tmpfs holding the binary, read-only, what loading
	// it needs, Binds, a synthetic /dev, its own /proc and a private /tmp),
	// no capabilities, and a seccomp filter. Root in the sandbox is the
	// User outside (when the dispatcher is root: nobody, 65534, if User is
	// empty), else the dispatcher's own identity. Needs root, or a kernel
	// that lets ordinary users create user namespaces.
	Namespaces bool
	// AllowNetwork keeps the host's network namespace when Namespaces is
	// set. If false, a sandboxed worker has only a loopback device: the
	// same empty network namespace for every worker when the dispatcher
	// is root, one of its own otherwise.
	AllowNetwork bool
	// Binds are more host paths, files or directories, bound read-only
	// into the sandbox.
	Binds []Bind
	// TmpSize is the size in bytes of the sandbox's /tmp and of its
	// /dev/shm (tmpfs, charged to the cell's memory). If zero,
	// DefaultTmpSize.
	TmpSize int64
	// Checksum is the expected digest of the worker binary, "sha256:HEX".
	// New refuses a binary that differs, and each worker start hashes the
	// very file it then executes. If empty, no check.
	Checksum string
	// Shim is the executable that runs in shim mode: a program that links
	// package shim. If empty, /proc/self/exe (this program, which does).
	Shim string
}

// DefaultTmpSize is the size of a sandbox's /tmp when Options.TmpSize is
// zero.
const DefaultTmpSize = 64 << 20

// DefaultPidsLimit is the tasks limit the dispatcher gives sandboxed
// workers unless told otherwise: a fork bomb stops there.
const DefaultPidsLimit = 256

// UnsupportedError reports an option that this machine (or the dispatcher's
// privileges) cannot honour.
type UnsupportedError struct {
	Option  string // the Options field: "MemoryLimit", "Namespaces", ...
	Missing string // what is missing
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("sandbox: %s cannot be honoured here: %s", e.Option, e.Missing)
}

// ChecksumError reports a worker binary whose digest is not the expected
// one.
type ChecksumError struct {
	Path      string
	Want, Got string // "sha256:HEX"
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("worker binary %s has checksum %s, not the expected %s: refusing to run it", e.Path, e.Got, e.Want)
}

// Sandbox confines the workers of one binary. It implements
// workers.Sandbox.
type Sandbox struct {
	path     string
	opts     Options
	shim     string
	cred     *syscall.Credential
	checksum string // hex, or empty
	groups   []group
	memory   *group // where the memory limit is set (for OOM detection)
	canKill  bool   // some group kills escapees
	direct   bool   // workers start without the shim (see the package doc)
	seq      atomic.Int64
	notes    []string

	// With Namespaces: who root of the sandbox is outside, whether
	// workers start from the thread in the shared empty network
	// namespace, and the binds of the root per worker binary.
	outerUID, outerGID uint32
	ambient            []uintptr    // every capability: the shim keeps them across its execve
	filter             []byte       // the workers' seccomp program (shim.Filter)
	net                *spawnThread // a root dispatcher's, without network: starts the workers in the sandbox's empty network namespace
	rootMu             sync.Mutex
	roots              map[rootKey][]shim.Mount
	warnings           []string

	closeOnce sync.Once
	closeErr  error
}

var _ workers.Sandbox = (*Sandbox)(nil)

// New checks that the machine can honour opts for the worker binary at
// path, creates the sandbox's cgroups, and runs the shim once to prove the
// confinement works. Close removes what it made.
func New(path string, opts Options) (*Sandbox, error) {
	s := &Sandbox{path: path, opts: opts, shim: opts.Shim}
	if s.shim == "" {
		s.shim = "/proc/self/exe"
	}
	if err := s.checkOptions(); err != nil {
		return nil, err
	}
	if err := s.verifyChecksum(); err != nil {
		return nil, err
	}
	if err := s.makeCgroups(); err != nil {
		s.Close()
		return nil, err
	}
	if s.directPossible() {
		s.direct = true
		if err := s.trial(); err != nil {
			// A kernel without clone3 or CLONE_INTO_CGROUP (before Linux
			// 5.7), or a seccomp policy refusing clone3: the shim does it.
			s.direct = false
			s.notes = append(s.notes, "started through the shim ("+strings.TrimPrefix(err.Error(), "sandbox: ")+")")
		} else if len(s.groups) > 0 {
			s.notes = append(s.notes, "started directly into the cell")
		} else {
			s.notes = append(s.notes, "started directly")
		}
	}
	if !s.direct {
		if err := s.trial(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// directPossible reports whether the options and the cgroups allow workers
// to start without the shim.
func (s *Sandbox) directPossible() bool {
	o := s.opts
	if o.Namespaces || o.NoFile > 0 || s.checksum != "" {
		return false
	}
	for _, g := range s.groups {
		if !g.h.v2 || len(s.groups) > 1 {
			return false
		}
	}
	return true
}

func (s *Sandbox) checkOptions() error {
	o := s.opts
	root := os.Geteuid() == 0
	switch {
	case o.MemoryLimit < 0, o.PidsLimit < 0, o.CPULimit < 0, math.IsNaN(o.CPULimit), math.IsInf(o.CPULimit, 0):
		return errors.New("sandbox: limits must not be negative")
	case o.AllowNetwork && !o.Namespaces:
		return errors.New("sandbox: AllowNetwork only makes sense with Namespaces")
	}
	s.notes = append(s.notes, "no_new_privs")
	if o.User != "" {
		cred, err := lookupUser(o.User)
		if err != nil {
			return err
		}
		if !root && (int(cred.Uid) != os.Geteuid() || int(cred.Gid) != os.Getegid()) {
			return &UnsupportedError{"User", "switching to another user needs the dispatcher to run as root"}
		}
		s.cred = cred
		s.notes = append(s.notes, fmt.Sprintf("user %d:%d", cred.Uid, cred.Gid))
	}
	if o.NoFile > 0 {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && o.NoFile > lim.Max && !root {
			return &UnsupportedError{"NoFile", fmt.Sprintf("%d is above the dispatcher's own hard limit %d, which only root may raise", o.NoFile, lim.Max)}
		}
		s.notes = append(s.notes, fmt.Sprintf("nofile %d", o.NoFile))
	}
	if o.Namespaces {
		if err := s.checkNamespaces(root); err != nil {
			return err
		}
	}
	if o.Checksum != "" {
		if err := ParseChecksum(o.Checksum); err != nil {
			return fmt.Errorf("sandbox: checksum %q: %w", o.Checksum, err)
		}
		s.checksum = strings.ToLower(strings.TrimPrefix(o.Checksum, "sha256:"))
		s.notes = append(s.notes, "checksum sha256:"+s.checksum[:12]+"…")
	}
	return nil
}

// checkNamespaces checks what Namespaces needs, and decides who root of
// the sandbox is outside it.
func (s *Sandbox) checkNamespaces(root bool) error {
	o := s.opts
	for _, ns := range []string{"user", "pid", "mnt", "ipc", "uts", "net", "cgroup"} {
		if !fileExists("/proc/self/ns/" + ns) {
			return &UnsupportedError{"Namespaces", "the kernel has no " + ns + " namespaces (/proc/self/ns/" + ns + ")"}
		}
	}
	if !shim.FilterSupported() {
		return &UnsupportedError{"Namespaces", "no seccomp filter for GOARCH " + runtime.GOARCH}
	}
	if err := unix.MountSetattr(-1, "", 0, &unix.MountAttr{}); errors.Is(err, unix.ENOSYS) {
		return &UnsupportedError{"Namespaces", "the kernel lacks mount_setattr (Linux 5.12)"}
	}
	if o.TmpSize < 0 {
		return errors.New("sandbox: TmpSize must not be negative")
	}
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return &UnsupportedError{"Namespaces", "user namespaces are disabled (/proc/sys/user/max_user_namespaces is 0)"}
	}
	if !root {
		for file, want := range map[string]string{
			"/proc/sys/kernel/unprivileged_userns_clone":             "1", // Debian's switch
			"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "0", // Ubuntu's
		} {
			if b, err := os.ReadFile(file); err == nil && strings.TrimSpace(string(b)) != want {
				return &UnsupportedError{"Namespaces", fmt.Sprintf("the kernel does not let ordinary users create user namespaces (%s is %s): run the dispatcher as root, or set it to %s", file, strings.TrimSpace(string(b)), want)}
			}
		}
	}
	switch {
	case s.cred != nil:
		s.outerUID, s.outerGID = s.cred.Uid, s.cred.Gid
	case root:
		s.outerUID, s.outerGID = nobody, nobody
	default:
		s.outerUID, s.outerGID = uint32(os.Geteuid()), uint32(os.Getegid())
	}
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return &UnsupportedError{"Namespaces", "the last capability's number (/proc/sys/kernel/cap_last_cap): " + err.Error()}
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || last < 0 || last > 63 {
		return &UnsupportedError{"Namespaces", fmt.Sprintf("/proc/sys/kernel/cap_last_cap reads %q", b)}
	}
	if s.filter, err = shim.Filter(o.AllowNetwork); err != nil {
		return &UnsupportedError{"Namespaces", "the seccomp filter: " + err.Error()}
	}
	s.ambient = make([]uintptr, last+1)
	for i := range s.ambient {
		s.ambient[i] = uintptr(i)
	}
	// Root can make one empty network namespace for all workers; an
	// ordinary user's workers each get theirs with their user namespace.
	if root && !o.AllowNetwork {
		s.net = newEmptyNet()
	}
	netNote := map[bool]string{true: "a network namespace shared by this function's workers", false: "a network namespace each"}[s.net != nil]
	if o.AllowNetwork {
		netNote = "the host's network"
	}
	size := o.TmpSize
	if size == 0 {
		size = DefaultTmpSize
	}
	s.notes = append(s.notes,
		fmt.Sprintf("sandbox: root in it is uid %d outside, with no capabilities", s.outerUID),
		"namespaces user,pid,mount,ipc,uts,cgroup; "+netNote,
		fmt.Sprintf("a minimal read-only root, /tmp and /dev/shm of %d MiB", size>>20),
		"seccomp filter")
	return nil
}

// nobody is the uid and gid root of the sandbox is, outside it, when the
// dispatcher runs as root and no User is set.
const nobody = 65534

// ParseChecksum checks the syntax of a "sha256:HEX" checksum.
func ParseChecksum(s string) error {
	hexSum, ok := strings.CutPrefix(s, "sha256:")
	if b, err := hex.DecodeString(hexSum); !ok || err != nil || len(b) != sha256.Size {
		return errors.New("want sha256: followed by 64 hex digits")
	}
	return nil
}

func (s *Sandbox) verifyChecksum() error {
	if s.checksum == "" {
		return nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("sandbox: checksum: %w", err)
	}
	defer f.Close()
	got, err := shim.SHA256(f)
	if err != nil {
		return fmt.Errorf("sandbox: checksum of %s: %w", s.path, err)
	}
	if got != s.checksum {
		return &ChecksumError{Path: s.path, Want: "sha256:" + s.checksum, Got: "sha256:" + got}
	}
	return nil
}

// lookupUser resolves "USER[:GROUP]".
func lookupUser(spec string) (*syscall.Credential, error) {
	name, grp, hasGroup := strings.Cut(spec, ":")
	if name == "" || hasGroup && grp == "" {
		return nil, fmt.Errorf("sandbox: user %q: want USER[:GROUP]", spec)
	}
	var uid, gid uint64
	var err error
	if uid, err = strconv.ParseUint(name, 10, 32); err != nil {
		u, lerr := user.Lookup(name)
		if lerr != nil {
			return nil, &UnsupportedError{"User", lerr.Error()}
		}
		uid, _ = strconv.ParseUint(u.Uid, 10, 32)
		gid, _ = strconv.ParseUint(u.Gid, 10, 32)
	} else if u, lerr := user.LookupId(name); lerr == nil {
		gid, _ = strconv.ParseUint(u.Gid, 10, 32)
	} else if !hasGroup {
		return nil, &UnsupportedError{"User", fmt.Sprintf("user %s has no entry in the user database: give the group too (UID:GID)", name)}
	}
	if hasGroup {
		if gid, err = strconv.ParseUint(grp, 10, 32); err != nil {
			g, lerr := user.LookupGroup(grp)
			if lerr != nil {
				return nil, &UnsupportedError{"User", lerr.Error()}
			}
			gid, _ = strconv.ParseUint(g.Gid, 10, 32)
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// makeCgroups creates the sandbox's cgroup in each hierarchy it needs,
// and decides where each limit is set.
func (s *Sandbox) makeCgroups() error {
	m, err := probeCgroups()
	if err != nil {
		m = &cgroupMachine{v1: map[string]*hierarchy{}}
	}
	name := fmt.Sprintf("%s%d-%08x", poolPrefix, os.Getpid(), rand.Uint32())
	made := map[*hierarchy]*group{}
	failed := map[*hierarchy]string{}
	var why []string // why hierarchies could not be used
	mk := func(h *hierarchy) *group {
		if g, ok := made[h]; ok {
			return g
		}
		sweep(h)
		dir := filepath.Join(h.base, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			failed[h] = fmt.Sprintf("cannot create a cgroup in %s (%v)", h.base, err)
			why = append(why, failed[h])
			made[h] = nil
			return nil
		}
		g := &group{h: h, dir: dir}
		s.groups = append(s.groups, *g)
		made[h] = g
		return g
	}
	var v2 *group
	if m.v2 != nil {
		v2 = mk(m.v2)
		if v2 != nil && fileExists(filepath.Join(v2.dir, "cgroup.kill")) {
			s.canKill = true
		}
	} else {
		why = append(why, "no cgroup v2 hierarchy is mounted")
	}
	limits := []struct {
		option, ctrl string
		on           bool
	}{
		{"MemoryLimit", "memory", s.opts.MemoryLimit > 0},
		{"PidsLimit", "pids", s.opts.PidsLimit > 0},
		{"CPULimit", "cpu", s.opts.CPULimit > 0},
	}
	for _, l := range limits {
		if !l.on {
			continue
		}
		var reasons []string
		var where *group
		if v2 != nil && m.v2.has(l.ctrl) {
			if err := enableController(m.v2.base, v2.dir, l.ctrl); err != nil {
				reasons = append(reasons, err.Error())
			} else {
				where = v2
			}
		} else if m.v2 != nil {
			reasons = append(reasons, fmt.Sprintf("cgroup v2 does not offer it in %s", m.v2.base))
		} else {
			reasons = append(reasons, "no cgroup v2 hierarchy is mounted")
		}
		if where == nil {
			if h := m.v1[l.ctrl]; h != nil {
				if where = mk(h); where == nil {
					reasons = append(reasons, failed[h])
				}
			} else {
				reasons = append(reasons, "no cgroup v1 hierarchy has it")
			}
		}
		if where == nil {
			return &UnsupportedError{l.option, fmt.Sprintf("it needs the %s cgroup controller: %s", l.ctrl, strings.Join(reasons, "; "))}
		}
		s.notes = append(s.notes, fmt.Sprintf("%s limit in %s", l.ctrl, where.h))
		if l.ctrl == "memory" {
			s.memory = where
		}
	}
	if !s.canKill {
		// Without cgroup.kill, a v1 hierarchy holds the cell: the freezer's
		// if there is one, else any controller the limits already use.
		if h := m.v1["freezer"]; h != nil {
			mk(h)
		}
		for _, g := range s.groups {
			if !g.h.v2 {
				s.canKill = true
			}
		}
		if !s.canKill {
			for _, c := range []string{"pids", "memory", "cpu"} {
				if h := m.v1[c]; h != nil && mk(h) != nil {
					s.canKill = true
					break
				}
			}
		}
	}
	if s.canKill {
		var where []string
		for _, g := range s.groups {
			where = append(where, g.h.String())
		}
		s.notes = append(s.notes, "cell cgroups in "+strings.Join(where, " and "))
	} else {
		s.warnings = append(s.warnings, "no cgroup can hold the workers ("+strings.Join(why, "; ")+
			"): a process a worker detaches with setsid or a double fork may outlive it")
	}
	return nil
}

// enableController makes ctrl available to the children of pool (a cgroup
// v2 directory below base).
func enableController(base, pool, ctrl string) error {
	has := func(dir string) bool {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
		return strings.Contains(" "+string(bytes.TrimSpace(b))+" ", " "+ctrl+" ")
	}
	if !has(base) {
		err := os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+"+ctrl), 0)
		if errors.Is(err, syscall.EBUSY) && moveSelfToLeaf(base) == nil {
			// A cgroup holding processes cannot hand domain controllers
			// (memory) to its children: the dispatcher was alone in its
			// cgroup (a systemd service with Delegate=yes, a container)
			// and moved to a leaf of its own. Try again.
			err = os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+"+ctrl), 0)
		}
		if err != nil {
			return fmt.Errorf("cgroup v2 cannot delegate it below %s, which also holds other processes (run the dispatcher in a cgroup of its own, e.g. a systemd service with Delegate=yes): %v", base, err)
		}
	}
	if err := os.WriteFile(filepath.Join(pool, "cgroup.subtree_control"), []byte("+"+ctrl), 0); err != nil {
		return fmt.Errorf("cgroup v2: enable it in %s: %v", pool, err)
	}
	return nil
}

// selfCgroup is the leaf the dispatcher moves itself into when its own
// cgroup must delegate controllers to the pools' (cgroup v2's "no internal
// processes" rule).
const selfCgroup = "dispatcher.self"

// moveSelfToLeaf moves this process into base/dispatcher.self if it is the
// only process in base; otherwise it leaves everything as it is.
func moveSelfToLeaf(base string) error {
	procs, err := (group{dir: base}).procs()
	if err != nil {
		return err
	}
	if len(procs) != 1 || procs[0] != os.Getpid() {
		return fmt.Errorf("%s holds other processes: %v", base, procs)
	}
	leaf := filepath.Join(base, selfCgroup)
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
}

// Dirs returns the sandbox's cgroup directories, one per hierarchy it uses.
func (s *Sandbox) Dirs() []string {
	var d []string
	for _, g := range s.groups {
		d = append(d, g.dir)
	}
	return d
}

// Notes describes the confinement, for the startup log.
func (s *Sandbox) Notes() []string { return s.notes }

// Warnings lists what the machine lacks for the default confinement.
func (s *Sandbox) Warnings() []string { return s.warnings }

// Close removes the sandbox's cgroups, killing anything left in them. Call
// it after the pool using the sandbox is closed. Later calls return the
// first result.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		for _, g := range s.groups {
			errs = append(errs, g.remove(5*time.Second))
		}
		if s.net != nil {
			s.net.stop()
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Cell is one worker's confinement: its cgroups. It implements
// workers.Cell.
type Cell struct {
	groups []group
	memory *group

	// Started directly (see the package doc): from the spawning thread,
	// into cgroupFD's cgroup (if >= 0), with the identity cred (if set).
	spawn    bool
	cgroupFD int
	cred     *syscall.Credential // the sandbox's User, or nil
	poolDir  string

	owner  *syscall.Credential // who gets the socket directory, or nil
	ns     bool                // a sandbox: joins its cell through descriptors
	uidMap string              // with ns: the user namespace's maps, written after the shim's execve
	gidMap string
	net    *spawnThread // if set, starts it in the sandbox's empty network namespace
	root   []shim.Mount // binds the dispatcher clones for the shim

	once    sync.Once
	err     error
	oom     atomic.Bool
	removed atomic.Bool
}

var _ workers.Cell = (*Cell)(nil)

// Prepare implements workers.Sandbox: it makes the worker's cell and turns
// cmd into a command that starts the shim, which confines itself and runs
// the original command.
func (s *Sandbox) Prepare(cmd *exec.Cmd, socketDir string) (workers.Cell, error) {
	return s.prepare(cmd, socketDir, false)
}

func (s *Sandbox) prepare(cmd *exec.Cmd, socketDir string, trial bool) (*Cell, error) {
	name := "w" + strconv.FormatInt(s.seq.Add(1), 10)
	if trial {
		name = "trial"
	}
	c := &Cell{cgroupFD: -1}
	sp := &shim.Spec{
		Path: cmd.Path, Args: cmd.Args, NoFile: s.opts.NoFile,
		Namespaces: s.opts.Namespaces,
		Checksum:   s.checksum, PoolDir: socketDir, Trial: trial,
	}
	// Who the worker is outside: it must reach its own socket directory
	// (go-plugin makes it 0700 and it is given to the worker); it still
	// cannot list the others.
	var owner *syscall.Credential
	if s.opts.Namespaces {
		path, err := filepath.Abs(cmd.Path)
		if err != nil {
			return nil, err
		}
		if sp.Root, err = s.root(path, cmd.Args[1:], envValue(cmd.Env, "PATH")); err != nil {
			var ue *UnsupportedError
			if errors.As(err, &ue) {
				return nil, err
			}
			return nil, &UnsupportedError{"Namespaces", "the worker's root file system: " + err.Error()}
		}
		sp.Path, sp.OuterUID, sp.TmpSize, sp.Filter = path, s.outerUID, s.opts.TmpSize, s.filter
		sp.LastCap = len(s.ambient) - 1
		if sp.TmpSize == 0 {
			sp.TmpSize = DefaultTmpSize
		}
		sp.OwnNet = s.net == nil && !s.opts.AllowNetwork
		c.ns, c.net = true, s.net
		c.uidMap, c.gidMap = fmt.Sprintf("0 %d 1\n", s.outerUID), fmt.Sprintf("0 %d 1\n", s.outerGID)
		if os.Geteuid() == 0 {
			c.root = sp.Root // cloned at each start (startSandboxed)
		}
		if int(s.outerUID) != os.Geteuid() || int(s.outerGID) != os.Getegid() {
			owner = &syscall.Credential{Uid: s.outerUID, Gid: s.outerGID}
		}
	} else if s.cred != nil {
		sp.User, sp.UID, sp.GID = true, s.cred.Uid, s.cred.Gid
		owner = s.cred
	}
	if owner != nil && socketDir != "" {
		if fi, err := os.Stat(socketDir); err != nil || fi.Mode().Perm() != 0o711 {
			if err := os.Chmod(socketDir, 0o711); err != nil {
				return nil, err
			}
		}
		if err := searchable(filepath.Dir(socketDir), owner.Uid, owner.Gid); err != nil {
			return nil, err
		}
	}
	c.owner, c.poolDir = owner, socketDir
	for _, pg := range s.groups {
		g := group{h: pg.h, dir: filepath.Join(pg.dir, name)}
		if err := os.Mkdir(g.dir, 0o755); err != nil {
			c.Release()
			return nil, fmt.Errorf("cgroup: %w", err)
		}
		c.groups = append(c.groups, g)
		if err := s.setLimits(g); err != nil {
			c.Release()
			return nil, err
		}
		if s.memory != nil && pg.dir == s.memory.dir {
			c.memory = &c.groups[len(c.groups)-1]
		}
		sp.Cgroups = append(sp.Cgroups, g.dir)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if s.direct {
		c.spawn, c.cred = true, s.cred
		if len(c.groups) == 1 {
			fd, err := unix.Open(c.groups[0].dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				c.Release()
				return nil, fmt.Errorf("cgroup: %w", err)
			}
			c.cgroupFD = fd
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
		}
		if s.cred != nil {
			cred := *s.cred // no supplementary groups (lookupUser)
			cmd.SysProcAttr.Credential = &cred
		}
		if !trial {
			return c, nil
		}
		// The trial runs the shim, started the same way, which checks what
		// it inherited and stops.
		sp.Direct = true
	}
	b, err := json.Marshal(sp)
	if err != nil {
		c.Release()
		return nil, err
	}
	cmd.Path = s.shim
	cmd.Args = []string{s.shim, shim.Arg, sp.Path}
	cmd.Env = append(cmd.Env, shim.EnvSpec+"="+string(b))
	if s.opts.Namespaces {
		a := cmd.SysProcAttr
		a.Cloneflags |= syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS
		if sp.OwnNet {
			a.Cloneflags |= syscall.CLONE_NEWNET
		}
		// A vfork: the child borrows the dispatcher's memory until its
		// execve instead of copying its page tables (and making every page
		// of the dispatcher copy-on-write), which cost more than the rest
		// of a start. Nothing may then wait in the child: the user
		// namespace's maps are written once the shim runs (startSandboxed),
		// and its capabilities in the namespace, which an unmapped user
		// would lose at execve, are kept as ambient ones.
		a.Cloneflags |= syscall.CLONE_VM | syscall.CLONE_VFORK
		a.AmbientCaps = s.ambient
	}
	return c, nil
}

// searchable checks that uid:gid may traverse dir and its ancestors.
func searchable(dir string, uid, gid uint32) error {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		m := fi.Mode().Perm()
		ok := m&0o001 != 0 || st.Uid == uid && m&0o100 != 0 || st.Gid == gid && m&0o010 != 0
		if !ok {
			return fmt.Errorf("user %d cannot reach the socket directory: %s is not searchable by it (owner %d, mode %#o)", uid, d, st.Uid, m)
		}
		if d == "/" {
			return nil
		}
	}
}

// setLimits writes the limits whose controller g's hierarchy has.
func (s *Sandbox) setLimits(g group) error {
	o := s.opts
	has := func(ctrl string) bool {
		if g.h.v2 {
			b, _ := os.ReadFile(filepath.Join(filepath.Dir(g.dir), "cgroup.subtree_control"))
			return strings.Contains(" "+strings.TrimSpace(string(b))+" ", " "+ctrl+" ")
		}
		return g.h.has(ctrl)
	}
	var err error
	set := func(file, value string) {
		if err == nil {
			err = g.write(file, value)
		}
	}
	if o.MemoryLimit > 0 && has("memory") {
		limit := strconv.FormatInt(o.MemoryLimit, 10)
		if g.h.v2 {
			set("memory.max", limit)
			if fileExists(filepath.Join(g.dir, "memory.swap.max")) {
				set("memory.swap.max", "0")
			}
			set("memory.oom.group", "1")
		} else {
			set("memory.limit_in_bytes", limit)
			if fileExists(filepath.Join(g.dir, "memory.memsw.limit_in_bytes")) {
				set("memory.memsw.limit_in_bytes", limit)
			}
		}
	}
	if o.PidsLimit > 0 && has("pids") {
		set("pids.max", strconv.FormatInt(o.PidsLimit, 10))
	}
	if o.CPULimit > 0 && has("cpu") {
		const period = 100000
		quota := max(1000, int64(math.Round(o.CPULimit*period)))
		if g.h.v2 {
			set("cpu.max", fmt.Sprintf("%d %d", quota, period))
		} else {
			set("cpu.cfs_period_us", strconv.Itoa(period))
			set("cpu.cfs_quota_us", strconv.FormatInt(quota, 10))
		}
	}
	return err
}

// Start implements workers.Cell: it starts the command Prepare made.
func (c *Cell) Start(cmd *exec.Cmd) error {
	if c.owner != nil && (c.spawn || c.ns) {
		// go-plugin made the worker's control socket directory (0700) in
		// the pool's: give it to the worker. (The shim does it for --user.)
		if dir := envValue(cmd.Env, shim.EnvSockDir); dir != "" && c.poolDir != "" && filepath.Dir(filepath.Clean(dir)) == filepath.Clean(c.poolDir) {
			if err := os.Chown(dir, int(c.owner.Uid), int(c.owner.Gid)); err != nil {
				return fmt.Errorf("give the socket directory to the worker: %w", err)
			}
		}
	}
	switch {
	case c.spawn:
		defer c.closeCgroupFD()
		return spawn(cmd)
	case c.ns:
		return c.startSandboxed(cmd)
	}
	return cmd.Start()
}

// startSandboxed starts the shim in its user namespace. Its rights outside
// are those of an unprivileged user, which may not move a process into the
// cell: the dispatcher opens each cgroup.procs for it to write to.
func (c *Cell) startSandboxed(cmd *exec.Cmd) error {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	// The kernel creates the shim in its cgroup v2 cell (clone3 with
	// CLONE_INTO_CGROUP): moving a process between cgroups costs an RCU
	// grace period, milliseconds. The dispatcher moves it into the others
	// (cgroup v1) while it starts.
	defer c.closeCgroupFD()
	var v1Cells []string
	for _, g := range c.groups {
		if g.h.v2 && c.cgroupFD < 0 {
			fd, err := unix.Open(g.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("cgroup: %w", err)
			}
			c.cgroupFD = fd
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
			continue
		}
		v1Cells = append(v1Cells, g.dir)
	}
	// The shim waits, before anything else, until this end closes: once
	// its user namespace has maps and it is in its other cells (cgroup v1),
	// both done while it starts.
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return err
	}
	files = append(files, syncR, syncW)
	cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", shim.EnvSync, passFile(cmd, syncR)))
	// A root dispatcher hands the shim a copy of each bind, which it
	// attaches without having to reach the source (it need not: the
	// worker binary may lie in a directory only root may enter).
	var trees []string
	for i, m := range c.root {
		flags := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC
		if m.Dir {
			flags |= unix.AT_RECURSIVE
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, m.Src, uint(flags))
		if err != nil {
			return fmt.Errorf("sandbox: clone the bind of %s: %w", m.Src, err)
		}
		f := os.NewFile(uintptr(fd), m.Src)
		files = append(files, f)
		trees = append(trees, fmt.Sprintf("%d:%d", i, passFile(cmd, f)))
	}
	if len(trees) > 0 {
		cmd.Env = append(cmd.Env, shim.EnvTreeFDs+"="+strings.Join(trees, ","))
	}
	if c.net != nil {
		err = c.net.start(cmd)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return err
	}
	fail := func(err error) error {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return err
	}
	proc := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/"
	for _, m := range []struct{ file, data string }{{"uid_map", c.uidMap}, {"setgroups", "deny"}, {"gid_map", c.gidMap}} {
		if err := writeProcFile(proc+m.file, m.data); err != nil {
			return fail(fmt.Errorf("sandbox: the user namespace's %s: %w", m.file, err))
		}
	}
	for _, dir := range v1Cells {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
			return fail(fmt.Errorf("cgroup: join the sandbox to its cell %s: %w", dir, err))
		}
	}
	_ = syncW.Close() // the descriptor goes whatever Close says
	return nil
}

// passFile adds f to the descriptors cmd's process inherits and returns
// the number it will have there.
func passFile(cmd *exec.Cmd, f *os.File) int {
	cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	return 2 + len(cmd.ExtraFiles)
}

// writeProcFile writes data to a /proc file of a shim that has just
// executed. Start returns once the shim's execve has closed its
// close-on-exec descriptors, a moment before the kernel makes the new
// image dumpable: meanwhile its /proc files are root's, which an
// unprivileged dispatcher may not open, so EACCES is retried, briefly.
func writeProcFile(path, data string) error {
	deadline := time.Now().Add(time.Second)
	for d := 20 * time.Microsecond; ; d = min(2*d, 10*time.Millisecond) {
		err := os.WriteFile(path, []byte(data), 0)
		if !errors.Is(err, syscall.EACCES) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(d)
	}
}

func (c *Cell) closeCgroupFD() {
	if c.cgroupFD >= 0 {
		unix.Close(c.cgroupFD)
		c.cgroupFD = -1
	}
}

// envValue returns the value of key in env (the last one), or "".
func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// Release implements workers.Cell.
func (c *Cell) Release() error {
	c.once.Do(func() {
		c.closeCgroupFD()
		c.oom.Store(c.readOOM())
		var errs []error
		for _, g := range c.groups {
			errs = append(errs, g.remove(5*time.Second))
		}
		c.removed.Store(true)
		c.err = errors.Join(errs...)
	})
	return c.err
}

// Kill implements workers.Cell.
func (c *Cell) Kill() {
	if c.removed.Load() {
		return
	}
	for _, g := range c.groups {
		g.signalAll()
	}
}

// ReapsOrphans implements workers.Cell: a sandbox's shim is the init of
// its PID namespace.
func (c *Cell) ReapsOrphans() bool { return c.ns }

// OutOfMemory implements workers.Cell.
func (c *Cell) OutOfMemory() bool {
	if c.removed.Load() {
		return c.oom.Load()
	}
	return c.readOOM()
}

func (c *Cell) readOOM() bool {
	if c.memory == nil {
		return false
	}
	if c.memory.h.v2 {
		return c.memory.statField("memory.events", "oom_kill") > 0 || c.memory.statField("memory.events", "oom_group_kill") > 0
	}
	return c.memory.statField("memory.oom_control", "oom_kill") > 0
}

// trial starts the shim once through the whole confinement, stopping just
// before it would execute the worker, so that New fails with the shim's
// reason rather than every worker start.
func (s *Sandbox) trial() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "sandbox-trial-")
	if err != nil {
		// The workers' sockets live there too: say what it is.
		return fmt.Errorf("temporary directory %s (TMPDIR) is not usable: %w", os.TempDir(), err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "plugin-dir-trial")
	if err := os.Mkdir(sock, 0o700); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, s.path)
	cmd.Env = []string{"PLUGIN_UNIX_SOCKET_DIR=" + sock}
	c, err := s.prepare(cmd, dir, true)
	if err != nil {
		return err
	}
	defer c.Release()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr.Setpgid = true
	runErr := c.Start(cmd)
	if runErr == nil {
		runErr = cmd.Wait()
	}
	if runErr == nil && strings.TrimSpace(stdout.String()) == shim.TrialOK {
		return c.Release()
	}
	msg := strings.TrimSpace(stderr.String())
	if i := strings.LastIndex(msg, "sandbox: "); i >= 0 {
		msg = msg[i+len("sandbox: "):]
	} else {
		msg = fmt.Sprintf("%v (does %s link package workers/sandbox/shim?)", runErr, s.shim)
	}
	var ce *ChecksumError
	if strings.Contains(msg, "checksum") && errors.As(s.verifyChecksum(), &ce) {
		return ce
	}
	return &UnsupportedError{Option: s.failedOption(), Missing: "the shim failed: " + msg}
}

// failedOption guesses which option a trial failure is about, for the
// error: the most demanding one set.
func (s *Sandbox) failedOption() string {
	switch {
	case s.opts.Namespaces:
		return "Namespaces"
	case s.opts.User != "":
		return "User"
	case s.opts.NoFile > 0:
		return "NoFile"
	}
	return "the default confinement"
}
