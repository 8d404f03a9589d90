package shim

import (
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompAllowed are the system calls a sandboxed worker may make, on every
// supported architecture, whatever their arguments: what the Go runtime,
// glibc (dynamic binaries) and Node.js (libuv, V8) need to serve requests
// over the descriptors they inherit, and what the sandbox's init needs to
// start the worker. Anything else fails with ENOSYS, as on a kernel that
// lacks it: system calls added to Linux later are denied until listed
// here, and libraries fall back where an older call does the same (clone3
// to clone, for one).
//
// Left out on purpose (compare Docker's default profile, which allows some
// of them with capabilities a worker never has): ptrace, process_vm_*,
// kcmp, pidfd_getfd (other processes' memory and descriptors); the mount
// family, chroot, unshare, setns (namespaces and mounts); bpf,
// perf_event_open, userfaultfd, io_uring_*, keyctl, add_key, request_key
// (large kernel attack surface); module, kexec, reboot, swap, acct, quota,
// clock and host name setting, syslog; modify_ldt, iopl, ioperm;
// open_by_handle_at, name_to_handle_at (escape through file handles).
var seccompAllowed = []string{
	// Descriptors, reading and writing.
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"lseek", "close", "close_range", "dup", "dup3", "fcntl", "ioctl", "flock",
	"sendfile", "splice", "tee", "vmsplice", "copy_file_range",
	"fsync", "fdatasync", "sync_file_range", "fallocate", "ftruncate", "truncate", "fadvise64", "readahead",
	// Paths, by the *at forms (the only ones arm64 has). statx,
	// faccessat2, fchmodat2, openat2: libuv and glibc use them first.
	"openat", "openat2", "newfstatat", "fstat", "statx", "statfs", "fstatfs", "faccessat", "faccessat2",
	"readlinkat", "getdents64", "getcwd", "chdir", "fchdir", "umask",
	"mkdirat", "mknodat", "unlinkat", "renameat", "renameat2", "linkat", "symlinkat",
	"fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "utimensat",
	"getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
	"setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
	"inotify_init1", "inotify_add_watch", "inotify_rm_watch",
	"memfd_create", // V8, and Go's os/exec where it copies a binary
	// Waiting: Go's netpoller and libuv use epoll, eventfd and pipes.
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "ppoll", "pselect6",
	"eventfd2", "pipe2", "signalfd4", "timerfd_create", "timerfd_settime", "timerfd_gettime",
	// Memory. pkey_*: V8 protects its code space with memory protection
	// keys.
	"brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
	"mlock", "mlock2", "munlock", "mlockall", "munlockall", "membarrier",
	"pkey_alloc", "pkey_free", "pkey_mprotect",
	// Threads and scheduling (clone is checked below).
	"futex", "set_robust_list", "rseq", "gettid", "set_tid_address",
	"sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
	"sched_getscheduler", "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
	"sched_rr_get_interval", "sched_getattr", "sched_setattr", "getpriority", "setpriority",
	// Processes, all inside the sandbox's PID namespace. pidfd_*: Go's
	// os/exec waits and signals through them.
	"execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill", "tkill", "tgkill",
	"getpid", "getppid", "getpgid", "setpgid", "getsid", "setsid", "pidfd_open", "pidfd_send_signal",
	// Signals.
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending",
	"rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "restart_syscall",
	// Identity and limits: the init takes the worker's identity before
	// executing it; capabilities can only be dropped.
	"getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
	"setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid",
	"capget", "capset", "prctl", "getrlimit", "setrlimit", "prlimit64", "getrusage", "times",
	// Clocks and timers: reading them and sleeping, never setting them.
	"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
	"getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
	// The system, read-only.
	"uname", "sysinfo", "getrandom", "getcpu",
	// Sockets: what a descriptor allows (socket and socketpair are
	// checked below).
	"bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "setsockopt", "getsockopt", "shutdown",
	// System V IPC, private to the sandbox's IPC namespace.
	"shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
	"msgget", "msgsnd", "msgrcv", "msgctl",
	// Confining itself further.
	"seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
}

// seccompChecked are allowed only with the arguments their check accepts.
// Each check starts with nothing loaded and returns on every path;
// network is the sandbox's AllowNetwork.
var seccompChecked = map[string]func(network bool) []bpf.Instruction{
	// Threads and processes, never new namespaces. (clone3, whose flags
	// sit in memory a filter cannot read, is not listed: glibc and Go
	// fall back to clone.)
	"clone": func(bool) []bpf.Instruction {
		return []bpf.Instruction{
			loadArg(0),
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: nsCloneFlags, SkipFalse: 1},
			retErrno(unix.EPERM),
			retAllow,
		}
	},
	// Unix sockets; the Internet and routing netlink (which Go's
	// net.Interfaces and glibc's getaddrinfo read) only with the network.
	// No vsock, packet, other netlink protocols or anything else.
	"socket": func(network bool) []bpf.Instruction {
		p := append([]bpf.Instruction{loadArg(0)}, allowIf(unix.AF_UNIX)...)
		if network {
			p = append(p, allowIf(unix.AF_INET)...)
			p = append(p, allowIf(unix.AF_INET6)...)
			p = append(p,
				bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.AF_NETLINK, SkipFalse: 4},
				loadArg(2),
				bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.NETLINK_ROUTE, SkipFalse: 1},
				retAllow,
				retErrno(unix.EPROTONOSUPPORT),
			)
		}
		return append(p, retErrno(unix.EAFNOSUPPORT))
	},
	"socketpair": func(bool) []bpf.Instruction {
		return append(append([]bpf.Instruction{loadArg(0)}, allowIf(unix.AF_UNIX)...), retErrno(unix.EAFNOSUPPORT))
	},
	// The default persona only, set or queried: no 32-bit address space,
	// no address randomization turned off, no READ_IMPLIES_EXEC.
	"personality": func(bool) []bpf.Instruction {
		p := append([]bpf.Instruction{loadArg(0)}, allowIf(0 /* PER_LINUX */)...)
		p = append(p, allowIf(0xffffffff)...)
		return append(p, retErrno(unix.EPERM))
	},
}

// nsCloneFlags are the clone flags that create namespaces.
const nsCloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// The architectures with a filter. Their tables are compiled on every
// architecture, so that the tests check both anywhere. Functions, not
// variables: the dispatcher builds a sandbox's filter once, and a shim
// never does.
func archAMD64() *seccompArch {
	return &seccompArch{
		name:       "amd64",
		audit:      unix.AUDIT_ARCH_X86_64,
		foreignBit: 0x40000000, // __X32_SYSCALL_BIT: x32 calls share the audit arch
		nr:         sysnumAMD64(),
		// The older path and descriptor calls arm64 never had, which
		// amd64 programs still make.
		allowed: []string{
			"open", "creat", "stat", "lstat", "access", "readlink", "getdents", "mkdir", "rmdir", "mknod",
			"unlink", "rename", "link", "symlink", "chmod", "chown", "lchown", "utime", "utimes", "futimesat",
			"dup2", "pipe", "select", "poll", "epoll_create", "epoll_wait", "eventfd", "signalfd", "inotify_init",
			"fork", "vfork", "pause", "alarm", "time", "getpgrp",
			"arch_prctl", // thread pointer (Go runtime, glibc)
		},
	}
}

func archARM64() *seccompArch {
	return &seccompArch{
		name:  "arm64",
		audit: unix.AUDIT_ARCH_AARCH64,
		nr:    sysnumARM64(),
	}
}
