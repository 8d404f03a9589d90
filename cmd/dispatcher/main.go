// Command dispatcher serves HTTP requests by running each one in a worker
// child process built with the sdk package.
//
//	dispatcher --workers ./bin/handler --listen 127.0.0.1:8080
//
//	dispatcher --config dispatcher.yaml
//
// SIGHUP reloads: the config file is read again, new workers are started
// and handshaken, traffic moves to them, and the old ones finish their
// requests and stop. A configuration that fails to load or to start keeps
// the old one serving.
//
// Exit status: 0 after a clean shutdown (SIGINT or SIGTERM), 2 for a usage
// error or a worker binary that is missing, not executable or not a worker,
// 1 for any other failure. A second signal during shutdown ends the process
// at once (default action of the signal); the workers die with it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/childproc/dispatcher/workers"
	"golang.org/x/sys/unix"
)

func main() {
	if err := closeOnExecInherited(); err != nil {
		fmt.Fprintln(os.Stderr, "dispatcher: cannot mark inherited descriptors close-on-exec: "+err.Error())
		os.Exit(1)
	}
	undumpable()
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		signal.Reset(os.Interrupt, syscall.SIGTERM)
		select {
		case s := <-sigs: // a second signal beat the Reset: act on it
			_ = syscall.Kill(os.Getpid(), s.(syscall.Signal))
		default:
		}
	}()
	reload := make(chan struct{}, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default: // one is pending already
			}
		}
	}()
	m := NewMain()
	m.CaptureStderr = true
	// Descendants of workers that escape them (a setsid and a double fork)
	// are adopted by this process rather than init, and killed: where no
	// cgroup holds a worker's tree, nothing else would find them.
	if r, err := workers.NewReaper(); err == nil {
		m.Reaper = r
	} else {
		fmt.Fprintln(os.Stderr, "dispatcher: warning: "+err.Error())
	}
	m.Reload = reload
	err := m.Run(ctx, os.Args[1:])
	os.Exit(exitCode(err))
}

func exitCode(err error) int {
	var ue *UsageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, "dispatcher: "+ue.Error())
		return 2
	default:
		fmt.Fprintln(os.Stderr, "dispatcher: "+err.Error())
		return 1
	}
}

// undumpable makes the dispatcher not dumpable: a process of its own user
// (a worker without --user or the sandbox, or anything else the user
// runs) can neither ptrace it nor read its /proc/PID/environ or mem,
// which then belong to root. Its children get the default back at exec:
// the sandbox writes the maps of a shim's user namespace after the shim's
// execve, when the shim is dumpable again.
func undumpable() {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "dispatcher: warning: PR_SET_DUMPABLE: "+err.Error())
	}
}
