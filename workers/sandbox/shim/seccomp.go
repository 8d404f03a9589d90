package shim

import (
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"syscall"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The seccomp filter of a sandboxed worker: an allow list (seccomp_table.go).
// A system call not listed fails with ENOSYS; one whose arguments its check
// refuses fails with EPERM, or for a socket with EAFNOSUPPORT (the family)
// or EPROTONOSUPPORT (a netlink protocol).
// Calls through another architecture's ABI (i386's int 0x80 or x32 on
// amd64) fail with ENOSYS. The filter never kills: a call a worker needs
// and the list lacks shows up as an error the worker reports.
//
// Hand-assembled with golang.org/x/net/bpf rather than a seccomp library:
// github.com/elastic/go-seccomp-bpf (the pure-Go candidate) builds a filter
// for one architecture whose mismatch branch takes the default action, and
// the program here is small: the architecture check, a binary search over
// the ranges of system call numbers that share an action, and the argument
// checks. Calls allowed whatever their arguments take only paths the
// kernel can evaluate once for all (its seccomp action cache, Linux 5.11),
// so they cost nothing per call.

const (
	seccompRetErrno = 0x00050000
	seccompRetAllow = 0x7fff0000
)

// seccompArch is one architecture's system call ABI as the filter sees it.
type seccompArch struct {
	name       string
	audit      uint32            // seccomp_data.arch of native calls (AUDIT_ARCH_*)
	foreignBit uint32            // a number bit marking another ABI under the same audit arch, or 0
	nr         map[string]uint32 // system call numbers by name
	allowed    []string          // allowed on this architecture besides seccompAllowed
}

// loadArg loads the low half of argument i (seccomp_data: nr at 0, arch at
// 4, args at 16, 8 bytes each, little-endian on both architectures). The
// checked calls take int or unsigned int arguments, of which the kernel
// reads only the low half too.
func loadArg(i uint32) bpf.Instruction { return bpf.LoadAbsolute{Off: 16 + 8*i, Size: 4} }

var retAllow = bpf.RetConstant{Val: seccompRetAllow}

func retErrno(e syscall.Errno) bpf.Instruction {
	return bpf.RetConstant{Val: seccompRetErrno | uint32(e)}
}

// allowIf returns at once allowing the call if the loaded value is v.
func allowIf(v uint32) []bpf.Instruction {
	return []bpf.Instruction{bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipFalse: 1}, retAllow}
}

// toCheck stands for a jump to a checked call's check until the checks are
// placed.
type toCheck int

func (toCheck) Assemble() (bpf.RawInstruction, error) {
	return bpf.RawInstruction{}, errors.New("unresolved jump to an argument check")
}

// Actions of a range of system call numbers: not listed, allowed, or
// checked (ruleCheck+i: by the check of the i-th name of seccompChecked in
// sorted order).
const (
	ruleDeny = iota
	ruleAllow
	ruleCheck
)

// filter assembles the program for arch; network is the sandbox's
// AllowNetwork.
func filter(arch *seccompArch, network bool) ([]bpf.Instruction, error) {
	rules := map[uint32]int{}
	set := func(name string, rule int) error {
		nr, ok := arch.nr[name]
		if !ok {
			return fmt.Errorf("seccomp: no system call %q on %s", name, arch.name)
		}
		if _, dup := rules[nr]; dup {
			return fmt.Errorf("seccomp: %q listed twice", name)
		}
		rules[nr] = rule
		return nil
	}
	for _, name := range append(slices.Clone(seccompAllowed), arch.allowed...) {
		if err := set(name, ruleAllow); err != nil {
			return nil, err
		}
	}
	checked := slices.Sorted(maps.Keys(seccompChecked))
	for i, name := range checked {
		if err := set(name, ruleCheck+i); err != nil {
			return nil, err
		}
	}

	// The numbers as ranges, from 0 up: segs[i] covers [start, the next
	// one's start).
	type seg struct {
		start uint32
		rule  int
	}
	var segs []seg
	add := func(start uint32, rule int) {
		if n := len(segs); n > 0 && segs[n-1].start == start {
			segs = segs[:n-1]
		}
		if n := len(segs); n > 0 && segs[n-1].rule == rule {
			return
		}
		segs = append(segs, seg{start, rule})
	}
	add(0, ruleDeny)
	next := uint32(0)
	for _, nr := range slices.Sorted(maps.Keys(rules)) {
		if nr != next {
			add(next, ruleDeny)
		}
		add(nr, rules[nr])
		next = nr + 1
	}
	add(next, ruleDeny)

	// A binary search over the ranges, the number loaded. A conditional
	// jump skips at most 255 instructions: past that, through a Jump.
	var search func(lo, hi int) []bpf.Instruction
	search = func(lo, hi int) []bpf.Instruction {
		if lo == hi {
			switch r := segs[lo].rule; r {
			case ruleDeny:
				return []bpf.Instruction{retErrno(unix.ENOSYS)}
			case ruleAllow:
				return []bpf.Instruction{retAllow}
			default:
				return []bpf.Instruction{toCheck(r - ruleCheck)}
			}
		}
		mid := (lo + hi + 1) / 2
		left, right := search(lo, mid-1), search(mid, hi)
		var p []bpf.Instruction
		if len(left) <= 255 {
			p = append(p, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: segs[mid].start, SkipTrue: uint8(len(left))})
		} else {
			p = append(p, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: segs[mid].start, SkipFalse: 1},
				bpf.Jump{Skip: uint32(len(left))})
		}
		return append(append(p, left...), right...)
	}

	p := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: arch.audit, SkipTrue: 1},
		retErrno(unix.ENOSYS),
		bpf.LoadAbsolute{Off: 0, Size: 4},
	}
	if arch.foreignBit != 0 {
		p = append(p, bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: arch.foreignBit, SkipFalse: 1}, retErrno(unix.ENOSYS))
	}
	p = append(p, search(0, len(segs)-1)...)
	start := make([]int, len(checked))
	for i, name := range checked {
		start[i] = len(p)
		p = append(p, seccompChecked[name](network)...)
	}
	for i, in := range p {
		if c, ok := in.(toCheck); ok {
			p[i] = bpf.Jump{Skip: uint32(start[c] - i - 1)}
		}
	}
	if len(p) > 4096 { // BPF_MAXINSNS
		return nil, fmt.Errorf("seccomp: the program has %d instructions, too many", len(p))
	}
	return p, nil
}

// FilterSupported reports whether this architecture has a seccomp filter.
func FilterSupported() bool { return auditArch != 0 }

// Filter returns the seccomp program of a sandbox's workers on this
// architecture, assembled (struct sock_filter, in native byte order);
// network is the sandbox's AllowNetwork. The dispatcher builds it once and
// hands it to every shim (Spec.Filter).
func Filter(network bool) ([]byte, error) {
	if nativeSeccomp == nil {
		return nil, errors.New("no filter for GOARCH " + runtime.GOARCH)
	}
	insns, err := filter(nativeSeccomp(), network)
	if err != nil {
		return nil, err
	}
	raw, err := bpf.Assemble(insns)
	if err != nil {
		return nil, err
	}
	prog := make([]unix.SockFilter, len(raw))
	for i, in := range raw {
		prog[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&prog[0])), len(prog)*int(unsafe.Sizeof(prog[0]))), nil
}

// loadSeccomp installs the program Filter made on every thread of the
// process (no_new_privs must be set first).
func loadSeccomp(b []byte) error {
	const size = int(unsafe.Sizeof(unix.SockFilter{}))
	if len(b) == 0 || len(b)%size != 0 || len(b)/size > 4096 {
		return fmt.Errorf("bad filter of %d bytes", len(b))
	}
	prog := make([]unix.SockFilter, len(b)/size)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&prog[0])), len(b)), b)
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
