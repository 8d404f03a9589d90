package shim

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompData lays out struct seccomp_data as the filter sees it on a
// little-endian machine. The kernel loads words in native order, x/net/bpf's
// interpreter in network order: each 32-bit word is stored big-endian, with
// the low half of an argument first, where a little-endian load finds it.
func seccompData(arch, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[20+8*i:], uint32(a>>32))
	}
	return b
}

func errnoRet(e syscall.Errno) uint32 { return seccompRetErrno | uint32(e) }

func retName(v uint32) string {
	switch {
	case v == seccompRetAllow:
		return "allow"
	case v&0xffff0000 == seccompRetErrno:
		return "errno " + unix.ErrnoName(syscall.Errno(v&0xffff))
	}
	return fmt.Sprintf("%#x", v)
}

type seccompVM struct {
	t    *testing.T
	arch *seccompArch
	vm   *bpf.VM
}

func newSeccompVM(t *testing.T, arch *seccompArch, network bool) *seccompVM {
	t.Helper()
	p, err := filter(arch, network)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bpf.Assemble(p); err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(p)
	if err != nil {
		t.Fatal(err)
	}
	return &seccompVM{t, arch, vm}
}

// run returns the filter's verdict on a native call of nr.
func (v *seccompVM) run(nr uint32, args ...uint64) uint32 {
	return v.runArch(v.arch.audit, nr, args...)
}

func (v *seccompVM) runArch(audit, nr uint32, args ...uint64) uint32 {
	v.t.Helper()
	got, err := v.vm.Run(seccompData(audit, nr, args...))
	if err != nil {
		v.t.Fatal(err)
	}
	return uint32(got)
}

func (v *seccompVM) check(what string, want uint32, nr uint32, args ...uint64) {
	v.t.Helper()
	if got := v.run(nr, args...); got != want {
		v.t.Errorf("%s: %s, want %s", what, retName(got), retName(want))
	}
}

// TestSeccompFilter runs the assembled filter of each architecture in
// x/net/bpf's interpreter, with and without the network.
func TestSeccompFilter(t *testing.T) {
	for _, arch := range []*seccompArch{archAMD64(), archARM64()} {
		for _, network := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/network=%v", arch.name, network), func(t *testing.T) {
				testSeccompArch(t, arch, network)
			})
		}
	}
}

func testSeccompArch(t *testing.T, arch *seccompArch, network bool) {
	v := newSeccompVM(t, arch, network)
	nr := func(name string) uint32 {
		t.Helper()
		n, ok := arch.nr[name]
		if !ok {
			t.Fatalf("no %s on %s", name, arch.name)
		}
		return n
	}
	enosys, eperm, eafnosupport := errnoRet(unix.ENOSYS), errnoRet(unix.EPERM), errnoRet(unix.EAFNOSUPPORT)

	// Every number up to well past the last one assigned: allowed if
	// listed, ENOSYS if not (the checked calls are checked below).
	listed := map[uint32]string{}
	for _, name := range slices.Concat(seccompAllowed, arch.allowed, slices.Collect(maps.Keys(seccompChecked))) {
		listed[nr(name)] = name
	}
	for n := uint32(0); n < 2048; n++ {
		want := enosys
		if name, ok := listed[n]; ok {
			if seccompChecked[name] != nil {
				continue
			}
			want = seccompRetAllow
		}
		v.check(fmt.Sprintf("system call %d (%s)", n, listed[n]), want, n)
	}
	for _, n := range []uint32{467 /* open_tree_attr, Linux 6.15 */, 1 << 20, 0x3fffffff, 0x7fffffff, 0xffffffff} {
		v.check(fmt.Sprintf("unassigned or new system call %d", n), enosys, n)
	}
	for _, name := range seccompDenied {
		if n, ok := arch.nr[name]; ok {
			v.check(name, enosys, n)
		}
	}

	// Another ABI's calls.
	for _, audit := range []uint32{unix.AUDIT_ARCH_I386, unix.AUDIT_ARCH_ARM, arch.audit ^ 1} {
		if audit == arch.audit {
			continue
		}
		if got := v.runArch(audit, nr("read")); got != enosys {
			t.Errorf("read through audit arch %#x: %s, want ENOSYS", audit, retName(got))
		}
	}
	if arch.foreignBit != 0 {
		v.check("x32 read", enosys, arch.foreignBit|nr("read"))
		v.check("x32 ptrace", enosys, arch.foreignBit|nr("ptrace"))
	}

	// clone: threads and processes, no namespaces.
	thread := uint64(unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID)
	v.check("clone thread", seccompRetAllow, nr("clone"), thread)
	v.check("clone thread, high half set", seccompRetAllow, nr("clone"), thread|0xffffffff00000000)
	v.check("clone vfork", seccompRetAllow, nr("clone"), unix.CLONE_VM|unix.CLONE_VFORK|unix.CLONE_PIDFD|uint64(unix.SIGCHLD))
	for _, f := range []uint64{unix.CLONE_NEWNS, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWUSER, unix.CLONE_NEWPID, unix.CLONE_NEWNET, unix.CLONE_NEWCGROUP} {
		v.check(fmt.Sprintf("clone with namespace flag %#x", f), eperm, nr("clone"), f|uint64(unix.SIGCHLD))
	}

	// socket and socketpair: the family (and netlink's protocol).
	inet := uint32(seccompRetAllow)
	if !network {
		inet = eafnosupport
	}
	for _, tc := range []struct {
		name     string
		domain   uint64
		protocol uint64
		want     uint32
	}{
		{"AF_UNIX", unix.AF_UNIX, 0, seccompRetAllow},
		{"AF_UNIX, high half set", 1<<32 | unix.AF_UNIX, 0, seccompRetAllow},
		{"AF_INET", unix.AF_INET, 0, inet},
		{"AF_INET6", unix.AF_INET6, 0, inet},
		{"AF_NETLINK route", unix.AF_NETLINK, unix.NETLINK_ROUTE, inet},
		{"AF_NETLINK audit", unix.AF_NETLINK, unix.NETLINK_AUDIT, map[bool]uint32{false: eafnosupport, true: errnoRet(unix.EPROTONOSUPPORT)}[network]},
		{"AF_NETLINK kobject uevent", unix.AF_NETLINK, unix.NETLINK_KOBJECT_UEVENT, map[bool]uint32{false: eafnosupport, true: errnoRet(unix.EPROTONOSUPPORT)}[network]},
		{"AF_VSOCK", unix.AF_VSOCK, 0, eafnosupport},
		{"AF_PACKET", unix.AF_PACKET, 0, eafnosupport},
		{"AF_ALG", unix.AF_ALG, 0, eafnosupport},
		{"AF_KEY", unix.AF_KEY, 0, eafnosupport},
		{"AF_BLUETOOTH", unix.AF_BLUETOOTH, 0, eafnosupport},
		{"AF_XDP", unix.AF_XDP, 0, eafnosupport},
	} {
		v.check("socket "+tc.name, tc.want, nr("socket"), tc.domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, tc.protocol)
	}
	v.check("socketpair AF_UNIX", seccompRetAllow, nr("socketpair"), unix.AF_UNIX, unix.SOCK_STREAM)
	v.check("socketpair AF_INET", eafnosupport, nr("socketpair"), unix.AF_INET, unix.SOCK_STREAM)

	// personality: the default persona, or the query.
	v.check("personality(PER_LINUX)", seccompRetAllow, nr("personality"), 0)
	v.check("personality query", seccompRetAllow, nr("personality"), 0xffffffff)
	for _, p := range []uint64{0x0008 /* PER_LINUX32 */, 0x0040000 /* ADDR_NO_RANDOMIZE */, 0x0400000 /* READ_IMPLIES_EXEC */, 0x0800000 /* ADDR_LIMIT_32BIT */} {
		v.check(fmt.Sprintf("personality(%#x)", p), eperm, nr("personality"), p)
	}
}

// TestSeccompLongJumps checks the search where a subtree is longer than a
// conditional jump reaches: an architecture whose every listed call stands
// alone.
func TestSeccompLongJumps(t *testing.T) {
	arch := &seccompArch{name: "sparse", audit: unix.AUDIT_ARCH_X86_64, nr: map[string]uint32{}}
	names := slices.Concat(slices.Collect(maps.Keys(seccompChecked)), seccompAllowed)
	for i, name := range names {
		arch.nr[name] = uint32(3 * i)
	}
	checked := uint32(len(seccompChecked))
	v := newSeccompVM(t, arch, false)
	for n := uint32(0); n < uint32(3*len(names)+10); n++ {
		want := errnoRet(unix.ENOSYS)
		if n/3 < checked {
			continue
		}
		if n%3 == 0 && n/3 < uint32(len(names)) {
			want = seccompRetAllow
		}
		v.check(fmt.Sprint("system call ", n), want, n)
	}
	v.check("clone new user ns", errnoRet(unix.EPERM), arch.nr["clone"], unix.CLONE_NEWUSER)
}

// TestSeccompTables checks that every name is a system call of each
// architecture, listed once.
func TestSeccompTables(t *testing.T) {
	for _, arch := range []*seccompArch{archAMD64(), archARM64()} {
		if _, err := filter(arch, true); err != nil {
			t.Errorf("%s: %v", arch.name, err)
		}
	}
}
