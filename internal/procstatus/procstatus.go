// Package procstatus reads the memory figures of /proc/PID/status.
package procstatus

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Bytes returns a field of /proc/PID/status given in kB (VmRSS, VmHWM,
// ...), in bytes.
func Bytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s of %d: %w", field, pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s for %d", field, pid)
}
