// Package chaos is what the chaos worker (testdata/workers/chaos) and the
// soak that drives it (bench/soak) must agree on: the body of a healthy
// answer, which the soak verifies byte for byte, and where the calling
// process's cgroups are (the worker reads its memory limit there, the soak
// looks there for the cells a dispatcher left behind).
package chaos

import (
	"bufio"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
)

// HealthyBody is the chaos worker's answer to a healthy request: a line
// naming token, its CRC-32 and the worker's pid; if the request had a body
// (bodyLen >= 0), a line with its CRC-32 and length; then size bytes of
// letters derived from token.
func HealthyBody(token string, size, pid int, bodyCRC uint32, bodyLen int64) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "ok %s %08x %d\n", token, crc32.ChecksumIEEE([]byte(token)), pid)
	if bodyLen >= 0 {
		fmt.Fprintf(&b, "body %08x %d\n", bodyCRC, bodyLen)
	}
	out := []byte(b.String())
	seed := crc32.ChecksumIEEE([]byte(token))
	for i := range size {
		out = append(out, 'a'+byte((seed+uint32(i)*7)%26))
	}
	return out
}

// Cgroup is where one of the calling process's cgroups is mounted.
type Cgroup struct {
	Dir         string   // the cgroup's directory under one mount of its hierarchy
	V2          bool     // the unified (cgroup2) hierarchy
	Controllers []string // a v1 hierarchy's controllers (and options)
}

// OwnCgroups returns the calling process's cgroups, one entry per mount of
// each hierarchy (/proc/self/cgroup against /proc/self/mounts). A
// directory may not exist when the process's cgroup is outside the mount
// (a container's namespace).
func OwnCgroups() []Cgroup {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	mounts := cgroupMounts()
	var out []Cgroup
	for _, line := range strings.Split(string(own), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			for _, m := range mounts["cgroup2"] {
				out = append(out, Cgroup{Dir: filepath.Join(m, f[2]), V2: true})
			}
			continue
		}
		seen := map[string]bool{}
		for _, c := range strings.Split(f[1], ",") {
			for _, m := range mounts[c] {
				if !seen[m] {
					seen[m] = true
					out = append(out, Cgroup{Dir: filepath.Join(m, f[2]), Controllers: strings.Split(f[1], ",")})
				}
			}
		}
	}
	return out
}

// cgroupMounts returns the mount points of the cgroup2 file system (key
// "cgroup2") and of v1 hierarchies by controller or option.
func cgroupMounts() map[string][]string {
	m := map[string][]string{}
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 {
			continue
		}
		switch fs[2] {
		case "cgroup2":
			m["cgroup2"] = append(m["cgroup2"], fs[1])
		case "cgroup":
			for _, o := range strings.Split(fs[3], ",") {
				m[o] = append(m[o], fs[1])
			}
		}
	}
	return m
}
