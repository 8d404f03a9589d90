// Command startcost measures what one process per request costs in CPU, by
// kind of process, each started as its server starts it, with PATH as its
// only environment variable:
//
//	node     node -e 0: a bare Node.js start
//	fork     the fork baseline's child (forkchild.js), as fork.js runs it: an
//	         IPC channel on descriptor 3, one request message, its reply;
//	         killed then
//	worker   an sdk worker (worker.js, or -worker FILE), as the dispatcher
//	         runs it in oneshot mode: the handshake line, a ping, one GET on
//	         its slot; killed then
//	alt      the same with -alt FILE (another build of the sdk)
//
// Kinds are measured in turn, -n times each, and the median and the
// quartiles of each process's CPU time (user and system, from its rusage:
// every thread's) are printed.
//
//	go run ./bench/node/startcost [-n 20] [-kinds node,fork,worker] [-worker FILE] [-alt FILE]
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

const limit = 30 * time.Second // each process's whole run

var env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}

var workerEnv = []string{
	"DISPATCHER_WORKER_COOKIE=b6f3f1c4e0a94f3c9d3c2a7e5b1d8f60",
	"DISPATCHER_IPC_FDS=3",
	"DISPATCHER_IPC_MAX_FRAME=1048576",
	"DISPATCHER_IPC_DEPTH=1",
	"DISPATCHER_IPC_FEATURES=informational,head-ack,wide-window,continue,wide-chunk,withdraw",
	"PLUGIN_PROTOCOL_VERSIONS=1",
	"DISPATCHER_CONTROL=none",
}

// The ping with id 1 and ipc/PROTOCOL.md's example GET (exchange 2).
var (
	ping = []byte{0, 0, 0, 3, 6, 0x91, 1}
	get  = mustHex("00000047 01 9b 02 a3474554 a72f68693f783d31 a8485454502f312e31 81 a6416363657074 91a32a2f2a " +
		"ab6578616d706c652e636f6d af3139322e302e322e373a3531323334 00 a27231 c0 c3")
)

func main() {
	_, self, _, _ := runtime.Caller(0)
	here := filepath.Dir(filepath.Dir(self))
	n := flag.Int("n", 20, "processes of each kind")
	kinds := flag.String("kinds", "node,fork,worker", "kinds to measure, in turn: node, fork, worker, alt")
	worker := flag.String("worker", filepath.Join(here, "worker.js"), "the sdk worker script")
	alt := flag.String("alt", "", "another sdk worker script, for the kind alt")
	flag.Parse()
	node, err := exec.LookPath("node")
	if err != nil {
		fatal(err)
	}
	runs := map[string]func() (time.Duration, error){
		"node":   func() (time.Duration, error) { return bare(node) },
		"fork":   func() (time.Duration, error) { return forkChild(node, filepath.Join(here, "forkchild.js")) },
		"worker": func() (time.Duration, error) { return sdkWorker(node, *worker) },
		"alt":    func() (time.Duration, error) { return sdkWorker(node, *alt) },
	}
	names := strings.Split(*kinds, ",")
	for _, k := range names {
		if runs[k] == nil || k == "alt" && *alt == "" {
			fatal(fmt.Errorf("unknown kind %q (alt needs -alt)", k))
		}
	}
	cpu := make(map[string][]time.Duration)
	for range *n {
		for _, k := range names {
			d, err := runs[k]()
			if err != nil {
				fatal(fmt.Errorf("%s: %w", k, err))
			}
			cpu[k] = append(cpu[k], d)
		}
	}
	fmt.Printf("CPU per process, ms (%d of each, in turn; %d CPUs)\n", *n, runtime.NumCPU())
	fmt.Println("| kind | median | quartiles |")
	fmt.Println("|---|--:|---|")
	for _, k := range names {
		ds := cpu[k]
		slices.Sort(ds)
		q := func(f float64) float64 { return float64(ds[int(f*float64(len(ds)-1))].Microseconds()) / 1000 }
		fmt.Printf("| %s | %.1f | %.1f–%.1f |\n", k, q(0.5), q(0.25), q(0.75))
	}
}

func bare(node string) (time.Duration, error) {
	cmd := exec.Command(node, "-e", "0")
	cmd.Env = env
	if err := cmd.Run(); err != nil {
		return 0, err
	}
	return cpuOf(cmd), nil
}

// forkChild runs forkchild.js with a channel as child_process.fork makes
// it: newline-delimited JSON on descriptor 3.
func forkChild(node, script string) (time.Duration, error) {
	conn, child, err := socketPair()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	cmd := exec.Command(node, script)
	cmd.Env = append(slices.Clone(env), "NODE_CHANNEL_FD=3", "NODE_CHANNEL_SERIALIZATION_MODE=json")
	cmd.ExtraFiles = []*os.File{child}
	err = cmd.Start()
	child.Close()
	if err != nil {
		return 0, err
	}
	defer kill(cmd)
	conn.SetDeadline(time.Now().Add(limit))
	if _, err := io.WriteString(conn, `{"method":"GET","url":"/","headers":{},"body":""}`+"\n"); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.Contains(line, `"status":200`) {
		return 0, fmt.Errorf("reply %q: %v", line, err)
	}
	return kill(cmd)
}

// sdkWorker runs a worker through its handshake, the start ping and one GET.
func sdkWorker(node, script string) (time.Duration, error) {
	conn, child, err := socketPair()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	dir, err := os.MkdirTemp("", "startcost-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command(node, script)
	cmd.Env = append(append(slices.Clone(env), workerEnv...), "PLUGIN_UNIX_SOCKET_DIR="+dir)
	cmd.ExtraFiles = []*os.File{child}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	err = cmd.Start()
	child.Close()
	if err != nil {
		return 0, err
	}
	defer kill(cmd)
	conn.SetDeadline(time.Now().Add(limit))
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "1|1|unix|") {
		return 0, fmt.Errorf("handshake %q: %v", line, err)
	}
	for _, f := range []struct {
		frame []byte
		kind  byte
	}{{ping, 7}, {get, 4}} {
		if _, err := conn.Write(f.frame); err != nil {
			return 0, err
		}
		if k, err := readFrame(conn); err != nil || k != f.kind {
			return 0, fmt.Errorf("frame of kind %d, want %d: %v", k, f.kind, err)
		}
	}
	return kill(cmd)
}

// readFrame reads one frame and returns its kind.
func readFrame(r io.Reader) (byte, error) {
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return 0, err
	}
	if n == 0 || n > 1<<20 {
		return 0, fmt.Errorf("frame length %d", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, err
	}
	return b[0], nil
}

// socketPair returns this side of a socketpair, with deadlines, and the
// child's side.
func socketPair() (net.Conn, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fds[0]), "conn")
	defer f.Close()
	conn, err := net.FileConn(f)
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	return conn, os.NewFile(uintptr(fds[1]), "child"), nil
}

// kill kills cmd, as both servers kill their process after its reply, and
// returns its CPU time.
func kill(cmd *exec.Cmd) (time.Duration, error) {
	if cmd.ProcessState != nil {
		return cpuOf(cmd), nil
	}
	_ = cmd.Process.Kill()
	err := cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return 0, err
	}
	return cpuOf(cmd), nil
}

func cpuOf(cmd *exec.Cmd) time.Duration {
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

func mustHex(s string) []byte {
	var b []byte
	if _, err := fmt.Sscanf(strings.ReplaceAll(s, " ", ""), "%x", &b); err != nil {
		panic(err)
	}
	return b
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "startcost:", err)
	os.Exit(1)
}
