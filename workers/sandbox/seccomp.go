package sandbox

import (
	"fmt"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The seccomp filter of a sandboxed worker: a deny list (everything else is
// allowed) of the system calls that reach outside the sandbox or into the
// kernel's riskiest corners. Denied calls fail with EPERM, so that a worker
// can tell; calls through another architecture's ABI (i386's int 0x80 or
// x32 on amd64, which a deny list by number would miss) fail with ENOSYS.
//
// Hand-assembled with golang.org/x/net/bpf rather than a seccomp library:
// github.com/elastic/go-seccomp-bpf (the pure-Go candidate) builds a filter
// for one architecture whose mismatch branch takes the default action,
// which for a deny list is "allow", so i386 system calls would pass.

const (
	seccompRetErrno = 0x00050000
	seccompRetAllow = 0x7fff0000
)

// deniedCommon are denied on every supported architecture.
var deniedCommon = []uint32{
	// Inspecting or controlling other processes.
	unix.SYS_PTRACE, unix.SYS_PROCESS_VM_READV, unix.SYS_PROCESS_VM_WRITEV, unix.SYS_KCMP, unix.SYS_PIDFD_GETFD,
	// Mounts, namespaces, the root directory.
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT, unix.SYS_CHROOT, unix.SYS_MOVE_MOUNT, unix.SYS_OPEN_TREE,
	unix.SYS_FSOPEN, unix.SYS_FSCONFIG, unix.SYS_FSMOUNT, unix.SYS_FSPICK, unix.SYS_MOUNT_SETATTR,
	unix.SYS_UNSHARE, unix.SYS_SETNS,
	// Kernel modules, kexec, reboot, swap, accounting, quotas.
	unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE, unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD,
	unix.SYS_REBOOT, unix.SYS_SWAPON, unix.SYS_SWAPOFF, unix.SYS_ACCT, unix.SYS_QUOTACTL, unix.SYS_QUOTACTL_FD,
	// Keyrings.
	unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY, unix.SYS_KEYCTL,
	// Large kernel attack surface a handler does not need.
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN, unix.SYS_USERFAULTFD,
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	unix.SYS_OPEN_BY_HANDLE_AT, unix.SYS_NAME_TO_HANDLE_AT, unix.SYS_LOOKUP_DCOOKIE, unix.SYS_NFSSERVCTL,
	// Clocks, host names, the kernel log, terminals.
	unix.SYS_SETTIMEOFDAY, unix.SYS_CLOCK_SETTIME, unix.SYS_CLOCK_ADJTIME, unix.SYS_ADJTIMEX,
	unix.SYS_SETHOSTNAME, unix.SYS_SETDOMAINNAME, unix.SYS_SYSLOG, unix.SYS_VHANGUP,
}

// nsCloneFlags are the clone flags that create namespaces: denied on clone
// (clone3, whose flags a filter cannot read, fails with ENOSYS, and Go and
// glibc fall back to clone).
const nsCloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// filter assembles the program. seccomp_data: nr at 0, arch at 4, args at
// 16 (8 bytes each; the low half of args[0] is at 16 on little-endian).
func filter() []bpf.Instruction {
	errno := func(e syscall.Errno) bpf.Instruction { return bpf.RetConstant{Val: seccompRetErrno | uint32(e)} }
	p := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: auditArch, SkipTrue: 1},
		errno(unix.ENOSYS),
		bpf.LoadAbsolute{Off: 0, Size: 4},
	}
	if foreignNrBit != 0 {
		p = append(p, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: foreignNrBit, SkipFalse: 1}, errno(unix.ENOSYS))
	}
	for _, nr := range append(append([]uint32(nil), deniedCommon...), deniedArch...) {
		p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipFalse: 1}, errno(unix.EPERM))
	}
	p = append(p,
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE3, SkipFalse: 1},
		errno(unix.ENOSYS),
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE, SkipFalse: 3},
		bpf.LoadAbsolute{Off: 16, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: nsCloneFlags, SkipFalse: 1},
		errno(unix.EPERM),
		bpf.RetConstant{Val: seccompRetAllow},
	)
	return p
}

// loadSeccomp installs the filter on every thread of the process
// (no_new_privs must be set first).
func loadSeccomp() error {
	raw, err := bpf.Assemble(filter())
	if err != nil {
		return err
	}
	prog := make([]unix.SockFilter, len(raw))
	for i, in := range raw {
		prog[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	switch {
	case e != 0:
		return e
	case r != 0:
		return fmt.Errorf("thread %d could not take the filter", r)
	}
	return nil
}
