// Command hostile is an untrusted handler that tries to break out: each path
// is one attack, answered with a plain-text report of what it achieved, so
// that tests can assert that the sandbox contained it.
//
//	/whoami             identity, namespaces and limits as the worker sees them (key=value lines)
//	/snoop?name=K       looks for variable K in its own environment and in every /proc/*/environ
//	/read?path=P        reads a file
//	/write?path=P       creates a file
//	/escape?token=T     starts a setsid child and a double-forked grandchild ("escapee T") and answers
//	/alloc?mb=N         allocates and touches N MiB, 1 MiB at a time
//	/forkbomb?token=T   starts "sleep 3600.T" processes until fork fails (at most 300)
//	/fds                opens files until it cannot
//	/spin?ms=N&threads=K  spins K threads for N ms and reports the CPU time it got
//	/ptrace?pid=P       PTRACE_SEIZE on P (default: its parent)
//	/signal?pid=P       kill(P, 0) on P (default: its parent)
//	/syscalls           tries system calls a sandbox denies, one "name: result" line each (see syscalls)
//	/connect?dir=D      connects to every unix socket under D and every go-plugin socket in /proc/net/unix
//	/dial?addr=A        opens a TCP connection to A
//	/exit               exits with status 3
//	/inherited          lists its descriptors above stderr; reads and writes those that are not slots
//	/attacks?pid=P&sig=0  against P (default: its parent): joins every ancestor of its cgroups
//	                    (cgroup.procs), kill(P, SIGTERM, or 0), PTRACE_SEIZE, reads /proc/P/environ, opens /proc/P/mem
//	/junk?giant=1       writes junk (or the header of a 2 GiB frame) on its slot connection
//	/flood?mb=N&line=L&stream=S&chunk=C  writes N MiB (default 5) of L-byte lines (default 2: "x\n")
//	                    on stderr (or stdout), one write per line (or C bytes per write), and
//	                    reports the CPU time it spent: "flood: lines=... cpu_us=..."
//
// Started as "hostile escapee T" it sleeps forever (reporting its pid on
// fd 3 if open); as "hostile fork1 T" it starts a setsid escapee and exits.
//
// With HOSTILE_HANDSHAKE=KIND:TARGET it prints its own go-plugin handshake
// instead of serving, naming: the path TARGET (path); TARGET reached from
// its socket directory through ".." (dotdot); a symbolic link to TARGET
// (symlink) or to TARGET's directory (dirlink) made in its socket
// directory; a TCP address (tcp); junk (junk); a regular file it makes in
// its socket directory (file). Then it waits to be killed.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/childproc/dispatcher/internal/rawslots"
	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/sdk"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) > 2 {
		switch os.Args[1] {
		case "escapee":
			if f := os.NewFile(3, "report"); f != nil {
				fmt.Fprintf(f, "escapee %d\n", os.Getpid())
				f.Close()
			}
			for {
				time.Sleep(time.Hour)
			}
		case "fork1":
			cmd := escapee(os.Args[2], os.NewFile(3, "report"))
			if err := cmd.Start(); err != nil {
				fmt.Fprintln(os.Stderr, "fork1:", err)
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	if mode, ok := os.LookupEnv("HOSTILE_HANDSHAKE"); ok {
		forgeHandshake(mode)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/whoami", whoami)
	mux.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) { os.Exit(3) })
	mux.HandleFunc("/junk", junk)
	mux.HandleFunc("/snoop", snoop)
	mux.HandleFunc("/read", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			fmt.Fprintf(w, "read: error: %v\n", err)
			return
		}
		fmt.Fprintf(w, "read: ok %d bytes\n%s", len(b), b)
	})
	mux.HandleFunc("/write", func(w http.ResponseWriter, r *http.Request) {
		err := os.WriteFile(r.URL.Query().Get("path"), []byte("pwned\n"), 0o644)
		fmt.Fprintf(w, "write: %s\n", result(err))
	})
	mux.HandleFunc("/escape", escape)
	mux.HandleFunc("/alloc", alloc)
	mux.HandleFunc("/forkbomb", forkbomb)
	mux.HandleFunc("/fds", fds)
	mux.HandleFunc("/spin", spin)
	mux.HandleFunc("/flood", flood)
	mux.HandleFunc("/ptrace", ptrace)
	mux.HandleFunc("/signal", func(w http.ResponseWriter, r *http.Request) {
		pid := targetPID(r)
		fmt.Fprintf(w, "signal %d: %s\n", pid, result(syscall.Kill(pid, 0)))
	})
	mux.HandleFunc("/syscalls", syscalls)
	mux.HandleFunc("/attacks", attacks)
	mux.HandleFunc("/inherited", inherited)
	mux.HandleFunc("/connect", connect)
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.DialTimeout(netParam(r), r.URL.Query().Get("addr"), 2*time.Second)
		if err == nil {
			c.Close()
		}
		fmt.Fprintf(w, "dial: %s\n", result(err))
	})
	// /listen?addr=ADDR[&net=unix] keeps a listener (TCP by default; an
	// abstract unix socket for @NAME) open for the worker's life,
	// accepting and closing.
	mux.HandleFunc("/listen", func(w http.ResponseWriter, r *http.Request) {
		ln, err := net.Listen(netParam(r), r.URL.Query().Get("addr"))
		if err == nil {
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}
		fmt.Fprintf(w, "listen: %s\n", result(err))
	})
	sandboxAttacks(mux) // sandbox.go
	sdk.Serve(mux)
}

// netParam is the request's net parameter, "tcp" by default.
func netParam(r *http.Request) string {
	if n := r.URL.Query().Get("net"); n != "" {
		return n
	}
	return "tcp"
}

// result is "ok" or "error: ..." for a report line.
func result(err error) string {
	if err == nil {
		return "ok"
	}
	return "error: " + err.Error()
}

func targetPID(r *http.Request) int {
	if pid, err := strconv.Atoi(r.URL.Query().Get("pid")); err == nil {
		return pid
	}
	return os.Getppid()
}

func whoami(w http.ResponseWriter, r *http.Request) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "pid=%d\nppid=%d\nuid=%d\ngid=%d\nhostname=%s\n", os.Getpid(), os.Getppid(), os.Getuid(), os.Getgid(), host)
	if st, err := os.ReadFile("/proc/self/status"); err == nil {
		for line := range strings.SplitSeq(string(st), "\n") {
			k, v, _ := strings.Cut(line, ":")
			switch k {
			case "NoNewPrivs", "Seccomp", "CapEff", "CapBnd", "CapInh", "CapPrm", "CapAmb", "Groups":
				fmt.Fprintf(w, "%s=%s\n", strings.ToLower(k), strings.TrimSpace(v))
			}
		}
	}
	var lim unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	fmt.Fprintf(w, "nofile=%d\n", lim.Cur)
	if cg, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		fmt.Fprintf(w, "cgroup=%s\n", strings.Join(strings.Fields(string(cg)), " "))
	}
	for _, ns := range []string{"pid", "mnt", "net", "ipc", "uts"} {
		l, _ := os.Readlink("/proc/self/ns/" + ns)
		fmt.Fprintf(w, "ns_%s=%s\n", ns, l)
	}
	for _, kv := range os.Environ() {
		fmt.Fprintf(w, "env %s\n", kv)
	}
}

// snoop looks for a variable everywhere a handler could read one.
func snoop(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if v, ok := os.LookupEnv(name); ok {
		fmt.Fprintf(w, "found in own environment: %s\n", v)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	readable := 0
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		readable++
		for kv := range strings.SplitSeq(string(b), "\x00") {
			if v, ok := strings.CutPrefix(kv, name+"="); ok {
				fmt.Fprintf(w, "found in %s: %s\n", p, v)
			}
		}
	}
	fmt.Fprintf(w, "snoop: read %d of %d environments\n", readable, len(procs))
}

func escapee(token string, report *os.File) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe", "escapee", token)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Stderr = os.Stderr // holding the worker's stderr open, as a nasty escapee would
	if report != nil {
		cmd.ExtraFiles = []*os.File{report}
	}
	return cmd
}

// escape leaves two processes behind that are out of its process group:
// one started with setsid, one double-forked (its parent exits at once).
func escape(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	pr, pw, err := os.Pipe()
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	defer pr.Close()
	direct := escapee(token, pw)
	double := exec.Command("/proc/self/exe", "fork1", token)
	double.ExtraFiles = []*os.File{pw}
	errs := []error{direct.Start(), double.Run()}
	pw.Close()
	if err := errors.Join(errs...); err != nil {
		http.Error(w, "escape: "+err.Error(), 500)
		return
	}
	go direct.Wait()
	// Each escapee reports its pid and closes its end: EOF once both have.
	sc := bufio.NewScanner(pr)
	n := 0
	for sc.Scan() {
		fmt.Fprintln(w, sc.Text())
		n++
	}
	fmt.Fprintf(w, "escape: %d escapees running\n", n)
}

func alloc(w http.ResponseWriter, r *http.Request) {
	mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
	var keep [][]byte
	for range mb {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
	}
	fmt.Fprintf(w, "alloc: survived %d MiB\n", len(keep))
}

func forkbomb(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	started := 0
	var err error
	for started < 300 {
		cmd := exec.Command("sleep", "3600."+token)
		if err = cmd.Start(); err != nil {
			break
		}
		go cmd.Wait()
		started++
	}
	fmt.Fprintf(w, "forkbomb: started %d: %s\n", started, result(err))
}

func fds(w http.ResponseWriter, r *http.Request) {
	var open []int
	var err error
	for len(open) < 1<<20 {
		var fd int
		if fd, err = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			break
		}
		open = append(open, fd)
	}
	for _, fd := range open {
		unix.Close(fd)
	}
	fmt.Fprintf(w, "fds: opened %d: %s\n", len(open), result(err))
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func spin(w http.ResponseWriter, r *http.Request) {
	ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
	threads, _ := strconv.Atoi(r.URL.Query().Get("threads"))
	threads = max(threads, 1)
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), threads))
	c0, t0 := cpuTime(), time.Now()
	deadline := t0.Add(time.Duration(ms) * time.Millisecond)
	var wg sync.WaitGroup
	for range threads {
		wg.Go(func() {
			x := 0
			for time.Now().Before(deadline) {
				for i := range 10000 {
					x += i
				}
			}
			_ = x
		})
	}
	wg.Wait()
	fmt.Fprintf(w, "spin: cpu_ms=%d wall_ms=%d\n", (cpuTime() - c0).Milliseconds(), time.Since(t0).Milliseconds())
}

// ptrace seizes the target from a thread that then exits, which detaches
// it: a successful attack leaves the target running.
func ptrace(w http.ResponseWriter, r *http.Request) {
	pid := targetPID(r)
	fmt.Fprintf(w, "ptrace %d: %s\n", pid, result(seize(pid)))
}

// seize tries PTRACE_SEIZE on pid from a thread of its own, which then
// exits, detaching a seized target.
func seize(pid int) error {
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(pid), 0, 0, 0, 0)
		if e != 0 {
			done <- e
			return
		}
		done <- nil
	}()
	return <-done
}

// syscalls tries calls the sandbox denies, with arguments that do no harm
// when they are allowed (they fail for another reason, or do nothing, or
// are undone).
func syscalls(w http.ResponseWriter, r *http.Request) {
	empty, _ := unix.BytePtrFromString("")
	try := func(name string, f func() error) {
		fmt.Fprintf(w, "%s: %s\n", name, result(f()))
	}
	raw := func(nr uintptr, a ...uintptr) func() error {
		return func() error {
			_, err := rawCall(nr, a...)
			return err
		}
	}
	try("mount", func() error { return unix.Mount("none", "/nonexistent-hostile", "tmpfs", 0, "") })
	try("chroot", func() error { return unix.Chroot("/") })
	try("unshare", func() error { return unix.Unshare(unix.CLONE_NEWUSER) })
	try("keyctl", raw(unix.SYS_KEYCTL, unix.KEYCTL_GET_KEYRING_ID, uintptr(0xfffffffd) /* session keyring */, 0))
	try("bpf", raw(unix.SYS_BPF, 9999, 0, 0))
	try("init_module", raw(unix.SYS_INIT_MODULE, 0, 0, uintptr(unsafe.Pointer(empty))))
	try("perf_event_open", raw(unix.SYS_PERF_EVENT_OPEN, 0, 0, ^uintptr(0), ^uintptr(0), 0))
	try("io_uring_setup", raw(unix.SYS_IO_URING_SETUP, 0, 0))
	try("userfaultfd", raw(unix.SYS_USERFAULTFD, unix.O_CLOEXEC))
	try("ptrace", raw(unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, 1<<22 /* no such process */, 0, 0))
	try("open_tree_attr", raw(467 /* Linux 6.15, on every architecture */, uintptr(^uint32(0)) /* not a descriptor */, uintptr(unsafe.Pointer(empty)), 0, 0, 0))
	try("unassigned", raw(4000 /* no system call, yet */))
	if ldt, ok := modifyLDT(); ok {
		try("modify_ldt", raw(ldt, 0 /* read */, uintptr(unsafe.Pointer(empty)), 0))
	}
	// Undone if it works: the persona is the whole process's.
	try("personality", func() error {
		old, err := rawCall(unix.SYS_PERSONALITY, 0x0008 /* PER_LINUX32 */)
		if err == nil {
			_, _ = rawCall(unix.SYS_PERSONALITY, old)
		}
		return err
	})
	for _, s := range []struct {
		name                  string
		domain, typ, protocol int
	}{
		{"socket AF_VSOCK", unix.AF_VSOCK, unix.SOCK_STREAM, 0},
		{"socket AF_PACKET", unix.AF_PACKET, unix.SOCK_DGRAM, 0},
		{"socket AF_NETLINK audit", unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_AUDIT},
		{"socket AF_NETLINK route", unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE},
		{"socket AF_INET", unix.AF_INET, unix.SOCK_STREAM, 0},
		{"socket AF_INET6", unix.AF_INET6, unix.SOCK_STREAM, 0},
		{"socket AF_UNIX", unix.AF_UNIX, unix.SOCK_STREAM, 0},
		{"socketpair AF_INET", unix.AF_INET, unix.SOCK_STREAM, 0},
	} {
		try(s.name, func() error {
			var err error
			if strings.HasPrefix(s.name, "socketpair") {
				var fds [2]int
				if fds, err = unix.Socketpair(s.domain, s.typ|unix.SOCK_CLOEXEC, s.protocol); err == nil {
					unix.Close(fds[0])
					unix.Close(fds[1])
				}
				return err
			}
			fd, err := unix.Socket(s.domain, s.typ|unix.SOCK_CLOEXEC, s.protocol)
			if err == nil {
				unix.Close(fd)
			}
			return err
		})
	}
}

func rawCall(nr uintptr, a ...uintptr) (uintptr, error) {
	var args [6]uintptr
	copy(args[:], a)
	r, _, e := unix.Syscall6(nr, args[0], args[1], args[2], args[3], args[4], args[5])
	if e != 0 {
		return 0, e
	}
	return r, nil
}

// connect tries every unix socket it can find that is not its own.
func connect(w http.ResponseWriter, r *http.Request) {
	var paths []string
	if dir := r.URL.Query().Get("dir"); dir != "" {
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				fmt.Fprintf(w, "walk %s: error: %v\n", p, err)
				return nil
			}
			if d.Type()&os.ModeSocket != 0 {
				paths = append(paths, p)
			}
			return nil
		})
		if err != nil {
			fmt.Fprintf(w, "walk: error: %v\n", err)
		}
	}
	if b, err := os.ReadFile("/proc/net/unix"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 8 && strings.Contains(f[7], "plugin") {
				paths = append(paths, f[7])
			}
		}
	}
	own := os.Getenv("PLUGIN_UNIX_SOCKET_DIR")
	connected := 0
	for _, p := range paths {
		if own != "" && strings.HasPrefix(p, own+"/") {
			continue
		}
		c, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			c.Close()
			connected++
		}
		fmt.Fprintf(w, "connect %s: %s\n", p, result(err))
	}
	fmt.Fprintf(w, "connect: %d sockets tried, %d connected\n", len(paths), connected)
}

// junk writes on the slot connection itself, behind the sdk's back: the
// socketpair among its descriptors is the unnamed, connected stream socket.
func junk(w http.ResponseWriter, r *http.Request) {
	msg := []byte("this is not a frame, this is junk\n")
	if r.URL.Query().Get("giant") != "" {
		msg = []byte{0x7f, 0xff, 0xff, 0xff, 0x81, 0xa1}
	}
	wrote := 0
	for _, fd := range rawslots.FDs() {
		if _, err := unix.Write(fd, msg); err == nil {
			wrote++
		}
	}
	fmt.Fprintf(w, "junk: wrote on %d connections\n", wrote)
}

// attacks tries what a worker must not do to the dispatcher (or ?pid=P)
// and to its own cell, and reports one line each: "<what>: ok" or
// "<what>: error: ...".
func attacks(w http.ResponseWriter, r *http.Request) {
	pid := targetPID(r)
	for _, dir := range cgroupAncestors() {
		f, err := os.OpenFile(filepath.Join(dir, "cgroup.procs"), os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString(strconv.Itoa(os.Getpid()))
			f.Close()
		}
		fmt.Fprintf(w, "join %s: %s\n", dir, result(err))
	}
	if cg, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		fmt.Fprintf(w, "cgroup now=%s\n", strings.Join(strings.Fields(string(cg)), " "))
	}
	sig := syscall.SIGTERM
	if r.URL.Query().Get("sig") == "0" {
		sig = 0 // only whether it could
	}
	fmt.Fprintf(w, "kill %d %d: %s\n", pid, sig, result(syscall.Kill(pid, sig)))
	fmt.Fprintf(w, "ptrace %d: %s\n", pid, result(seize(pid)))
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err == nil && len(b) == 0 {
		err = errors.New("empty")
	}
	fmt.Fprintf(w, "environ %d: %s\n", pid, result(err))
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err == nil {
		f.Close()
	}
	fmt.Fprintf(w, "mem %d: %s\n", pid, result(err))
}

// cgroupAncestors lists the directories above the worker's own cgroup in
// every hierarchy mounted here, up to each one's root.
func cgroupAncestors() []string {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	var dirs []string
	for line := range strings.SplitSeq(string(mi), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		mount, opts := f[4], ","+g[2]+","
		for l := range strings.SplitSeq(strings.TrimSpace(string(cg)), "\n") {
			parts := strings.SplitN(l, ":", 3)
			if len(parts) != 3 {
				continue
			}
			match := g[0] == "cgroup2" && parts[1] == ""
			for _, c := range strings.Split(parts[1], ",") {
				match = match || g[0] == "cgroup" && c != "" && strings.Contains(opts, ","+c+",")
			}
			if !match {
				continue
			}
			for d := filepath.Join(mount, parts[2]); d != mount && strings.HasPrefix(d, mount+"/"); {
				d = filepath.Dir(d)
				dirs = append(dirs, d)
			}
		}
	}
	return dirs
}

// forgeHandshake prints a handshake naming what mode says (see the package
// documentation), and waits to be killed.
func forgeHandshake(mode string) {
	kind, target, _ := strings.Cut(mode, ":")
	dir := os.Getenv("PLUGIN_UNIX_SOCKET_DIR")
	network, addr := "unix", target
	var err error
	switch kind {
	case "dotdot":
		addr = dir + strings.Repeat("/..", strings.Count(dir, "/")) + target
	case "symlink":
		addr = filepath.Join(dir, "plugin")
		err = os.Symlink(target, addr)
	case "dirlink":
		err = os.Symlink(filepath.Dir(target), filepath.Join(dir, "sub"))
		addr = filepath.Join(dir, "sub", filepath.Base(target))
	case "tcp":
		network, addr = "tcp", "127.0.0.1:1"
	case "junk":
		addr = "\x00\x1b[31mjunk" + strings.Repeat("A", 300)
	case "file":
		addr = filepath.Join(dir, "plugin")
		err = os.WriteFile(addr, nil, 0o600)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
	}
	fmt.Printf("1|%d|%s|%s|netrpc|\n", ipc.ProtocolVersion, network, addr)
	for {
		time.Sleep(time.Hour)
	}
}

// flood writes lines as fast as it can, as a handler logging in a tight
// loop would, and reports what it wrote and the CPU time it took.
func flood(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	mb, err := strconv.Atoi(q.Get("mb"))
	if err != nil {
		mb = 5
	}
	lineLen, err := strconv.Atoi(q.Get("line"))
	if err != nil || lineLen < 1 {
		lineLen = 2
	}
	chunk, _ := strconv.Atoi(q.Get("chunk"))
	out := os.Stderr
	if q.Get("stream") == "stdout" {
		out = os.Stdout
	}
	line := append(bytes.Repeat([]byte("x"), lineLen-1), '\n')
	total := mb << 20
	n := total / lineLen
	per := max(1, chunk/lineLen)
	buf := bytes.Repeat(line, per)
	c0 := cpuTime()
	written := 0
	for written < n {
		k := min(per, n-written)
		if _, err := out.Write(buf[:k*lineLen]); err != nil {
			fmt.Fprintf(w, "flood: error: %v\n", err)
			return
		}
		written += k
	}
	fmt.Fprintf(w, "flood: lines=%d bytes=%d cpu_us=%d\n", written, written*lineLen, (cpuTime() - c0).Microseconds())
}

// inherited reports every descriptor the worker holds above standard
// error: its slot sockets ("slot"), and for any other its target and what
// reading and writing it achieved (only when poll says it would not block).
func inherited(w http.ResponseWriter, r *http.Request) {
	slots := rawslots.FDs()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fmt.Fprintf(w, "inherited: error: %v\n", err)
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own descriptor, closed since
		}
		if slices.Contains(slots, fd) {
			fmt.Fprintf(w, "fd %d slot\n", fd)
			continue
		}
		base := filepath.Base(target)
		if strings.HasPrefix(target, "anon_inode:") ||
			strings.HasPrefix(target, "/sys/fs/cgroup/") && (base == "cpu.max" || base == "cpu.cfs_quota_us" || base == "cpu.cfs_period_us") {
			// The Go runtime's own (epoll, eventfd; the CPU limit it
			// sizes GOMAXPROCS by): made here, not inherited.
			fmt.Fprintf(w, "fd %d target=%s runtime\n", fd, target)
			continue
		}
		read, wrote := "would block", "would block"
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
		if _, err := unix.Poll(pfd, 0); err == nil {
			if pfd[0].Revents&unix.POLLIN != 0 {
				b := make([]byte, 64)
				n, err := unix.Read(fd, b)
				read = result(err)
				if err == nil {
					read = fmt.Sprintf("ok %q", b[:max(n, 0)])
				}
			}
			if pfd[0].Revents&unix.POLLOUT != 0 {
				_, err := unix.Write(fd, []byte("forged by a worker\n"))
				wrote = result(err)
			}
		}
		fmt.Fprintf(w, "fd %d target=%s read=%s write=%s\n", fd, target, read, wrote)
	}
	fmt.Fprintf(w, "inherited: %d slots\n", len(slots))
}
