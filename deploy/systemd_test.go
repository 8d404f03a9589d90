package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The systemd unit in systemd/, alone and with its drop-in.

// unit is a parsed unit file: "Section.Key" to its assignments, in order.
type unit map[string][]string

func parseUnit(text string) (unit, error) {
	u := unit{}
	section := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(lines[i])
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: %q is not KEY=VALUE in a section", i+1, line)
		}
		key := section + "." + strings.TrimSpace(k)
		u[key] = append(u[key], strings.TrimSpace(v))
	}
	return u, nil
}

// withDropIn returns u with a drop-in's assignments after its own.
func (u unit) withDropIn(d unit) unit {
	out := unit{}
	for k, v := range u {
		out[k] = slices.Clone(v)
	}
	for k, v := range d {
		out[k] = append(out[k], v...)
	}
	return out
}

// list returns key's values since the last empty assignment (which resets
// a list setting), each split into words.
func (u unit) list(key string) (words []string, set bool) {
	for _, v := range u[key] {
		if v == "" {
			words, set = nil, false
			continue
		}
		words, set = append(words, strings.Fields(v)...), true
	}
	return words, set
}

// value returns key's last assignment.
func (u unit) value(key string) string {
	if v := u[key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

func (u unit) yes(key string) bool {
	switch strings.ToLower(u.value(key)) {
	case "yes", "true", "on", "1":
		return true
	}
	return false
}

// execStart returns the command line of ExecStart (one command, a drop-in's
// empty assignment resetting the unit's).
func (u unit) execStart() ([]string, error) {
	var cmds []string
	for _, v := range u["Service.ExecStart"] {
		if v == "" {
			cmds = nil
		} else {
			cmds = append(cmds, v)
		}
	}
	if len(cmds) != 1 {
		return nil, fmt.Errorf("%d ExecStart commands, want 1", len(cmds))
	}
	if strings.ContainsAny(cmds[0], `"'`) {
		return nil, errors.New("ExecStart has quotes, which this test does not parse")
	}
	f := strings.Fields(cmds[0])
	f[0] = strings.TrimLeft(f[0], "-@:+!|")
	return f, nil
}

// parseSystemdTime parses a systemd time span: "35", "35s", "1min 5s".
func parseSystemdTime(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	units := map[string]time.Duration{
		"us": time.Microsecond, "usec": time.Microsecond, "ms": time.Millisecond, "msec": time.Millisecond,
		"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
		"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
		"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
	}
	re := regexp.MustCompile(`^\s*(\d+(?:\.\d+)?)\s*([a-z]+)`)
	var total time.Duration
	for rest := s; strings.TrimSpace(rest) != ""; {
		m := re.FindStringSubmatch(rest)
		if m == nil {
			return 0, fmt.Errorf("time span %q", s)
		}
		f, _ := strconv.ParseFloat(m[1], 64)
		u, ok := units[m[2]]
		if !ok {
			return 0, fmt.Errorf("time span %q: unit %q", s, m[2])
		}
		total += time.Duration(f * float64(u))
		rest = rest[len(m[0]):]
	}
	return total, nil
}

// The systemd configurations: the unit, and the unit with each drop-in.
var systemdConfigs = []struct {
	name    string
	dropIns []string
}{
	{"dispatcher.service", nil},
	{"dispatcher.service + dispatcher-unprivileged.conf", []string{"dispatcher-unprivileged.conf"}},
}

func loadUnit(t *testing.T, dropIns []string) unit {
	t.Helper()
	read := func(name string) unit {
		b, err := os.ReadFile(filepath.Join("systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		u, err := parseUnit(string(b))
		if err != nil {
			t.Fatalf("systemd/%s: %v", name, err)
		}
		return u
	}
	u := read("dispatcher.service")
	for _, d := range dropIns {
		u = u.withDropIn(read(d))
	}
	return u
}

func TestSystemdUnit(t *testing.T) {
	for _, cfg := range systemdConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			u := loadUnit(t, cfg.dropIns)
			args, err := u.execStart()
			if err != nil {
				t.Fatal(err)
			}
			cl := parseCmdline(args[1:])
			for _, e := range cl.errors {
				t.Errorf("ExecStart: %s", e)
			}
			checkUnit(t, u, cl)
		})
	}
}

func checkUnit(t *testing.T, u unit, cl cmdline) {
	// Stopping: SIGTERM to the dispatcher alone, time to drain and stop.
	if km := u.value("Service.KillMode"); km != "mixed" {
		t.Errorf("KillMode=%s, want mixed: SIGTERM to the dispatcher alone, which then drains and stops its workers", km)
	}
	shutdown, err := cl.duration("shutdown-timeout", 10*time.Second)
	if err != nil {
		t.Error(err)
	}
	if v := u.value("Service.TimeoutStopSec"); v == "" {
		t.Errorf("no TimeoutStopSec (the default, 90 s, says nothing of --shutdown-timeout %s)", shutdown)
	} else if stop, err := parseSystemdTime(v); err != nil {
		t.Errorf("TimeoutStopSec: %v", err)
	} else if stop < shutdown+workerStopGrace {
		t.Errorf("TimeoutStopSec=%s < --shutdown-timeout %s + worker stop %s", v, shutdown, workerStopGrace)
	}
	if r := u.value("Service.Restart"); r != "on-failure" {
		t.Errorf("Restart=%s, want on-failure", r)
	}
	if r := u.value("Service.ExecReload"); !regexp.MustCompile(`kill\s+(-HUP|-SIGHUP|-s\s+HUP)\s+\$MAINPID$`).MatchString(r) {
		t.Errorf("ExecReload=%s, want kill -HUP $MAINPID", r)
	}
	_, listenPort, err1 := cl.port("listen")
	_, adminPort, err2 := cl.port("admin-listen")
	if err := errors.Join(err1, err2); err != nil {
		t.Error(err)
	} else if listenPort == adminPort {
		t.Errorf("--listen and --admin-listen share port %d", listenPort)
	}

	// Every worker's cell is a cgroup below the dispatcher's.
	if !u.yes("Service.Delegate") {
		t.Errorf("Delegate=yes is missing: the workers' cells (and --pids-limit, --cpu-limit) need the service's cgroup subtree")
	}
	if u.yes("Service.ProtectControlGroups") {
		t.Errorf("ProtectControlGroups=yes makes the cgroup file system read-only: no cells, and the limit flags fail")
	}

	// What the flags need of the service's confinement.
	root := u.value("Service.User") == "" || u.value("Service.User") == "root" || u.value("Service.User") == "0"
	if u.yes("Service.DynamicUser") {
		root = false
	}
	caps := requiredCaps(cl)
	if caps == nil {
		return
	}
	if !root {
		t.Errorf("--sandbox and --user need the dispatcher to run as root, not as an unprivileged User= or DynamicUser=")
	}
	keeps := allowedSet(u["Service.CapabilityBoundingSet"], capName)
	for _, c := range caps {
		if !keeps(c) {
			t.Errorf("CapabilityBoundingSet lacks CAP_%s, which --sandbox/--user need", c)
		}
	}
	if u.yes("Service.PrivateUsers") {
		t.Errorf("PrivateUsers=yes: root in a user namespace can neither make cgroups nor switch users")
	}
	if cl.has("user") && u.value("Service.ProtectProc") == "invisible" {
		t.Errorf("ProtectProc=invisible hides the workers of --user from the dispatcher")
	}
	if !cl.on("sandbox") {
		return
	}
	if u.yes("Service.ProtectHostname") {
		t.Errorf("ProtectHostname=yes forbids sethostname(2), which --sandbox uses")
	}
	if u.value("Service.ProcSubset") == "pid" {
		t.Errorf("ProcSubset=pid hides /proc/sys/kernel/cap_last_cap, which --sandbox reads")
	}
	need := []string{"cgroup", "ipc", "mnt", "pid", "uts"}
	if !cl.on("allow-network") {
		need = append(need, "net")
	}
	nsAllowed := allowedSet(u["Service.RestrictNamespaces"], strings.ToLower)
	for _, ns := range need {
		if !nsAllowed(ns) {
			t.Errorf("RestrictNamespaces forbids %s namespaces, which --sandbox creates", ns)
		}
	}
	if filter, set := u.list("Service.SystemCallFilter"); set && !strings.HasPrefix(filter[0], "~") {
		for _, sc := range []string{"mount", "mount_setattr", "sethostname", "seccomp"} {
			if !slices.Contains(filter, sc) && !(strings.HasPrefix(sc, "mount") && slices.Contains(filter, "@mount")) {
				t.Errorf("SystemCallFilter does not allow %s, which --sandbox uses", sc)
			}
		}
	}
}

// allowedSet evaluates a systemd setting that is a set of names the way
// CapabilityBoundingSet= and RestrictNamespaces= are: unset, it allows
// everything; a list allows what it names, and further lists add to it; a
// "~" list allows all but what it names, or takes those away from what a
// list allowed; an empty assignment resets; for RestrictNamespaces=, "yes"
// allows nothing and "no" everything. normalize gives a name's canonical
// spelling.
func allowedSet(assignments []string, normalize func(string) string) (allows func(string) bool) {
	// all: names is a deny list; otherwise an allow list.
	all, initial, names := true, true, map[string]bool{}
	for _, a := range assignments {
		switch strings.ToLower(strings.TrimSpace(a)) {
		case "":
			all, initial, names = true, true, map[string]bool{}
			continue
		case "yes", "true":
			all, initial, names = false, false, map[string]bool{}
			continue
		case "no", "false":
			all, initial, names = true, false, map[string]bool{}
			continue
		}
		invert := strings.HasPrefix(a, "~")
		var list []string
		for _, w := range strings.Fields(strings.TrimPrefix(a, "~")) {
			list = append(list, normalize(w))
		}
		if initial {
			all, initial, names = invert, false, map[string]bool{}
		}
		for _, n := range list {
			if invert == all { // deny more, or allow more
				names[n] = true
			} else { // un-deny, or un-allow
				delete(names, n)
			}
		}
	}
	return func(name string) bool { return names[normalize(name)] != all }
}

func capName(c string) string { return strings.TrimPrefix(strings.ToUpper(c), "CAP_") }

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on the unit, alone
// and with each drop-in, with ExecStart pointing at a freshly built
// dispatcher (verify checks that the binary exists).
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian/Ubuntu package systemd): cannot verify systemd/dispatcher.service")
	}
	if _, err := os.Stat("/bin/kill"); err != nil {
		t.Skip("/bin/kill, which ExecReload runs and verify checks, does not exist here")
	}
	bin := dispatcherBinary(t)
	const installed = "/usr/local/bin/dispatcher"
	for _, cfg := range systemdConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			dir := t.TempDir()
			copyUnit := func(src, dst string) {
				b, err := os.ReadFile(filepath.Join("systemd", src))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Contains(b, []byte(installed)) && src == "dispatcher.service" {
					t.Fatalf("systemd/%s does not run %s", src, installed)
				}
				b = bytes.ReplaceAll(b, []byte(installed), []byte(bin))
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(dst, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			unitPath := filepath.Join(dir, "dispatcher.service")
			copyUnit("dispatcher.service", unitPath)
			for _, d := range cfg.dropIns {
				copyUnit(d, filepath.Join(dir, "dispatcher.service.d", d))
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, sa, "verify", "--man=no", unitPath)
			// Drop-ins are read from the unit search path: dir first, then
			// the default path (the trailing colon). User= and --user are
			// not resolved by verify, so none has to exist here.
			cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
			out, err := cmd.CombinedOutput()
			var mine, other []string
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if line == "" {
					continue
				}
				if strings.Contains(line, dir) || strings.Contains(line, "dispatcher.service") {
					mine = append(mine, line)
				} else {
					other = append(other, line)
				}
			}
			if len(other) > 0 {
				t.Logf("systemd-analyze verify, about other units:\n%s", strings.Join(other, "\n"))
			}
			if err != nil || len(mine) > 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s", cfg.name, err, out)
			}
			// The exposure score, for information.
			sec := exec.CommandContext(ctx, sa, "security", "--offline=yes", unitPath)
			sec.Env = cmd.Env
			if out, err := sec.Output(); err == nil {
				if i := bytes.Index(out, []byte("Overall exposure level")); i >= 0 {
					t.Logf("%s", bytes.TrimSpace(out[i:]))
				}
			}
		})
	}
}
