package sandbox

// The sandbox's root file system: what a worker binary needs, found on the
// host before it starts (planRoot), and mounted by the shim on a fresh
// tmpfs (buildRoot, package shim).

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/childproc/dispatcher/workers/sandbox/shim"
	"golang.org/x/sys/unix"
)

// Bind is a read-only bind mount into the sandbox.
type Bind struct {
	Src string // host path (a file or a directory)
	Dst string // path in the sandbox; if empty, Src
}

// ParseBind reads "SRC[:DST]". Both must be absolute.
func ParseBind(s string) (Bind, error) {
	src, dst, _ := strings.Cut(s, ":")
	b := Bind{Src: filepath.Clean(src), Dst: filepath.Clean(dst)}
	if dst == "" {
		b.Dst = b.Src
	}
	if !filepath.IsAbs(src) || !filepath.IsAbs(b.Dst) {
		return Bind{}, fmt.Errorf("bind %q: want SRC[:DST], absolute paths", s)
	}
	return b, nil
}

// Files a Go binary reads when they exist: CA certificates (crypto/x509's
// list for Linux) and time zones.
var goFiles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/pki/tls/cacert.pem",
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
	"/etc/ssl/cert.pem",
	"/usr/share/zoneinfo",
	"/etc/localtime",
}

// Files the resolver reads, bound only with the network.
var netFiles = []string{"/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/services", "/etc/host.conf", "/etc/gai.conf"}

// scriptExts are the worker arguments taken for scripts an interpreter
// worker runs (node server.js): their package is bound.
var scriptExts = []string{".js", ".mjs", ".cjs"}

// planRoot lists the binds a worker needs: its binary, the interpreter and
// libraries it loads, the package of a script, the default files, and the
// operator's binds. path is the binary, args its arguments, pathEnv the
// worker's PATH (for "#!/usr/bin/env node").
func planRoot(path string, args []string, pathEnv string, network bool, extra []Bind) ([]shim.Mount, error) {
	p := &planner{seen: map[string]bool{}, pathEnv: pathEnv}
	if err := p.program(path, 0); err != nil {
		return nil, err
	}
	for _, a := range args {
		if filepath.IsAbs(a) && slices.Contains(scriptExts, filepath.Ext(a)) && fileExists(a) {
			p.pkg(a)
		}
	}
	files := goFiles
	if network {
		files = append(slices.Clip(files), netFiles...)
	}
	for _, f := range files {
		p.optional(f)
	}
	for _, b := range extra {
		if err := p.add(b.Src, b.Dst); err != nil {
			return nil, &UnsupportedError{"Binds", fmt.Sprintf("bind %s: %v", b.Src, err)}
		}
	}
	return p.mounts, nil
}

type planner struct {
	mounts  []shim.Mount
	seen    map[string]bool // by Dst
	pathEnv string
}

// add binds src at dst, src resolved to what it names.
func (p *planner) add(src, dst string) error {
	if p.seen[dst] {
		return nil
	}
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return err
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is neither a file nor a directory", src)
	}
	p.seen[dst] = true
	p.mounts = append(p.mounts, shim.Mount{Src: real, Dst: dst, Dir: fi.IsDir()})
	return nil
}

func (p *planner) optional(path string) {
	if fileExists(path) {
		_ = p.add(path, path)
	}
}

// program binds an executable and what executing it loads: for an ELF
// binary its interpreter and libraries, for a script its interpreter
// (through env too) and its package.
func (p *planner) program(path string, depth int) error {
	if depth > 4 {
		return fmt.Errorf("%s: too many nested interpreters", path)
	}
	if err := p.add(path, path); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return p.elf(path)
	case bytes.HasPrefix(head, []byte("#!")):
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			return fmt.Errorf("%s: empty #! line", path)
		}
		if err := p.program(fields[0], depth+1); err != nil {
			return fmt.Errorf("interpreter of %s: %w", path, err)
		}
		if filepath.Base(fields[0]) == "env" {
			for _, a := range fields[1:] {
				if strings.HasPrefix(a, "-") || strings.Contains(a, "=") {
					continue
				}
				prog, err := lookPath(a, p.pathEnv)
				if err != nil {
					return fmt.Errorf("interpreter of %s: %w", path, err)
				}
				if err := p.program(prog, depth+1); err != nil {
					return fmt.Errorf("interpreter of %s: %w", path, err)
				}
				break
			}
		}
		p.pkg(path)
	}
	return nil
}

// lookPath finds prog in pathEnv, as env does.
func lookPath(prog, pathEnv string) (string, error) {
	if strings.Contains(prog, "/") {
		return prog, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		c := filepath.Join(d, prog)
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH %s", prog, pathEnv)
}

// pkg binds the directory of a script's package: the nearest directory
// above it with a package.json (else its own directory), and the targets
// of the links in its node_modules (npm's file: dependencies).
func (p *planner) pkg(script string) {
	real, err := filepath.EvalSymlinks(script)
	if err != nil {
		return
	}
	dir := filepath.Dir(real)
	for d := dir; ; d = filepath.Dir(d) {
		if fileExists(filepath.Join(d, "package.json")) {
			dir = d
			break
		}
		if d == "/" {
			break
		}
	}
	if dir == "/" {
		return
	}
	if p.add(dir, dir) != nil {
		return
	}
	nm := filepath.Join(dir, "node_modules")
	entries, _ := os.ReadDir(nm)
	for _, e := range entries {
		names := []string{e.Name()}
		if strings.HasPrefix(e.Name(), "@") && e.IsDir() {
			names = nil
			scoped, _ := os.ReadDir(filepath.Join(nm, e.Name()))
			for _, s := range scoped {
				names = append(names, filepath.Join(e.Name(), s.Name()))
			}
		}
		for _, name := range names {
			link := filepath.Join(nm, name)
			if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				continue
			}
			if target, err := filepath.EvalSymlinks(link); err == nil && !strings.HasPrefix(target, dir+"/") {
				_ = p.add(target, target)
			}
		}
	}
}

// elf binds the interpreter and the libraries (DT_NEEDED, transitively) of
// a dynamically linked binary.
func (p *planner) elf(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(prog.Open(), 4096))
		if err != nil {
			return fmt.Errorf("%s: interpreter: %w", path, err)
		}
		interp := string(bytes.TrimRight(b, "\x00"))
		if err := p.add(interp, interp); err != nil {
			return fmt.Errorf("%s: interpreter %s: %w", path, interp, err)
		}
	}
	return p.libs(path, f, machineDirs(f.Machine))
}

func (p *planner) libs(path string, f *elf.File, dirs []string) error {
	needed, err := f.ImportedLibraries()
	if err != nil {
		return nil // static
	}
	var own []string
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		if v, err := f.DynString(tag); err == nil {
			for _, s := range v {
				for d := range strings.SplitSeq(s, ":") {
					own = append(own, strings.ReplaceAll(d, "$ORIGIN", filepath.Dir(path)))
				}
			}
		}
	}
	for _, lib := range needed {
		found := ""
		for _, d := range append(own, dirs...) {
			if c := filepath.Join(d, lib); fileExists(c) && sameMachine(c, f.Machine) {
				found = c
				break
			}
		}
		if found == "" {
			return fmt.Errorf("%s: library %s not found in %s", path, lib, strings.Join(append(own, dirs...), ":"))
		}
		if p.seen[found] {
			continue
		}
		if err := p.add(found, found); err != nil {
			return err
		}
		lf, err := elf.Open(found)
		if err != nil {
			return fmt.Errorf("%s: %w", found, err)
		}
		err = p.libs(found, lf, dirs)
		lf.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func sameMachine(path string, m elf.Machine) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Machine == m
}

// machineDirs is the loader's search path: the system directories (the
// multiarch ones first) and those of /etc/ld.so.conf.
func machineDirs(m elf.Machine) []string {
	triple := map[elf.Machine]string{elf.EM_X86_64: "x86_64-linux-gnu", elf.EM_AARCH64: "aarch64-linux-gnu"}[m]
	var dirs []string
	if triple != "" {
		dirs = append(dirs, "/lib/"+triple, "/usr/lib/"+triple)
	}
	dirs = append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
	return append(dirs, ldSoConf("/etc/ld.so.conf", 0)...)
}

func ldSoConf(path string, depth int) []string {
	f, err := os.Open(path)
	if err != nil || depth > 4 {
		return nil
	}
	defer f.Close()
	var dirs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if pat, ok := strings.CutPrefix(line, "include "); ok {
			matches, _ := filepath.Glob(strings.TrimSpace(pat))
			for _, m := range matches {
				dirs = append(dirs, ldSoConf(m, depth+1)...)
			}
		} else if strings.HasPrefix(line, "/") {
			dirs = append(dirs, line)
		}
	}
	return dirs
}

// rootKey identifies a worker binary, as it is now, with its arguments.
type rootKey struct {
	path, args, pathEnv string
	ino, size           uint64
	mtime               int64
}

// root returns the binds for a worker, planned once per binary version.
func (s *Sandbox) root(path string, args []string, pathEnv string) ([]shim.Mount, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, err
	}
	k := rootKey{path: path, args: strings.Join(args, "\x00"), pathEnv: pathEnv, ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim.Nano()}
	s.rootMu.Lock()
	defer s.rootMu.Unlock()
	if m, ok := s.roots[k]; ok {
		return m, nil
	}
	m, err := planRoot(path, args, pathEnv, s.opts.AllowNetwork, s.opts.Binds)
	if err != nil {
		return nil, err
	}
	if s.roots == nil || len(s.roots) > 16 {
		s.roots = map[rootKey][]shim.Mount{}
	}
	s.roots[k] = m
	return m, nil
}
