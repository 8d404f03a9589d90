package main

import "golang.org/x/sys/unix"

func modifyLDT() (uintptr, bool) { return unix.SYS_MODIFY_LDT, true }
