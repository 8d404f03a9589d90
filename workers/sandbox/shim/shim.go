// Package shim is the program a sandboxed worker starts as: the
// dispatcher's own binary, run again with Arg, which confines itself as
// its instructions say (cell, namespaces, minimal root, user, seccomp) and
// then starts the worker.
//
// It runs from this package's init, before most of the binary's packages
// initialise: Go initialises ready packages in import path order, and this
// one imports only the standard library and golang.org/x, so the heavy
// initialisers (protobuf, gRPC, Prometheus) never run in a shim. Keep it
// that way: no import of this module's other packages or of go-plugin.
package shim

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Arg, as the first argument, makes a program that links this package a
// shim. Its instructions come in an environment variable (EnvSpec), never
// on the command line, which any local user can read.
const Arg = "--internal-exec"

const (
	EnvSpec    = "DISPATCHER_SANDBOX_SPEC"
	EnvSockDir = "PLUGIN_UNIX_SOCKET_DIR"      // set by go-plugin: the worker's own socket directory
	EnvSync    = "DISPATCHER_SANDBOX_SYNC_FD"  // closed by the dispatcher once the namespace has maps and the shim its cells
	EnvTreeFDs = "DISPATCHER_SANDBOX_TREE_FDS" // the binds, cloned by the dispatcher: "INDEX:FD,..."
	// EnvFDs lists the worker's slot sockets (ipc.EnvFDs, which this
	// package may not import).
	EnvFDs = "DISPATCHER_IPC_FDS"
	// TrialOK is what a trial prints when it succeeded.
	TrialOK = "sandbox: trial ok"
	// Failed is the exit status of a shim that could not confine or start
	// the worker.
	Failed = 125
)

// Spec is what the shim is asked to do.
type Spec struct {
	Path       string   // the worker binary
	Args       []string // its argv, argv[0] included
	Cgroups    []string // cgroup directories to join
	NoFile     uint64   `json:",omitempty"`
	User       bool     `json:",omitempty"`
	UID, GID   uint32   `json:",omitempty"`
	Namespaces bool     `json:",omitempty"`
	OwnNet     bool     `json:",omitempty"` // a network namespace of its own: bring up its loopback
	Root       []Mount  `json:",omitempty"` // with Namespaces: the binds of the new root
	TmpSize    int64    `json:",omitempty"` // with Namespaces: the size of /tmp and /dev/shm
	LastCap    int      `json:",omitempty"` // with Namespaces: the highest capability number (cap_last_cap)
	OuterUID   uint32   `json:",omitempty"` // with Namespaces: who root of the sandbox is outside
	Filter     []byte   `json:",omitempty"` // with Namespaces: the seccomp program (Filter)
	Checksum   string   `json:",omitempty"` // sha256 hex
	PoolDir    string   `json:",omitempty"` // the pool's socket directory
	Trial      bool     `json:",omitempty"` // stop before executing the worker
	Direct     bool     `json:",omitempty"` // a trial of the direct start: check what it gave, and stop
}

// Mount is one bind of the new root: Src resolved on the host (no
// symbolic link left in it), Dst where it appears.
type Mount struct {
	Src, Dst string
	Dir      bool `json:",omitempty"`
}

func init() {
	if len(os.Args) < 2 || os.Args[1] != Arg {
		return
	}
	// Thread attributes (no_new_privs, the parent-death signal) are set on
	// this thread and carried by the execve or fork it makes.
	runtime.LockOSThread()
	err := shim()
	fmt.Fprintf(os.Stderr, "sandbox: %v\n", err)
	os.Exit(Failed)
}

func shim() error {
	raw, ok := os.LookupEnv(EnvSpec)
	if !ok {
		return errors.New(Arg + " is for the dispatcher's own use: no instructions")
	}
	var sp Spec
	if err := json.Unmarshal([]byte(raw), &sp); err != nil {
		return fmt.Errorf("bad instructions: %w", err)
	}
	if sp.Direct {
		if err := checkDirect(&sp); err != nil {
			return err
		}
		fmt.Println(TrialOK)
		os.Exit(0)
	}
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name != EnvSpec && name != EnvSync && name != EnvTreeFDs {
			env = append(env, kv)
		}
	}
	// The cell first: whatever happens next happens inside it. A sandbox's
	// shim may not move itself: the dispatcher does, and writes the maps
	// of its user namespace, while it starts.
	if fd, ok := os.LookupEnv(EnvSync); ok {
		if err := waitDispatcher(fd); err != nil {
			return err
		}
		if err := becomeNamespaceRoot(); err != nil {
			return err
		}
	} else {
		for _, dir := range sp.Cgroups {
			if err := os.WriteFile(dir+"/cgroup.procs", []byte("0"), 0); err != nil {
				return fmt.Errorf("join cgroup %s: %w", dir, err)
			}
		}
	}
	trees, err := treeFDs(len(sp.Root))
	if err != nil {
		return err
	}
	inherited := inheritedFDs()
	ppid := os.Getppid()
	sockDir := os.Getenv(EnvSockDir)
	if sockDir != "" && !inDir(sockDir, sp.PoolDir) {
		sockDir = "" // not one the pool made: leave it alone
	}
	if sp.User && sockDir != "" {
		if err := os.Chown(sockDir, int(sp.UID), int(sp.GID)); err != nil {
			return fmt.Errorf("give the socket directory to the worker: %w", err)
		}
	}

	// The binary is opened before the mounts hide its directory (and while
	// the shim may still reach it, whatever the user can), checked, and
	// executed through this very descriptor: what was hashed is what runs,
	// whatever happens to the path meanwhile.
	exe := sp.Path
	if sp.Checksum != "" || sp.User {
		// A raw descriptor (an *os.File could be closed by its finalizer).
		fd, err := unix.Open(sp.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			if sp.Namespaces {
				return fmt.Errorf("open worker binary %s: %w (the worker's user, uid %d outside, must be able to reach it)", sp.Path, err, sp.OuterUID)
			}
			return fmt.Errorf("open worker binary %s: %w", sp.Path, err)
		}
		if sp.Checksum != "" {
			got, err := SHA256(fdReader(fd))
			if err != nil {
				return fmt.Errorf("checksum of %s: %w", sp.Path, err)
			}
			if got != sp.Checksum {
				return fmt.Errorf("checksum of %s is sha256:%s, not the expected sha256:%s: refusing to run it", sp.Path, got, sp.Checksum)
			}
		}
		exe = "/proc/self/fd/" + strconv.Itoa(fd)
	}

	if sp.Namespaces {
		if err := buildRoot(&sp, sockDir, trees); err != nil {
			return err
		}
		if err := dropCapabilities(sp.LastCap); err != nil {
			return err
		}
	}
	if sp.NoFile > 0 {
		lim := unix.Rlimit{Cur: sp.NoFile, Max: sp.NoFile}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("set the open files limit to %d: %w", sp.NoFile, err)
		}
	}
	if sp.User && !sp.Namespaces {
		// Direct execution: become the user now. (A sandbox's init stays
		// root and starts the worker as the user.)
		if err := becomeUser(sp.UID, sp.GID); err != nil {
			return err
		}
		// A change of identity clears the parent-death signal.
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
			return fmt.Errorf("parent-death signal: %w", err)
		}
		if os.Getppid() != ppid {
			return errors.New("the dispatcher died")
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if sp.Namespaces {
		if err := loadSeccomp(sp.Filter); err != nil {
			return fmt.Errorf("seccomp filter: %w", err)
		}
	}
	if sp.Trial {
		if sp.User && !sp.Namespaces {
			if err := unix.Access(exe, unix.X_OK); err != nil {
				return fmt.Errorf("user %d cannot execute %s: %w", sp.UID, sp.Path, err)
			}
		}
		fmt.Println(TrialOK)
		os.Exit(0)
	}
	if !sp.Namespaces {
		err := syscall.Exec(exe, sp.Args, env)
		return fmt.Errorf("execute %s: %w", sp.Path, err)
	}
	return runInit(&sp, exe, env, inherited)
}

// checkDirect checks, in a process started the way workers start without
// the shim, that it has everything the shim would have given it.
func checkDirect(sp *Spec) error {
	if v, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || v != 1 {
		return fmt.Errorf("a directly started worker would not have no_new_privs (%d, %v)", v, err)
	}
	for _, dir := range sp.Cgroups {
		b, err := os.ReadFile(dir + "/cgroup.procs")
		if err != nil {
			return fmt.Errorf("a directly started worker's cell: %w", err)
		}
		if !slices.Contains(strings.Fields(string(b)), strconv.Itoa(os.Getpid())) {
			return fmt.Errorf("a directly started worker would not be in its cell %s", dir)
		}
	}
	if sp.User {
		groups, err := unix.Getgroups()
		if err != nil || os.Getuid() != int(sp.UID) || os.Getgid() != int(sp.GID) || len(groups) > 0 {
			return fmt.Errorf("a directly started worker would not run as %d:%d without supplementary groups (%d:%d %v)", sp.UID, sp.GID, os.Getuid(), os.Getgid(), groups)
		}
		if err := unix.Access(sp.Path, unix.X_OK); err != nil {
			return fmt.Errorf("user %d cannot execute %s: %w", sp.UID, sp.Path, err)
		}
	}
	return nil
}

// inDir reports whether dir is a directory right inside parent, both clean
// absolute paths. (Package path/filepath would initialise after the heavy
// packages: see the package comment.)
func inDir(dir, parent string) bool {
	clean := func(p string) bool {
		return strings.HasPrefix(p, "/") && !strings.HasSuffix(p, "/") && !strings.Contains(p, "//") &&
			!strings.Contains(p+"/", "/./") && !strings.Contains(p+"/", "/../")
	}
	i := strings.LastIndexByte(dir, '/')
	return clean(dir) && clean(parent) && i > 0 && dir[:i] == parent
}

// SHA256 returns the hex SHA-256 of what r reads.
func SHA256(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type fdReader int

func (fd fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(fd), p)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// waitDispatcher waits until the dispatcher closes the pipe whose read end
// is fd.
func waitDispatcher(fd string) error {
	n, err := strconv.Atoi(fd)
	if err != nil || n <= 2 {
		return fmt.Errorf("bad %s %q", EnvSync, fd)
	}
	defer unix.Close(n)
	var b [1]byte
	for {
		got, err := unix.Read(n, b[:])
		switch {
		case errors.Is(err, unix.EINTR):
		case err != nil:
			return fmt.Errorf("wait for the dispatcher: %w", err)
		case got == 0:
			return nil
		}
	}
}

// becomeNamespaceRoot makes the shim root of its user namespace. A root
// dispatcher's child kept the dispatcher's uid, which the namespace does
// not map; the capabilities it needs for that, and for building the root,
// it kept across its execve as ambient ones. The change of identity clears
// the parent-death signal, set again here.
func becomeNamespaceRoot() error {
	if unix.Getuid() == 0 && unix.Getgid() == 0 {
		return nil
	}
	// On this thread only, to which the shim is locked and from which it
	// starts the worker (syscall.Setresuid would change every thread of
	// the runtime, at the cost of stopping them all).
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, 0, 0, 0); e != 0 {
		return fmt.Errorf("become root of the user namespace (group): %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 0, 0, 0); e != 0 {
		return fmt.Errorf("become root of the user namespace: %w", e)
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("parent-death signal: %w", err)
	}
	return nil
}

// treeFDs reads EnvTreeFDs and marks its descriptors close-on-exec: they
// are the shim's, not the worker's.
func treeFDs(n int) (map[int]int, error) {
	v, ok := os.LookupEnv(EnvTreeFDs)
	if !ok {
		return nil, nil
	}
	trees := map[int]int{}
	for f := range strings.SplitSeq(v, ",") {
		i, fd, _ := strings.Cut(f, ":")
		idx, err1 := strconv.Atoi(i)
		n2, err2 := strconv.Atoi(fd)
		if err1 != nil || err2 != nil || idx < 0 || idx >= n || n2 <= 2 {
			return nil, fmt.Errorf("bad %s %q", EnvTreeFDs, v)
		}
		if _, err := unix.FcntlInt(uintptr(n2), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return nil, fmt.Errorf("%s: %w", EnvTreeFDs, err)
		}
		trees[idx] = n2
	}
	return trees, nil
}

// inheritedFDs marks every descriptor above stderr close-on-exec but the
// slot sockets the dispatcher lists in the worker's environment, and
// returns those: nothing else the shim inherited reaches the worker.
func inheritedFDs() []int {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		// Before Linux 5.11.
		entries, _ := os.ReadDir("/proc/self/fd")
		for _, e := range entries {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
			}
		}
	}
	var fds []int
	for f := range strings.SplitSeq(os.Getenv(EnvFDs), ",") {
		fd, err := strconv.Atoi(f)
		if err != nil || fd <= 2 || slices.Contains(fds, fd) {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err == nil {
			fds = append(fds, fd)
		}
	}
	return fds
}

func becomeUser(uid, gid uint32) error {
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("drop supplementary groups: %w", err)
	}
	if err := syscall.Setgid(int(gid)); err != nil {
		return fmt.Errorf("set group %d: %w", gid, err)
	}
	if err := syscall.Setuid(int(uid)); err != nil {
		return fmt.Errorf("set user %d: %w", uid, err)
	}
	return nil
}

// buildRoot makes the sandbox's file system in the new mount namespace
// the shim was started in (as root of its user namespace), in the order
// bubblewrap uses: a tmpfs as the root, the old root kept at /oldroot while
// the new one is assembled at /newroot from binds of it, then the old root
// detached and the new one pivoted to. Every mount is nosuid, and nodev
// but for the device nodes' own; everything but /tmp, /dev/shm and the
// socket directory is read-only.
//
// trees holds, by index in sp.Root, detached copies of the binds that a
// root dispatcher made (open_tree): they are attached as they are, for the
// shim, an unprivileged user outside, may not reach their source.
func buildRoot(sp *Spec, sockDir string, trees map[int]int) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	// A cgroup namespace rooted at the cell (joined already): the worker
	// sees its cgroup as "/", not where the dispatcher put it.
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("cgroup namespace: %w", err)
	}
	const base = "/tmp" // any directory: covered by the tmpfs, then by nothing
	if err := unix.Mount("tmpfs", base, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount the root tmpfs: %w", err)
	}
	if err := unix.Chdir(base); err != nil {
		return err
	}
	for _, d := range []string{"newroot", "oldroot"} {
		if err := unix.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("newroot", "newroot", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind the new root: %w", err)
	}
	if err := unix.PivotRoot(base, "oldroot"); err != nil {
		return fmt.Errorf("pivot_root to the root tmpfs: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}

	tmpOpts := fmt.Sprintf("mode=1777,size=%d", sp.TmpSize)
	if err := mountAt("tmpfs", "/newroot/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpOpts); err != nil {
		return fmt.Errorf("mount a private /tmp: %w", err)
	}
	if err := buildDev(tmpOpts); err != nil {
		return err
	}
	if err := mountAt("proc", "/newroot/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	for i, m := range sp.Root {
		const attr = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
		var err error
		if fd, ok := trees[i]; ok {
			err = attachAt(fd, "/newroot"+m.Dst, m.Dir, attr)
			unix.Close(fd)
		} else {
			err = bindAt("/oldroot"+m.Src, "/newroot"+m.Dst, m.Dir, attr)
		}
		switch {
		case err != nil && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOENT)):
			return fmt.Errorf("bind %s in the new root: %w (the worker's user, uid %d outside, must be able to reach it)", m.Src, err, sp.OuterUID)
		case err != nil:
			return fmt.Errorf("bind %s in the new root: %w", m.Src, err)
		}
	}
	if sockDir != "" {
		if err := bindAt("/oldroot"+sockDir, "/newroot"+sockDir, true, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC); err != nil {
			return fmt.Errorf("bind the socket directory: %w", err)
		}
	}
	if err := unix.MountSetattr(unix.AT_FDCWD, "/newroot", 0, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}); err != nil {
		return fmt.Errorf("make the root read-only: %w", err)
	}

	if err := unix.Mount("", "/oldroot", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the old root private: %w", err)
	}
	if err := unix.Unmount("/oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	if err := unix.Chdir("/newroot"); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root to the new root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the root tmpfs: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte("sandbox")); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	if sp.OwnNet {
		if err := LoopbackUp(); err != nil {
			return fmt.Errorf("bring up the loopback device: %w", err)
		}
	}
	return nil
}

// buildDev makes a synthetic /dev: a read-only tmpfs with binds of the
// harmless device nodes, a private devpts and a private /dev/shm.
func buildDev(shmOpts string) error {
	const dev = "/newroot/dev"
	if err := mountAt("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if err := bindAt("/oldroot/dev/"+n, dev+"/"+n, false, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", n, err)
		}
	}
	if err := mountAt("devpts", dev+"/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620"); err != nil {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	if err := mountAt("tmpfs", dev+"/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, shmOpts); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	for link, target := range map[string]string{"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := unix.Symlink(target, dev+"/"+link); err != nil {
			return fmt.Errorf("/dev/%s: %w", link, err)
		}
	}
	if err := unix.MountSetattr(unix.AT_FDCWD, dev, 0, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return fmt.Errorf("make /dev read-only: %w", err)
	}
	return nil
}

// mountAt makes the directory dst (and its parents) and mounts on it.
func mountAt(src, dst, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	return unix.Mount(src, dst, fstype, flags, data)
}

// bindAt binds src on dst, making dst (a directory, or an empty file) and
// its parents, and sets attr on the bind and everything below it.
func bindAt(src, dst string, dir bool, attr uint64) error {
	if err := mountpoint(dst, dir); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	return unix.MountSetattr(unix.AT_FDCWD, dst, unix.AT_RECURSIVE|unix.AT_SYMLINK_NOFOLLOW, &unix.MountAttr{Attr_set: attr})
}

// attachAt attaches the detached mount tree fd on dst, as bindAt does.
func attachAt(fd int, dst string, dir bool, attr uint64) error {
	if err := mountpoint(dst, dir); err != nil {
		return err
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return unix.MountSetattr(unix.AT_FDCWD, dst, unix.AT_RECURSIVE|unix.AT_SYMLINK_NOFOLLOW, &unix.MountAttr{Attr_set: attr})
}

// mountpoint makes dst, a directory or an empty file, and its parents.
func mountpoint(dst string, dir bool) error {
	if dir {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
	} else {
		if err := os.MkdirAll(dst[:max(strings.LastIndexByte(dst, '/'), 1)], 0o755); err != nil {
			return err
		}
		fd, err := unix.Open(dst, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o444)
		if err != nil {
			return err
		}
		unix.Close(fd)
	}
	return nil
}

// dropCapabilities empties the bounding, inheritable and ambient sets of
// the calling thread, so that the worker it starts, root of the user
// namespace, executes with no capability.
func dropCapabilities(lastCap int) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear inheritable capabilities: %w", err)
	}
	for c := 0; c <= lastCap; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	return nil
}

// LoopbackUp brings up the loopback device of the calling thread's network
// namespace.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// runInit is the sandbox's PID 1: it starts the worker, forwards signals to
// it, reaps every orphan, and exits as the worker did (128+N for a signal,
// which it also reports on stderr). Its exit takes the whole PID namespace
// down.
func runInit(sp *Spec, exe string, env []string, inherited []int) error {
	attr := &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{0, 1, 2}, // and the inherited descriptors, which stay where they are
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	}
	if sp.User {
		attr.Sys.Credential = &syscall.Credential{Uid: sp.UID, Gid: sp.GID, Groups: []uint32{}}
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	pid, err := syscall.ForkExec(exe, sp.Args, attr)
	if err != nil {
		return fmt.Errorf("execute %s: %w", sp.Path, err)
	}
	for _, fd := range inherited {
		_ = syscall.Close(fd) // the worker's alone now
	}
	go func() {
		for s := range sigs {
			_ = syscall.Kill(pid, s.(syscall.Signal))
		}
	}()
	var ws syscall.WaitStatus
	for {
		wpid, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for the worker: %w", err)
		}
		if wpid == pid {
			break
		}
	}
	_ = syscall.Kill(-1, syscall.SIGKILL) // whatever else runs in the namespace
	if ws.Signaled() {
		fmt.Fprintf(os.Stderr, "sandbox: worker killed by signal %d (%v)\n", int(ws.Signal()), ws.Signal())
		os.Exit(128 + int(ws.Signal()))
	}
	os.Exit(ws.ExitStatus())
	return nil
}
