package sdktest

import "syscall"

// sysProcAttr makes the dispatcher die with the test process, which may be
// killed without running its cleanups (go test's -timeout).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
