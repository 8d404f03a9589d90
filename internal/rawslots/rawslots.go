// Package rawslots finds a worker's slot connections behind the sdk's
// back, for the test workers that misbehave on them on purpose (junk,
// malformed frames, a death on the next read).
package rawslots

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// FDs returns the descriptors of the calling process's slot connections:
// its unnamed, connected Unix stream sockets (socketpair ends) above
// standard error.
func FDs() []int {
	entries, _ := os.ReadDir("/proc/self/fd")
	var fds []int
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		if ua, ok := sa.(*unix.SockaddrUnix); !ok || ua.Name != "" && ua.Name != "@" { // unnamed
			continue
		}
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
			continue
		}
		if _, err := unix.Getpeername(fd); err != nil {
			continue
		}
		fds = append(fds, fd)
	}
	return fds
}
