package ipc

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// The worker's side of go-plugin's handshake and control connection
// (go-plugin's "netrpc" protocol), written here so that worker binaries do
// not link go-plugin: its dependencies (gRPC, protobuf) cost a worker about
// 10 ms of start-up and 10 MB of binary; the control connection itself is
// served without yamux and net/rpc too (control.go). The dispatcher still
// launches and handshakes workers with go-plugin itself (package launch); it
// no longer connects to the control socket (it stops a worker by closing
// its slots), but earlier dispatchers and the conformance checker do, so
// this side must keep to what go-plugin's client does:
//
//   - print "1|<ProtocolVersion>|unix|<socket path>|netrpc|" on standard
//     output, with the socket in PLUGIN_UNIX_SOCKET_DIR;
//   - on the one connection, a yamux server: the first stream is the control
//     connection, the next two carry standard output and error (unused
//     here: the worker's standard output and error stay its own, and the
//     dispatcher reads them line by line);
//   - net/rpc (gob) on the control stream: Control.Ping, Control.Quit
//     (graceful stop); Dispenser.Dispense and any other method are refused
//     (no plugin is dispensed: requests travel on the slots).
const (
	coreProtocolVersion = 1 // go-plugin's CoreProtocolVersion
	envSocketDir        = "PLUGIN_UNIX_SOCKET_DIR"
)

// ServeWorker runs the worker's side of the handshake and blocks until the
// dispatcher asks the worker to quit over the control connection, or that
// connection ends; a worker whose dispatcher never connects stops when its
// slots close (the sdk's Serve).
// Nothing may be written to standard output before it: the first line is
// the handshake. info describes the worker.
func ServeWorker(info Info) {
	if os.Getenv(EnvControl) == ControlNone {
		// No connection will come: the handshake names the socket the
		// worker would have listened on. Making and removing it cost a
		// tenth of a oneshot worker's CPU on an ext4 /tmp.
		ignoreInterrupt()
		handshake(filepath.Join(socketDir(), "plugin"))
		select {} // the sdk exits when its slots close
	}
	ln, path, err := listenControl()
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker: control socket: %v\n", err)
		os.Exit(1)
	}
	defer ln.Close()
	defer os.Remove(path)
	ignoreInterrupt()
	handshake(path)

	done := make(chan struct{})
	var once sync.Once
	quit := func() { once.Do(func() { close(done) }) }
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				quit()
				return
			}
			go func() {
				serveControl(conn, quit)
				quit()
			}()
		}
	}()
	<-done
}

// handshake prints go-plugin's handshake line, naming the control socket.
func handshake(path string) {
	fmt.Printf("%d|%d|unix|%s|netrpc|\n", coreProtocolVersion, ProtocolVersion, path)
}

// ignoreInterrupt: a Ctrl-C at a terminal reaches the whole foreground
// process group, and a worker in its dispatcher's group must leave its
// stopping to the dispatcher. (Notify, not Ignore: an ignored signal would
// stay ignored in the processes the handler starts.) The dispatcher makes
// each worker the leader of a group of its own (PROTOCOL.md 2.1), which no
// terminal has in the foreground: there is nothing to ignore then, and
// Notify would cost the worker three more threads (os/signal locks one for
// itself), a twentieth of a oneshot worker's CPU.
func ignoreInterrupt() {
	if syscall.Getpgrp() == os.Getpid() {
		return
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt)
	go func() {
		for range sigs {
		}
	}()
}

// socketDir is where the control socket goes: PLUGIN_UNIX_SOCKET_DIR, or
// the system's temporary directory.
func socketDir() string { return cmp.Or(os.Getenv(envSocketDir), os.TempDir()) }

// listenControl listens on a new unix socket in PLUGIN_UNIX_SOCKET_DIR.
// go-plugin makes that directory for this worker alone, so a fixed name
// does (one file system entry, where a unique temporary name would cost
// two); if it is taken, or without that directory (then the system's
// temporary directory), a random name.
func listenControl() (net.Listener, string, error) {
	dir := os.Getenv(envSocketDir)
	var ln net.Listener
	var path string
	var err error
	for i := range 4 {
		name := "plugin"
		if dir == "" || i > 0 {
			name += strconv.FormatUint(rand.Uint64(), 36)
		}
		path = filepath.Join(socketDir(), name)
		if ln, err = net.Listen("unix", path); !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		return nil, "", err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, path, nil
}
