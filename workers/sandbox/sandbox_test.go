package sandbox

import (
	"errors"
	"strings"
	"testing"
)

func TestParseCgroups(t *testing.T) {
	// The hybrid layout of this project's machines: v1 controllers beside
	// an empty v2 tree, the memory controller nested.
	hybridMounts := `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 30 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	hybridSelf := `9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
`
	m := parseCgroups([]byte(hybridMounts), []byte(hybridSelf))
	if m.v2 == nil || m.v2.base != "/sys/fs/cgroup/unified" {
		t.Fatalf("v2 = %+v, want base /sys/fs/cgroup/unified", m.v2)
	}
	for ctrl, base := range map[string]string{
		"memory": "/sys/fs/cgroup/memory/process_api/abc", "pids": "/sys/fs/cgroup/pids",
		"cpu": "/sys/fs/cgroup/cpu", "freezer": "/sys/fs/cgroup/freezer", "name=systemd": "/sys/fs/cgroup/systemd",
	} {
		if h := m.v1[ctrl]; h == nil || h.base != base || h.v2 {
			t.Errorf("v1[%s] = %+v, want base %s", ctrl, h, base)
		}
	}

	// Pure v2 with the cgroup bind-mounted from a subtree (a container
	// without a cgroup namespace), and a co-mounted v1 pair.
	m = parseCgroups([]byte(`50 40 0:40 /docker/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw
51 40 0:41 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
52 40 0:42 /other /mnt/x\040y rw - cgroup cgroup rw,pids
`), []byte("0::/docker/c1/sub\n3:cpu,cpuacct:/a\n2:pids:/elsewhere\n"))
	if m.v2 == nil || m.v2.base != "/sys/fs/cgroup/sub" {
		t.Errorf("v2 = %+v, want base /sys/fs/cgroup/sub", m.v2)
	}
	if h := m.v1["cpuacct"]; h == nil || h.base != "/sys/fs/cgroup/cpu,cpuacct/a" || !h.has("cpu") {
		t.Errorf("v1[cpuacct] = %+v", h)
	}
	if h := m.v1["pids"]; h != nil {
		t.Errorf("pids hierarchy whose own cgroup lies outside the mount kept: %+v", h)
	}
	// A dispatcher that moved itself into its leaf (a systemd service
	// with Delegate=yes) puts its pools beside the leaf, not below it.
	m = parseCgroups([]byte("60 40 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
		[]byte("0::/system.slice/dispatcher.service/"+selfCgroup+"\n"))
	if m.v2 == nil || m.v2.base != "/sys/fs/cgroup/system.slice/dispatcher.service" {
		t.Errorf("v2 from the leaf = %+v, want base /sys/fs/cgroup/system.slice/dispatcher.service", m.v2)
	}
	if got := unescapeMount(`/mnt/x\040y`); got != "/mnt/x y" {
		t.Errorf("unescapeMount = %q", got)
	}
}

func TestLookupUser(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		uid, gid uint32
		err      string
	}{
		{spec: "root", uid: 0, gid: 0},
		{spec: "0", uid: 0, gid: 0},
		{spec: "0:65534", uid: 0, gid: 65534},
		{spec: "nobody", uid: 65534, gid: 65534},
		{spec: "4242:4343", uid: 4242, gid: 4343},
		{spec: "4242", err: "give the group too"},
		{spec: "no-such-user-xyz", err: "unknown user"},
		{spec: "root:no-such-group-xyz", err: "unknown group"},
		{spec: "root:", err: "want USER[:GROUP]"},
		{spec: ":0", err: "want USER[:GROUP]"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			cred, err := lookupUser(tc.spec)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("lookupUser(%q) = %+v, %v; want an error containing %q", tc.spec, cred, err, tc.err)
				}
				return
			}
			if err != nil {
				if strings.Contains(err.Error(), "unknown user") {
					t.Skipf("this machine's user database lacks it: %v", err)
				}
				t.Fatal(err)
			}
			if cred.Uid != tc.uid || cred.Gid != tc.gid || len(cred.Groups) != 0 {
				t.Errorf("lookupUser(%q) = %+v, want %d:%d and no supplementary groups", tc.spec, cred, tc.uid, tc.gid)
			}
		})
	}
}

func TestParseChecksum(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	if err := ParseChecksum(good); err != nil {
		t.Errorf("ParseChecksum(%q) = %v", good, err)
	}
	for _, bad := range []string{"", "sha256:", "md5:" + strings.Repeat("ab", 16), "sha256:" + strings.Repeat("ab", 31), "sha256:" + strings.Repeat("zz", 32), strings.Repeat("ab", 32)} {
		if ParseChecksum(bad) == nil {
			t.Errorf("ParseChecksum(%q) accepted", bad)
		}
	}
}

func TestOptionsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"network without namespaces", Options{AllowNetwork: true}, "AllowNetwork only"},
		{"negative limit", Options{MemoryLimit: -1}, "negative"},
		{"bad checksum", Options{Checksum: "sha1:00"}, "sha256"},
		{"bad user", Options{User: "no-such-user-xyz"}, "no-such-user-xyz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New("/bin/true", tc.opts)
			if err == nil {
				s.Close()
				t.Fatalf("New accepted %+v", tc.opts)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v; want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestTrialNeedsTheShim(t *testing.T) {
	s, err := New("/bin/true", Options{Shim: "/bin/true"})
	if err == nil {
		s.Close()
		t.Fatal("New accepted a shim that does not link package shim")
	}
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "workers/sandbox/shim") {
		t.Errorf("New: %v; want an *UnsupportedError asking whether the binary links package shim", err)
	}
}
