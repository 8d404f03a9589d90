// Command conformance checks that a worker binary speaks the dispatcher's
// wire protocol (ipc/PROTOCOL.md). It starts the worker through the real
// handshake, then drives its slots frame by frame: valid requests, streamed
// bodies and flow control, pipelining, cancellation, pings, malformed and
// oversized frames, and shutdown. It prints one PASS or FAIL line per check,
// with the section of PROTOCOL.md it tests, and exits with status 1 if any
// check failed (2 for a usage error).
//
//	go run ./cmd/conformance ./bin/handler
//	go run ./cmd/conformance -path /health -env API_TOKEN=x ./bin/handler -- --worker-flag
//
// Each check runs against a fresh worker process. The checks judge frames,
// not the handler's answers: any status is fine, so the handler at -path
// only needs to answer GET and POST requests with no side effects worth
// worrying about. Its frame encoding and decoding are its own, written from
// PROTOCOL.md, so that a mistake shared by the dispatcher and the Go sdk
// cannot hide from it.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

func main() {
	stderr := os.Stderr
	quietYamux()
	os.Exit(run(os.Args[1:], os.Stdout, stderr))
}

// quietYamux drops the lines yamux (under go-plugin) prints on standard
// error when a worker's control connection breaks, which the checks that
// kill workers cause on purpose; other lines pass through. It replaces
// os.Stderr, which yamux reads when go-plugin connects: run gets the
// original, so its own messages never wait in the pipe.
func quietYamux() {
	r, w, err := os.Pipe()
	if err != nil {
		return
	}
	orig := os.Stderr
	os.Stderr = w
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if !strings.Contains(sc.Text(), "yamux:") {
				fmt.Fprintln(orig, sc.Text())
			}
		}
	}()
}

type envFlag []string

func (e *envFlag) String() string { return strings.Join(*e, " ") }
func (e *envFlag) Set(v string) error {
	if !strings.Contains(v, "=") || strings.HasPrefix(v, "=") {
		return fmt.Errorf("%q: want KEY=value", v)
	}
	*e = append(*e, v)
	return nil
}

// run runs the checks selected by args and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("conformance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var env envFlag
	t := &target{}
	fs.StringVar(&t.uri, "path", "/", "request-target of the requests sent (any status is accepted)")
	fs.DurationVar(&t.timeout, "timeout", 10*time.Second, "limit for each wait for the worker: an answer, an exit")
	fs.DurationVar(&t.startTimeout, "start-timeout", 30*time.Second, "limit for each worker's start and handshake")
	fs.Var(&env, "env", "`KEY=value` added to the worker's environment (repeatable)")
	runPattern := fs.String("run", "", "run only the checks whose name matches this `regexp`")
	list := fs.Bool("list", false, "list the checks and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: conformance [flags] WORKER-BINARY [-- worker args...]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *list {
		for _, c := range checks {
			fmt.Fprintf(stdout, "%-22s §%-9s %s\n", c.name, c.section, c.what)
		}
		return 0
	}
	if fs.NArg() < 1 {
		fs.Usage()
		return 2
	}
	t.env = env
	t.args = fs.Args()[1:]
	if len(t.args) > 0 && t.args[0] == "--" {
		t.args = t.args[1:]
	}
	path, err := filepath.Abs(fs.Arg(0))
	if err == nil {
		_, err = os.Stat(path)
	}
	if err != nil {
		fmt.Fprintf(stderr, "conformance: %v\n", err)
		return 2
	}
	t.path = path
	if !strings.HasPrefix(t.uri, "/") {
		fmt.Fprintf(stderr, "conformance: -path %q: want an origin-form request-target such as /health\n", t.uri)
		return 2
	}
	var re *regexp.Regexp
	if *runPattern != "" {
		if re, err = regexp.Compile(*runPattern); err != nil {
			fmt.Fprintf(stderr, "conformance: -run: %v\n", err)
			return 2
		}
	}
	// Unix socket paths are short: keep go-plugin's directory near the root.
	if t.socketDir, err = os.MkdirTemp("", "cf"); err != nil {
		fmt.Fprintf(stderr, "conformance: %v\n", err)
		return 1
	}
	defer os.RemoveAll(t.socketDir)

	fmt.Fprintf(stdout, "conformance of %s to ipc/PROTOCOL.md (protocol version 1), %s limit per wait\n", t.path, t.timeout)
	var passed, failed, skipped int
	started := true
	for _, c := range checks {
		if re != nil && !re.MatchString(c.name) {
			continue
		}
		if !started && !c.noStart {
			fmt.Fprintf(stdout, "SKIP  %-22s §%-9s the worker does not start\n", c.name, c.section)
			skipped++
			continue
		}
		t0 := time.Now()
		detail, logTail, err := runCheck(t, c)
		took := time.Since(t0).Round(time.Millisecond)
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "FAIL  %-22s §%-9s %s: %s (%s)\n", c.name, c.section, c.what, oneLine(err.Error()), took)
			for _, l := range logTail {
				fmt.Fprintf(stdout, "      | %s\n", l)
			}
			var se *startFailure
			if errors.As(err, &se) && c.name == "handshake" {
				started = false
			}
			continue
		}
		passed++
		if detail != "" {
			detail = ": " + detail
		}
		fmt.Fprintf(stdout, "PASS  %-22s §%-9s %s%s (%s)\n", c.name, c.section, c.what, detail, took)
	}
	fmt.Fprintf(stdout, "%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || skipped > 0 {
		return 1
	}
	return 0
}

// oneLine keeps a check's report on its line: go-plugin's start errors span
// several.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " / ")), " ")
}

// startFailure is a worker that did not complete the handshake.
type startFailure struct{ err error }

func (e *startFailure) Error() string { return "the worker did not start: " + e.err.Error() }
func (e *startFailure) Unwrap() error { return e.err }

// runCheck runs one check against a fresh worker and returns its detail or
// error, with the worker's last output lines when it failed.
func runCheck(t *target, c check) (detail string, logTail []string, err error) {
	if c.noStart {
		detail, err = c.run(t, nil)
		return detail, nil, err
	}
	w, err := t.launch(c.launch)
	if err != nil {
		return "", nil, &startFailure{err}
	}
	defer w.stop()
	detail, err = c.run(t, w)
	if err != nil {
		// Give a dying worker's last words a moment to arrive.
		w.waitExit(100 * time.Millisecond)
		return "", w.log.tail(5), err
	}
	return detail, nil, nil
}
