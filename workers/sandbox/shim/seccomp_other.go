//go:build !amd64 && !arm64

package shim

// No seccomp filter for this architecture: New refuses Namespaces.
const (
	auditArch = 0
)

var nativeSeccomp func() *seccompArch
