package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/internal/testbin"
)

var bins map[string]string

func TestMain(m *testing.M) {
	quietYamux() // as main does: killed workers make go-plugin's yamux complain
	os.Exit(testbin.Run(m, &bins,
		"examples/hello",              // the Go sdk, a handler that ignores the body
		"examples/files",              // the Go sdk, configured by environment
		"testdata/workers/echo",       // the Go sdk, streaming the body back
		"testdata/workers/broken",     // deliberate protocol bugs
		"testdata/workers/stdoutjunk", // not a worker at all
	))
}

// outcome is one line of the report.
type outcome struct {
	status string // PASS, FAIL or SKIP
	line   string
}

var (
	resultLine  = regexp.MustCompile(`^(PASS|FAIL|SKIP) +(\S+) +§`)
	summaryLine = regexp.MustCompile(`(?m)^(\d+) passed, (\d+) failed, (\d+) skipped$`)
)

// conformance runs the command with args and returns its exit status, each
// check's outcome by name, and the whole report.
func conformance(t *testing.T, args ...string) (int, map[string]outcome, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	report := stdout.String()
	if stderr.Len() > 0 {
		t.Logf("stderr:\n%s", stderr.String())
	}
	outcomes := map[string]outcome{}
	for _, l := range strings.Split(report, "\n") {
		if m := resultLine.FindStringSubmatch(l); m != nil {
			if _, dup := outcomes[m[2]]; dup {
				t.Errorf("check %s reported twice", m[2])
			}
			outcomes[m[2]] = outcome{m[1], l}
		}
	}
	return code, outcomes, report
}

// wantSummary checks the report's last line.
func wantSummary(t *testing.T, report string, passed, failed, skipped int) {
	t.Helper()
	want := fmt.Sprintf("%d passed, %d failed, %d skipped", passed, failed, skipped)
	if m := summaryLine.FindString(report); m != want {
		t.Errorf("summary %q, want %q", m, want)
	}
}

// Workers built with the Go sdk pass every check, whether their handler
// ignores the request body or streams it back.
func TestSDKWorkersConform(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"hello", []string{bins["hello"]}},
		{"echo", []string{bins["echo"]}},
		{"files with -env and -path", []string{"-env", "FILES_DIR=" + t.TempDir(), "-path", "/files/report.txt", bins["files"]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, outcomes, report := conformance(t, tc.args...)
			if code != 0 {
				t.Errorf("exit status %d, want 0", code)
			}
			for _, c := range checks {
				if o := outcomes[c.name]; o.status != "PASS" {
					t.Errorf("check %s: %q, want PASS", c.name, o.line)
				}
			}
			wantSummary(t, report, len(checks), 0, 0)
			if tc.name == "echo" && !strings.Contains(outcomes["wide-chunk"].line, fmt.Sprintf("in chunks of up to %d", wideChunkSize)) {
				t.Errorf("check wide-chunk: %q, want the body sent in chunks of %d bytes", outcomes["wide-chunk"].line, wideChunkSize)
			}
			if t.Failed() {
				t.Logf("report:\n%s", report)
			}
		})
	}
}

// Each bug of testdata/workers/broken fails the checks that cover it, with
// a reason naming what the worker did wrong; what it gets right passes.
func TestBrokenWorkerFails(t *testing.T) {
	badFrame := "answered the ping sent after the bad frame instead of closing the slot"
	wantFail := map[string]string{
		"cancel-streamed-body": "after the cancel: waiting for the answer to request 3: nothing from the worker within 3s",
		"ping-while-busy":      "slot 2, while the request on slot 1 waits for its body: waiting for the pong to ping 3: nothing from the worker within 3s",
		"head-ack":             "window frame (exchange 4) where the acknowledgement of request 4, a window frame [4, 0], was due",
		"pipelined-cancel":     "abort frame for exchange 5 while exchange 3 was due: answers must come in order, one exchange at a time; the cancelled request 5 was answered ahead of the ones before it instead of in its turn",
		"oversized-frame":      "slot still open after the bad frame: nothing from the worker within 3s",
		"empty-frame":          badFrame,
		"unknown-kind":         badFrame,
		"wrong-direction":      badFrame,
		"malformed-msgpack":    badFrame,
		"short-request":        badFrame,
		"wrong-type":           badFrame,
		"trailing-bytes":       badFrame,
		"huge-length":          badFrame,
		"quit":                 "exited with status 3 after Control.Quit, want 0",
	}
	code, outcomes, report := conformance(t, "-timeout", "3s", bins["broken"])
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	for _, c := range checks {
		o := outcomes[c.name]
		reason, bad := wantFail[c.name]
		switch {
		case !bad && o.status != "PASS":
			t.Errorf("check %s: %q, want PASS", c.name, o.line)
		case bad && (o.status != "FAIL" || !strings.Contains(o.line, reason)):
			t.Errorf("check %s: %q, want FAIL with %q", c.name, o.line, reason)
		}
	}
	wantSummary(t, report, len(checks)-len(wantFail), len(wantFail), 0)
	// A failure shows what the worker said about it.
	if !strings.Contains(report, "FAIL  empty-frame") || !strings.Contains(report, "      | broken: ignoring a bad frame: ipc: protocol violation: empty frame") {
		t.Error("the empty-frame failure lacks the worker's own output")
	}
	if t.Failed() {
		t.Logf("report:\n%s", report)
	}
}

// A binary that never completes the handshake fails it, and the checks that
// need a running worker are skipped, which also fails the run.
func TestWorkerThatDoesNotStart(t *testing.T) {
	tests := []struct {
		name, reason string
		args         []string
	}{
		{"not a worker", "Unrecognized remote plugin message: this is not a handshake line",
			[]string{"-run", "^(handshake|ping|quit)$", bins["stdoutjunk"]}},
		{"configuration missing", "files: FILES_DIR is not set",
			[]string{"-run", "^(handshake|ping|quit)$", bins["files"]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, outcomes, report := conformance(t, tc.args...)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			if o := outcomes["handshake"]; o.status != "FAIL" || !strings.Contains(o.line, "the worker did not start") || !strings.Contains(o.line, tc.reason) {
				t.Errorf("handshake: %q, want FAIL with %q", o.line, tc.reason)
			}
			for _, name := range []string{"ping", "quit"} {
				if o := outcomes[name]; o.status != "SKIP" || !strings.Contains(o.line, "the worker does not start") {
					t.Errorf("%s: %q, want SKIP", name, o.line)
				}
			}
			wantSummary(t, report, 0, 1, 2)
		})
	}
}

func TestRunSelectsChecks(t *testing.T) {
	code, outcomes, report := conformance(t, "-run", "^ping$|^pipelin", bins["hello"])
	if code != 0 || len(outcomes) != 3 || outcomes["ping"].status != "PASS" ||
		outcomes["pipelining"].status != "PASS" || outcomes["pipelined-cancel"].status != "PASS" {
		t.Errorf("exit status %d, report:\n%s", code, report)
	}
	wantSummary(t, report, 3, 0, 0)
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no binary", nil, 2, "Usage: conformance [flags] WORKER-BINARY"},
		{"missing binary", []string{"/nonexistent/worker"}, 2, "no such file or directory"},
		{"relative path", []string{"-path", "health", bins["hello"]}, 2, `-path "health": want an origin-form request-target`},
		{"bad pattern", []string{"-run", "(", bins["hello"]}, 2, "-run: error parsing regexp"},
		{"bad env", []string{"-env", "NOEQUALS", bins["hello"]}, 2, `"NOEQUALS": want KEY=value`},
		{"help", []string{"-h"}, 0, "-start-timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tc.args, &stdout, &stderr); code != tc.code {
				t.Errorf("exit status %d, want %d", code, tc.code)
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.stderr)
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

func TestList(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-list"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
	if len(lines) != len(checks) {
		t.Fatalf("%d lines for %d checks:\n%s", len(lines), len(checks), stdout.String())
	}
	for i, c := range checks {
		if !strings.HasPrefix(lines[i], c.name+" ") || !strings.Contains(lines[i], "§"+c.section) || !strings.HasSuffix(lines[i], c.what) {
			t.Errorf("line %q does not describe check %s", lines[i], c.name)
		}
	}
}
