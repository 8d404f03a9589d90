package workers_test

// Clock jumps must not break timeouts. Every deadline and interval of the
// dispatcher is computed from time.Now() values, which carry a reading of
// the monotonic clock: Sub, Before, After, Until and Since then use that
// reading and ignore the wall clock, so a jump of the wall clock (NTP, an
// operator, a VM resume) changes nothing. Timers, tickers, context
// deadlines and net.Conn deadlines are monotonic inside the runtime.
//
// What would break it is a time.Time that lost its monotonic reading (Round,
// Truncate, UTC, Local, In, AddDate), or one built from wall-clock numbers
// (time.Unix, time.Date, UnixNano arithmetic), flowing into a comparison.
// The host's wall clock cannot be moved in a test (no namespace
// virtualizes CLOCK_REALTIME), so this test checks the property statically:
// it type-checks the packages that run in the dispatcher and in workers and
// reports every call that strips or bypasses the monotonic reading, unless
// its result only feeds formatting (for a log line or a header) or it is
// listed in allowed below with the reason it cannot affect a timeout.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/internal/testbin"
)

// monotonicPackages are the packages checked: the dispatcher's and the
// sdk's (the workers' side of the timeouts).
var monotonicPackages = []string{"./ipc", "./workers/...", "./dispatcher", "./admin", "./cmd/dispatcher", "./sdk"}

// allowed lists the reviewed calls that strip or bypass the monotonic
// reading, by file (relative to the module) and call text, with why they
// cannot affect a timeout. An entry that matches nothing fails the test.
var allowed = map[string]string{}

// pastDeadline is the idiom that ends a blocked read or write at once: a
// deadline in 1970, which any wall clock says has passed. It is allowed as
// the argument of a Set*Deadline method.
const pastDeadline = "time.Unix(1, 0)"

// stripping are the time.Time methods whose result has no monotonic
// reading, or is a wall-clock number.
var stripping = map[string]bool{
	"Round": true, "Truncate": true, "UTC": true, "Local": true, "In": true, "AddDate": true,
	"Unix": true, "UnixNano": true, "UnixMilli": true, "UnixMicro": true,
	"MarshalBinary": true, "MarshalJSON": true, "MarshalText": true, "GobEncode": true,
}

// wallFuncs are the functions that build a time.Time, or read a clock,
// from wall-clock values.
var wallFuncs = map[string]map[string]bool{
	"time":                  {"Unix": true, "UnixMilli": true, "UnixMicro": true, "Date": true, "Parse": true, "ParseInLocation": true},
	"syscall":               {"Gettimeofday": true, "Time": true},
	"golang.org/x/sys/unix": {"Gettimeofday": true, "Time": true, "ClockGettime": true},
}

// formatting are the methods through which a stripped time.Time may be
// used: they only render it.
var formatting = map[string]bool{"Format": true, "AppendFormat": true, "String": true}

// finding is a call that strips or bypasses the monotonic reading.
type finding struct {
	key string // "file: call"
	pos string
}

// checkMonotonic reports the suspicious calls in files, type-checked with
// imp, and how many calls of time.Now it saw. root is the directory file
// names are made relative to.
func checkMonotonic(fset *token.FileSet, imp types.Importer, path, root string, files []*ast.File, src map[string][]byte) ([]finding, int, error) {
	info := &types.Info{Uses: map[*ast.Ident]types.Object{}, Selections: map[*ast.SelectorExpr]*types.Selection{}}
	conf := types.Config{Importer: imp}
	if _, err := conf.Check(path, fset, files, info); err != nil {
		return nil, 0, err
	}
	var out []finding
	nows := 0
	for _, f := range files {
		var stack []ast.Node
		ast.Inspect(f, func(n ast.Node) bool {
			if n == nil {
				stack = stack[:len(stack)-1]
				return true
			}
			stack = append(stack, n)
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			fn := callee(info, call)
			if fn == nil || fn.Pkg() == nil {
				return true
			}
			sig := fn.Type().(*types.Signature)
			pkg, name := fn.Pkg().Path(), fn.Name()
			suspicious := false
			switch {
			case sig.Recv() != nil:
				suspicious = pkg == "time" && isTime(sig.Recv().Type()) && stripping[name]
			case pkg == "time" && name == "Now":
				nows++
			default:
				suspicious = wallFuncs[pkg][name]
			}
			if !suspicious || onlyFormatted(info, stack) {
				return true
			}
			p := fset.Position(call.Pos())
			rel, _ := filepath.Rel(root, p.Filename)
			text := string(src[p.Filename][p.Offset:fset.Position(call.End()).Offset])
			if text == pastDeadline && deadlineArg(info, stack) {
				return true
			}
			out = append(out, finding{key: filepath.ToSlash(rel) + ": " + text, pos: p.String()})
			return true
		})
	}
	return out, nows, nil
}

// callee returns the function or method a call calls, if it is one.
func callee(info *types.Info, call *ast.CallExpr) *types.Func {
	fun := ast.Unparen(call.Fun)
	if ix, ok := fun.(*ast.IndexExpr); ok {
		fun = ix.X
	}
	switch f := fun.(type) {
	case *ast.SelectorExpr:
		if sel, ok := info.Selections[f]; ok {
			fn, _ := sel.Obj().(*types.Func)
			return fn
		}
		fn, _ := info.Uses[f.Sel].(*types.Func)
		return fn
	case *ast.Ident:
		fn, _ := info.Uses[f].(*types.Func)
		return fn
	}
	return nil
}

func isTime(t types.Type) bool {
	if p, ok := t.(*types.Pointer); ok {
		t = p.Elem()
	}
	n, ok := t.(*types.Named)
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == "time" && n.Obj().Name() == "Time"
}

// onlyFormatted reports whether the call at the top of stack is the
// receiver of a formatting method: t.UTC().Format(...).
func onlyFormatted(info *types.Info, stack []ast.Node) bool {
	if len(stack) < 2 {
		return false
	}
	sel, ok := stack[len(stack)-2].(*ast.SelectorExpr)
	if !ok || ast.Unparen(sel.X) != stack[len(stack)-1] {
		return false
	}
	s, ok := info.Selections[sel]
	return ok && s.Kind() == types.MethodVal && formatting[s.Obj().Name()]
}

// deadlineArg reports whether the call at the top of stack is the argument
// of a SetDeadline, SetReadDeadline or SetWriteDeadline method call.
func deadlineArg(info *types.Info, stack []ast.Node) bool {
	if len(stack) < 2 {
		return false
	}
	call, ok := stack[len(stack)-2].(*ast.CallExpr)
	if !ok || len(call.Args) != 1 || ast.Unparen(call.Args[0]) != stack[len(stack)-1] {
		return false
	}
	fn := callee(info, call)
	if fn == nil || fn.Type().(*types.Signature).Recv() == nil {
		return false
	}
	switch fn.Name() {
	case "SetDeadline", "SetReadDeadline", "SetWriteDeadline":
		return true
	}
	return false
}

// goPackage is what go list says of a package.
type goPackage struct {
	ImportPath string
	Dir        string
	Export     string
	GoFiles    []string
	DepOnly    bool
	Error      *struct{ Err string }
}

// exportImporter returns an importer reading the export data go list
// built, and the packages named by patterns.
func exportImporter(t *testing.T, fset *token.FileSet, root string, patterns ...string) (types.Importer, []goPackage) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("needs the go command: %v", err)
	}
	cmd := exec.Command("go", append([]string{"list", "-e", "-export", "-deps", "-json=ImportPath,Dir,Export,GoFiles,DepOnly,Error"}, patterns...)...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	exports := map[string]string{}
	var mine []goPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Error != nil {
			t.Fatalf("go list: %s: %s", p.ImportPath, p.Error.Err)
		}
		exports[p.ImportPath] = p.Export
		if !p.DepOnly {
			mine = append(mine, p)
		}
	}
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok || f == "" {
			return nil, fmt.Errorf("no export data for %q", path)
		}
		return os.Open(f)
	})
	return imp, mine
}

func TestMonotonicDeadlines(t *testing.T) {
	if testing.Short() {
		t.Skip("type-checks the module's packages")
	}
	root := testbin.Root()
	fset := token.NewFileSet()
	imp, pkgs := exportImporter(t, fset, root, monotonicPackages...)

	// The check finds what it must find.
	const probe = `package probe

import (
	"net"
	"time"
)

func expired(c net.Conn, start time.Time, d time.Duration) bool {
	deadline := time.Now().Round(0).Add(d)
	_ = time.Unix(0, start.UnixNano()+int64(d))
	_ = start.UTC().Format(time.RFC3339)      // formatting only: fine
	_ = c.SetReadDeadline(time.Unix(1, 0))     // past deadline: fine
	_ = c.SetReadDeadline(time.Unix(1, 0).Add(d)) // not the idiom
	return time.Now().After(deadline)
}
`
	pf, err := parser.ParseFile(fset, "/probe/probe.go", probe, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, nows, err := checkMonotonic(fset, imp, "probe", "/", []*ast.File{pf}, map[string][]byte{"/probe/probe.go": []byte(probe)})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, f := range got {
		keys = append(keys, f.key)
	}
	want := []string{"probe/probe.go: time.Now().Round(0)", "probe/probe.go: time.Unix(0, start.UnixNano()+int64(d))", "probe/probe.go: start.UnixNano()", "probe/probe.go: time.Unix(1, 0)"}
	if !slices.Equal(keys, want) || nows != 2 {
		t.Fatalf("the check is broken: on the probe it found %q and %d time.Now, want %q and 2", keys, nows, want)
	}

	used := map[string]bool{}
	total := 0
	for _, p := range pkgs {
		src := map[string][]byte{}
		var files []*ast.File
		for _, name := range p.GoFiles {
			fn := filepath.Join(p.Dir, name)
			b, err := os.ReadFile(fn)
			if err != nil {
				t.Fatal(err)
			}
			f, err := parser.ParseFile(fset, fn, b, 0)
			if err != nil {
				t.Fatal(err)
			}
			src[fn] = b
			files = append(files, f)
		}
		found, n, err := checkMonotonic(fset, imp, p.ImportPath, root, files, src)
		if err != nil {
			t.Fatalf("type-checking %s: %v", p.ImportPath, err)
		}
		total += n
		for _, f := range found {
			if _, ok := allowed[f.key]; ok {
				used[f.key] = true
				continue
			}
			t.Errorf("%s: %s strips or bypasses the monotonic clock reading: a wall-clock jump would move any deadline or interval computed from it. Use time.Now()-derived values, or, if it cannot affect a timeout, add it to allowed in workers/monotonic_test.go with the reason", f.pos, f.key[strings.Index(f.key, ": ")+2:])
		}
	}
	for k := range allowed {
		if !used[k] {
			t.Errorf("allowed entry %q matches nothing: remove it", k)
		}
	}
	// Sanity: the packages were really inspected.
	if len(pkgs) < 6 || total < 20 {
		t.Errorf("checked %d packages and %d calls of time.Now: too few, the package list is wrong", len(pkgs), total)
	}
	t.Logf("checked %d packages, %d calls of time.Now", len(pkgs), total)
}
