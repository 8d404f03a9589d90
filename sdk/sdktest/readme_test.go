package sdktest_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/childproc/dispatcher/sdk/sdktest"
)

// repoRoot is the root of this repository.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		tb.Fatal("no caller information")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// readmeBlock is a fenced block of a README section: its language and
// text, and the file name the paragraph before it names (`name.go`).
type readmeBlock struct {
	lang, text, file string
}

var fileNamed = regexp.MustCompile("`([a-z_]+\\.go)`")

// readmeSection returns the fenced blocks of the README section with the
// given heading.
func readmeSection(tb testing.TB, heading string) []readmeBlock {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(tb), "README.md"))
	if err != nil {
		tb.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## "+heading+"\n")
	if !ok {
		tb.Fatalf("README.md has no section %q", heading)
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	var blocks []readmeBlock
	for {
		i := strings.Index(sec, "\n```")
		if i < 0 {
			return blocks
		}
		prose := sec[:i]
		rest := sec[i+4:]
		lang, body, _ := strings.Cut(rest, "\n")
		end := strings.Index(body, "\n```")
		if end < 0 {
			tb.Fatalf("README section %q: unterminated block", heading)
		}
		blk := readmeBlock{lang: lang, text: body[:end+1]}
		if m := fileNamed.FindAllStringSubmatch(prose, -1); m != nil {
			blk.file = m[len(m)-1][1]
		}
		blocks = append(blocks, blk)
		sec = body[end+4:]
	}
}

// The README's "Your own handler" recipe, run as a reader would: in a new
// module outside the repository, with the replace directive pointing at
// this checkout. The worker's test passes, the dispatcher built from the
// clone serves the worker, the module does not require the dispatcher's
// own dependencies, and its go directive need not be a patch release.
func TestReadmeOwnHandler(t *testing.T) {
	root := repoRoot(t)
	hello := readmeSection(t, "Writing a handler")
	if len(hello) == 0 || hello[0].lang != "go" {
		t.Fatal(`README "Writing a handler" shows no Go code`)
	}
	if want, err := os.ReadFile(filepath.Join(root, "examples", "hello", "main.go")); err != nil || hello[0].text != string(want) {
		t.Fatalf(`README "Writing a handler" shows other code than the examples/hello/main.go it builds (%v)`, err)
	}

	// The script: the shell lines, with each Go file written where the
	// README shows it. The last line serves: the test runs it itself.
	var script strings.Builder
	script.WriteString("set -ex\n")
	files := map[string]bool{}
	for _, b := range readmeSection(t, "Your own handler") {
		switch b.lang {
		case "sh":
			script.WriteString(b.text)
		case "go":
			if b.file == "" {
				t.Fatalf("README: a Go block of \"Your own handler\" names no file before it:\n%s", b.text)
			}
			files[b.file] = true
			fmt.Fprintf(&script, "cat > %s <<'README_EOF'\n%sREADME_EOF\n", b.file, b.text)
		}
		if b.lang == "sh" && strings.Contains(b.text, "go mod edit -replace") && !files["main.go"] {
			// main.go is the code of "Writing a handler".
			files["main.go"] = true
			fmt.Fprintf(&script, "cat > main.go <<'README_EOF'\n%sREADME_EOF\n", hello[0].text)
		}
	}
	lines := strings.Split(strings.TrimSpace(script.String()), "\n")
	serve := lines[len(lines)-1]
	if !strings.Contains(serve, "--workers") {
		t.Fatalf("README: \"Your own handler\" does not end by serving the worker: %q", serve)
	}
	if !files["main_test.go"] {
		t.Fatal(`README: "Your own handler" writes no main_test.go`)
	}
	body := strings.Join(lines[:len(lines)-1], "\n") + "\npwd\n"

	top := sdktest.TempDir(t) // the workers (nobody, for root) must reach the binary built there
	if err := os.Symlink(root, filepath.Join(top, "dispatcher")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	env := append(os.Environ(), "GOWORK=off")
	cmd := exec.CommandContext(ctx, "bash", "-c", body)
	cmd.Dir, cmd.Env = top, env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the README's commands failed: %v\n%s", err, stderr.String())
	}
	outLines := strings.Split(strings.TrimSpace(string(out)), "\n")
	dir := outLines[len(outLines)-1] // pwd's
	if filepath.Dir(dir) != top {
		t.Fatalf("the README's commands ended in %s, not in a new directory beside the clone", dir)
	}

	goMod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goSum, err := os.ReadFile(filepath.Join(dir, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for _, heavy := range []string{"hashicorp/go-plugin", "google.golang.org/grpc", "google.golang.org/protobuf", "prometheus"} {
		if strings.Contains(string(goMod), heavy) || strings.Contains(string(goSum), heavy) {
			t.Errorf("the handler's module requires %s, which the worker does not link:\n%s", heavy, goMod)
		}
	}
	t.Logf("the handler's go.sum: %d lines", strings.Count(string(goSum), "\n"))

	// A handler's module may ask for the first 1.26 release: requiring the
	// dispatcher's module does not raise it.
	cmd = exec.CommandContext(ctx, "bash", "-c", "go mod edit -go=1.26.0 && go mod tidy && go mod edit -json")
	cmd.Dir, cmd.Env = dir, env
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), `"Go": "1.26.0"`) {
		t.Errorf("go 1.26.0 in the handler's go.mod did not stay (%v):\n%s", err, out)
	}

	serveReadme(t, dir, serve)
}

// serveReadme runs the README's serving command line in dir, on free ports
// instead of the documented ones, and checks that the worker answers.
func serveReadme(t *testing.T, dir, line string) {
	args := strings.Fields(strings.ReplaceAll(line, "127.0.0.1:8080", "127.0.0.1:0"))
	args = append(args, "--admin-listen", "127.0.0.1:0")
	cmd := exec.Command(filepath.Join(dir, args[0]), args[1:]...)
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		for range lines {
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("the dispatcher's exit after SIGTERM: %v", err)
		}
	}()
	addr := regexp.MustCompile(`msg="dispatcher listening" .*addr="?([0-9.]+:[0-9]+)`)
	deadline := time.NewTimer(time.Minute)
	defer deadline.Stop()
	var log []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("%s exited before listening:\n%s", line, strings.Join(log, "\n"))
			}
			log = append(log, l)
			m := addr.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			resp, err := http.Get("http://" + m[1] + "/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "hello world\n" {
				t.Errorf("the README's worker answered %d %q", resp.StatusCode, b)
			}
			go func() {
				for range lines {
				}
			}()
			return
		case <-deadline.C:
			t.Fatalf("%s: no listening line within a minute:\n%s", line, strings.Join(log, "\n"))
		}
	}
}
