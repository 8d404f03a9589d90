//go:build !linux

package sdktest

import "syscall"

// sysProcAttr: the dispatcher runs on Linux only; elsewhere this package
// compiles, so that a handler's tests build, and Start reports why the
// dispatcher does not start.
func sysProcAttr() *syscall.SysProcAttr { return nil }
