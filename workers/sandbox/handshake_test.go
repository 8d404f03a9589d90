package sandbox_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/ipc/launch"
	"github.com/childproc/dispatcher/workers"
	"github.com/childproc/dispatcher/workers/sandbox"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
)

// A worker that prints its own handshake, naming a file outside its socket
// directory (a root-only file in a root-only directory, directly, through
// "..", through a symbolic link to it or to its directory) or another kind
// of address, is refused like a non-worker, in every confinement: the
// victim survives, and no process, socket or directory is left behind.
func TestForgedHandshake(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	victimDir, err := os.MkdirTemp("", "victim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(victimDir) })
	if err := os.Chmod(victimDir, 0o700); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(victimDir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	modes := []struct{ name, env string }{
		{"victim path", "path:" + victim},
		{"dot-dot", "dotdot:" + victim},
		{"symlink to the victim", "symlink:" + victim},
		{"symlink to its directory", "dirlink:" + victim},
		{"tcp", "tcp:"},
		{"junk", "junk:"},
		{"regular file", "file:"},
	}
	for _, conf := range []struct {
		name string
		opts sandbox.Options
	}{
		{"default", sandbox.Options{}},
		{"user", sandbox.Options{User: "nobody"}},
		{"sandbox", sandbox.Options{User: "nobody", Namespaces: true}},
	} {
		t.Run(conf.name, func(t *testing.T) {
			t.Parallel()
			sb := newSandbox(t, bins["hostile"], conf.opts)
			t.Cleanup(func() { sb.Close() })
			for _, m := range modes {
				t.Run(m.name, func(t *testing.T) {
					forgedHandshake(t, sb, m.env, victim)
				})
			}
		})
	}
}

func forgedHandshake(t *testing.T, sb *sandbox.Sandbox, mode, victim string) {
	sock, err := os.MkdirTemp("", "sbh")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sock)
	if err := os.Chmod(sock, 0o711); err != nil {
		t.Fatal(err)
	}
	token := "forged-" + strconv.FormatUint(rand.Uint64()%1e12, 10)
	logger, hook := test.NewNullLogger()
	p, err := workers.NewPool(workers.Config{
		Path:         bins["hostile"],
		Args:         []string{token},
		Env:          append(workers.MinimalEnv(), "HOSTILE_HANDSHAKE="+mode),
		Size:         1,
		SocketDir:    sock,
		Sandbox:      sb,
		StartTimeout: 10 * time.Second,
		Logger:       logrus.NewEntry(logger),
	})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Start(context.Background())
	if cerr := p.Close(context.Background()); cerr != nil {
		t.Errorf("pool Close: %v", cerr)
	}
	var se *launch.StartError
	if !errors.As(err, &se) || !errors.Is(err, launch.ErrHandshakeAddress) {
		t.Errorf("Start: %v, want a StartError for the handshake's address", err)
	} else {
		t.Logf("refused: %v", err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "precious\n" {
		t.Fatalf("the victim did not survive: %q, %v", b, err)
	}
	waitFor(t, "the worker to be gone", func() bool {
		dirs, _ := filepath.Glob("/proc/[0-9]*")
		for _, d := range dirs {
			if b, err := os.ReadFile(d + "/cmdline"); err == nil && bytes.Contains(b, []byte(token)) {
				pid, _ := strconv.Atoi(filepath.Base(d))
				if alive(pid) {
					return false
				}
			}
		}
		return true
	})
	if left, _ := filepath.Glob(filepath.Join(sock, "*", "*")); len(left) > 0 {
		t.Errorf("left behind in the socket directory: %v", left)
	}
	for _, e := range hook.AllEntries() {
		if strings.Contains(e.Message, "panic") {
			t.Errorf("log: %s %v", e.Message, e.Data)
		}
	}
}
