// Command chaos is the worker of the chaos soak (bench/soak): every request
// chooses its own fate with the query parameter fault, so the soak decides
// the mix and knows the status each request must get.
//
//	fault=none (or absent)   200; the body is "ok TOKEN CRC PID\n" followed by
//	                         size bytes of a pattern derived from TOKEN; a
//	                         request body is read and its CRC-32 reported as
//	                         "body CRC LEN\n" after the first line; with
//	                         echo=1, the body is the request body itself
//	fault=exit-after         the same 200, then the worker dies between two
//	                         requests: when it next tries to read its slot
//	                         connection, before it reads a byte (how=racy:
//	                         exits right after the response; see exitAfter)
//	fault=junk-after         the same 200, then, once the response is out,
//	                         the worker writes a response frame nobody
//	                         asked for on its idle slot and logs "chaos:
//	                         junk written"
//	fault=crash&how=H        dies during the request: exit (os.Exit(3)),
//	                         panic (an unrecovered panic in a goroutine), segv
//	                         (a nil pointer dereference in a goroutine), kill
//	                         (SIGKILL to itself), abort (SIGABRT to itself)
//	fault=hang               never answers and ignores cancellation
//	fault=oom                allocates and touches memory 1 MiB at a time
//	                         until its memory limit kills it (see below)
//	fault=malformed&how=H    writes a bad frame on its slot connection, behind
//	                         the sdk's back: junk (text), giant (a 2 GiB length
//	                         prefix), kind (a frame of an unknown kind),
//	                         msgpack (a response frame with invalid msgpack),
//	                         truncated (half a frame, then exit)
//	fault=panic              the handler panics: the sdk answers 500 and the
//	                         worker lives on
//
// A faulty request is first logged on stderr, "chaos: fault KIND ID NS":
// its kind, request ID and the time (Unix nanoseconds) the worker took it.
//
// oom: the worker looks for its memory cgroup's limit (v2 memory.max, v1
// memory.limit_in_bytes), or, where the sandbox hides it, for
// CHAOS_MEMORY_LIMIT (a size such as 64M). With one (the dispatcher's
// --memory-limit), it
// locks its memory if allowed (mlockall) and allocates up to twice the
// limit, which the kernel never lets it reach; without one it allocates CHAOS_OOM_FALLBACK_MB (default 128) MiB, so that
// an unprivileged run does not eat the machine. Either way, if it is still
// alive at the end it logs that and exits with status 3. Its first line on
// stderr ("chaos: oom: ...") says which case it is in.
//
// The worker must run with --concurrency 1: malformed writes on every slot
// connection it has.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/childproc/dispatcher/internal/chaos"
	"github.com/childproc/dispatcher/internal/rawslots"
	"github.com/childproc/dispatcher/sdk"
	"golang.org/x/sys/unix"
)

// stderr is the process's standard error itself, which the dispatcher
// logs line by line: go-plugin swaps the os.Stderr variable for a pipe of
// its own until the sdk restores it, and a line in that pipe dies with the
// worker.
var stderr = os.NewFile(2, "/dev/stderr")

func main() {
	sdk.Serve(http.HandlerFunc(serve))
}

func serve(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := q.Get("fault")
	if f != "" && f != "none" {
		// When the worker took the request, for the soak's bound on the
		// answer: "chaos: fault KIND REQUEST-ID UNIX-NANOSECONDS".
		fmt.Fprintf(stderr, "chaos: fault %s %s %d\n", f, sdk.RequestID(r.Context()), time.Now().UnixNano())
	}
	switch f {
	case "", "none":
		healthy(w, r)
	case "exit-after":
		healthy(w, r)
		exitAfter(r, q.Get("how"))
	case "junk-after":
		healthy(w, r)
		ctx := r.Context()
		go func() {
			<-ctx.Done()
			unsolicited()
		}()
	case "crash":
		crash(q.Get("how"))
	case "hang":
		select {}
	case "oom":
		oom()
	case "malformed":
		malformed(q.Get("how"))
		<-r.Context().Done() // the dispatcher kills it; if not, the soak sees a 504
	case "panic":
		panic("chaos: handler panic, as asked")
	default:
		http.Error(w, "chaos: unknown fault "+strconv.Quote(f), http.StatusBadRequest)
	}
}

func healthy(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("echo") == "1" {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Chaos-Pid", strconv.Itoa(os.Getpid()))
		if _, err := io.Copy(w, r.Body); err != nil {
			panic(http.ErrAbortHandler) // the client must not take a short echo for a whole one
		}
		return
	}
	size, _ := strconv.Atoi(q.Get("size"))
	size = min(max(size, 0), 8<<20)
	var bodyCRC uint32
	bodyLen := int64(-1)
	if r.Method == http.MethodPost || r.Method == http.MethodPut {
		h := crc32.NewIEEE()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, "chaos: reading the body: "+err.Error(), http.StatusBadRequest)
			return
		}
		bodyCRC, bodyLen = h.Sum32(), n
	}
	b := chaos.HealthyBody(q.Get("token"), size, os.Getpid(), bodyCRC, bodyLen)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Header().Set("X-Chaos-Pid", strconv.Itoa(os.Getpid()))
	_, _ = w.Write(b)
}

// exitAfter makes the worker die once the response to r is out, before it
// reads another request.
//
// By default it installs a seccomp filter that kills the process (SIGSYS)
// the moment any of its threads calls read(2) on the slot connection: the
// response goes out, and the worker dies when the next request (or ping,
// or the end of the connection) makes the slot's reader wake up, before
// the read takes a byte. The dispatcher finds that request unread, exactly
// as after a worker that died while idle. (The slot's reader has already
// found the connection empty and waits in the poller when the handler
// runs, the worker running on one P; the filter needs no_new_privs, which
// the dispatcher sets on every worker, and amd64 or arm64.)
//
// "racy", or where the filter cannot be installed: exit (status 0) when
// the sdk cancels the request's context, just after it wrote the last
// frame. The slot's reader may take the next request first (when the Go
// scheduler hands the P to another thread during the write): that request
// then fails with the worker, by design.
func exitAfter(r *http.Request, how string) {
	if how != "racy" {
		err := killOnRead(rawslots.FDs())
		if err == nil {
			return
		}
		fmt.Fprintf(stderr, "chaos: exit-after: no seccomp filter (%v): exiting after the response instead\n", err)
	}
	ctx := r.Context()
	go func() {
		<-ctx.Done()
		os.Exit(0)
	}()
}

// killOnRead installs a seccomp filter, on every thread, that kills the
// process when it calls read(2) on one of fds.
func killOnRead(fds []int) error {
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	default:
		return fmt.Errorf("no filter for %s", runtime.GOARCH)
	}
	if len(fds) == 0 {
		return errors.New("no slot connection found")
	}
	const (
		ldAbs = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeqK  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		retK  = unix.BPF_RET | unix.BPF_K
	)
	// seccomp_data: nr at 0, arch at 4, args[0] at 16 (low half first).
	n := uint8(len(fds))
	prog := []unix.SockFilter{
		{Code: ldAbs, K: 4},
		{Code: jeqK, K: arch, Jt: 0, Jf: 3 + n}, // another ABI: allow
		{Code: ldAbs, K: 0},
		{Code: jeqK, K: uint32(unix.SYS_READ), Jt: 0, Jf: 1 + n}, // not read: allow
		{Code: ldAbs, K: 16},
	}
	for i, fd := range fds {
		prog = append(prog, unix.SockFilter{Code: jeqK, K: uint32(fd), Jt: n - uint8(i), Jf: 0}) // to kill
	}
	prog = append(prog,
		unix.SockFilter{Code: retK, K: unix.SECCOMP_RET_ALLOW},
		unix.SockFilter{Code: retK, K: unix.SECCOMP_RET_KILL_PROCESS},
	)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return errno
	}
	return nil
}

func crash(how string) {
	fmt.Fprintf(stderr, "chaos: crashing (%s), as asked\n", how)
	switch how {
	case "panic":
		go func() { panic("chaos: unrecovered panic in a goroutine, as asked") }()
	case "segv":
		go func() {
			var p *int
			*p = 1
		}()
	case "kill":
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "abort":
		_ = syscall.Kill(os.Getpid(), syscall.SIGABRT)
	default:
		os.Exit(3)
	}
	select {}
}

// sink keeps what oom allocates reachable.
var sink [][]byte

func oom() {
	limit, where := memoryLimit()
	want := int64(128) << 20
	if mb, err := strconv.Atoi(os.Getenv("CHAOS_OOM_FALLBACK_MB")); err == nil && mb > 0 {
		want = int64(mb) << 20
	}
	if limit > 0 {
		want = 2 * limit
		fmt.Fprintf(stderr, "chaos: oom: memory limit %d MiB (%s): allocating until it kills me\n", limit>>20, where)
		// Lock every page, present and future, so that the kernel cannot
		// make room by evicting the binary's own pages and reaches the kill
		// sooner. Without the privilege (CAP_IPC_LOCK or RLIMIT_MEMLOCK)
		// the allocation goes on unlocked.
		_ = unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE)
	} else {
		fmt.Fprintf(stderr, "chaos: oom: no memory limit: allocating %d MiB, then exiting\n", want>>20)
	}
	for got := int64(0); got < want; got += 1 << 20 {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		sink = append(sink, b)
	}
	if limit > 0 {
		fmt.Fprintf(stderr, "chaos: oom: still alive after %d MiB: the limit is not enforced; exiting\n", want>>20)
	}
	os.Exit(3)
}

// memoryLimit returns the limit of the worker's memory cgroup and the file
// it read, or 0 if it has none it can find (or one above 1 TiB: "max").
func memoryLimit() (int64, string) {
	for _, g := range chaos.OwnCgroups() {
		var file string
		switch {
		case g.V2:
			file = filepath.Join(g.Dir, "memory.max")
		case slices.Contains(g.Controllers, "memory"):
			file = filepath.Join(g.Dir, "memory.limit_in_bytes")
		default:
			continue
		}
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err == nil && n > 0 && n < 1<<40 {
			return n, file
		}
	}
	// In the sandbox no cgroup file is visible: whoever set the limit may
	// say it here (a size such as 64M).
	if v := os.Getenv("CHAOS_MEMORY_LIMIT"); v != "" {
		mult := int64(1)
		switch v[len(v)-1] {
		case 'K', 'k':
			mult, v = 1<<10, v[:len(v)-1]
		case 'M', 'm':
			mult, v = 1<<20, v[:len(v)-1]
		case 'G', 'g':
			mult, v = 1<<30, v[:len(v)-1]
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			return n * mult, "CHAOS_MEMORY_LIMIT"
		}
	}
	return 0, ""
}

// unsolicited writes a well-formed response frame, for an exchange that
// never was, on the worker's slot connections.
func unsolicited() {
	// [id 999999, status 200, header nil, body "junk", eof true, trailer nil]
	payload := []byte{0x96, 0xce, 0x00, 0x0f, 0x42, 0x3f, 0xcc, 200, 0xc0, 0xc4, 4, 'j', 'u', 'n', 'k', 0xc3, 0xc0}
	msg := binary.BigEndian.AppendUint32(nil, uint32(1+len(payload)))
	msg = append(append(msg, 4), payload...)
	for _, fd := range rawslots.FDs() {
		_, _ = unix.Write(fd, msg)
	}
	fmt.Fprintln(stderr, "chaos: junk written")
}

// malformed writes a bad frame on the worker's slot connections: the
// unnamed, connected stream sockets among its descriptors.
func malformed(how string) {
	var msg []byte
	frame := func(kind byte, payload ...byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(1+len(payload)))
		return append(append(b, kind), payload...)
	}
	switch how {
	case "giant":
		msg = []byte{0x7f, 0xff, 0xff, 0xff, 4}
	case "kind":
		msg = frame(0x63, 0x90)
	case "msgpack":
		msg = frame(4, 0xc1, 0xc1, 0xc1) // 0xc1 is never used in msgpack
	case "truncated":
		msg = binary.BigEndian.AppendUint32(nil, 100)
		msg = append(msg, 4, 0x96)
	default:
		msg = []byte("this is not a frame, this is chaos\n")
	}
	fmt.Fprintf(stderr, "chaos: writing a malformed frame (%s), as asked\n", how)
	for _, fd := range rawslots.FDs() {
		_, _ = unix.Write(fd, msg)
	}
	if how == "truncated" {
		os.Exit(3) // what was written stays readable: the rest never comes
	}
}
