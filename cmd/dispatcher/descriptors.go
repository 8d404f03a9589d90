package main

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeOnExecInherited marks every descriptor above standard error close-on-exec:
// whatever the dispatcher inherited (from a shell, a supervisor, a wrapper
// script: a secret file, a log open for writing) must never reach a
// worker, which gets exactly its standard streams and its slot sockets.
// The dispatcher keeps no inherited descriptor on purpose (it supports no
// socket activation). It runs first thing in main, before any child
// process starts.
func closeOnExecInherited() error {
	err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// Before Linux 5.11: each descriptor /proc/self/fd lists.
	entries, rerr := os.ReadDir("/proc/self/fd")
	if rerr != nil {
		return rerr
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return err
		}
	}
	return nil
}
