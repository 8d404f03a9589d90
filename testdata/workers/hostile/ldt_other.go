//go:build !amd64

package main

// modify_ldt is x86's alone.
func modifyLDT() (uintptr, bool) { return 0, false }
