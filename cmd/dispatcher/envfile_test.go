package main

// --env-file and the config file's env-file: variables for the workers
// that never appear on a command line.

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func writeFile(t *testing.T, path, text string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadEnvFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text string
		want       []string
		err        string // in the error; "" for none
	}{
		{"empty", "", nil, ""},
		{"lines, comments, blanks, CRLF", "# secrets\n\nA=1\r\n  # indented comment\n\tB = two words \nC=x=y\nD=\n", []string{"A=1", "B = two words ", "C=x=y", "D="}, ""},
		{"no trailing newline", "A=1", []string{"A=1"}, ""},
		{"no =", "A=1\nTOKEN s3cr3t\n", nil, ":2: want KEY=VALUE"},
		{"empty key", "\n\n=s3cr3t\n", nil, ":3: empty variable name"},
		{"NUL in value", "A=s3cr\x00t\n", nil, ":1: the value of A contains NUL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".env"), tc.text)
			got, err := readEnvFile(path)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), path+tc.err)):
				t.Fatalf("error %v, want one with %q", err, path+tc.err)
			case err != nil && strings.Contains(err.Error(), "s3cr"):
				t.Fatalf("the error shows the value: %v", err)
			case !slices.Equal(got, tc.want):
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// A missing or malformed env file stops the dispatcher with status 2 and a
// line naming the file (and line), on the command line and in a config file.
func TestEnvFileUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := writeFile(t, filepath.Join(dir, "bad.env"), "OK=1\nTOKEN s3cr3t\n")
	config := writeConfig(t, "functions:\n  - name: web\n    workers: HELLO\n    env-file: bad.env\n")
	if err := os.Rename(bad, filepath.Join(filepath.Dir(config), "bad.env")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing", []string{"--workers", bin(t, "hello"), "--env-file", filepath.Join(dir, "none.env")}, `--env-file "` + filepath.Join(dir, "none.env") + `": no such file or directory`},
		{"malformed", []string{"--workers", bin(t, "hello"), "--env-file", filepath.Join(filepath.Dir(config), "bad.env")}, "bad.env:2: want KEY=VALUE"},
		{"malformed, from the config", []string{"--config", config}, "dispatcher.yaml:4: functions[0] (web): --env-file " + filepath.Join(filepath.Dir(config), "bad.env") + ":2: want KEY=VALUE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, stderr, _ := run(t, append(tc.args, "--listen", "127.0.0.1:0")...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit status %d, stderr:\n%s\nwant 2 and %q", code, stderr, tc.want)
			}
			if strings.Contains(stderr, "s3cr3t") {
				t.Errorf("stderr shows the value:\n%s", stderr)
			}
		})
	}
}

// The workers get the file's variables (--env overriding them); neither the
// dispatcher's command line nor the workers' shows them.
func TestEnvFile(t *testing.T) {
	t.Parallel()
	env := writeFile(t, filepath.Join(t.TempDir(), "secrets.env"), "# for the handler\nAPI_TOKEN=tok-5f3a9c\nGREETING=from-file\n")
	d := startDispatcher(t, "--workers", bin(t, "hostile"), "--pool-size", "1", "--env-file", env, "--env", "GREETING=from-flag")
	resp, body := d.get("/whoami")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /whoami: %d %s", resp.StatusCode, body)
	}
	for _, want := range []string{"env API_TOKEN=tok-5f3a9c\n", "env GREETING=from-flag\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("worker lacks %q:\n%s", want, body)
		}
	}
	// What ps shows: every process's command line is world-readable.
	for _, pid := range append([]int{d.cmd.Process.Pid}, d.workers...) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(cmdline), "tok-5f3a9c") {
			t.Errorf("pid %d's command line shows the secret: %q", pid, cmdline)
		}
		if pid == d.cmd.Process.Pid && !strings.Contains(string(cmdline), "GREETING=from-flag") {
			t.Errorf("the dispatcher's command line %q lacks --env's value: is this the right file?", cmdline)
		}
	}
}

// A reload re-reads the env files: a changed one restarts its function's
// workers with the new values (SIGHUP, and --watch, which watches the
// files); an unchanged one keeps them.
func TestEnvFileReload(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "functions:\n  - name: web\n    workers: "+bin(t, "hostile")+"\n    pool-size: 1\n    env-file: web.env\n")
	env := writeFile(t, filepath.Join(filepath.Dir(path), "web.env"), "API_TOKEN=first\n")
	d := startDispatcher(t, "--config", path, "--watch")
	whoami := func(want string) {
		t.Helper()
		if _, body := d.get("/whoami"); !strings.Contains(body, "env API_TOKEN="+want+"\n") {
			t.Fatalf("worker lacks API_TOKEN=%s:\n%s", want, body)
		}
	}
	whoami("first")
	d.signal(syscall.SIGHUP)
	if line := d.waitLogFunc("reload 1", nthLine(1, "msg=\"reloaded:")); !strings.Contains(line, "kept=web") {
		t.Errorf("a reload with the env file unchanged: %s; want web's workers kept", line)
	}
	// Replaced by a rename, as deploy tools do; --watch reloads.
	writeFile(t, env+".new", "API_TOKEN=second\n")
	if err := os.Rename(env+".new", env); err != nil {
		t.Fatal(err)
	}
	if line := d.waitLogFunc("reload 2", nthLine(2, "msg=\"reloaded:")); !strings.Contains(line, "restarted=web") {
		t.Errorf("a reload after the env file changed: %s; want web's workers restarted", line)
	}
	whoami("second")
}
