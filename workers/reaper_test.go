package workers

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Without a cell (no Sandbox), a worker's descendant that left its session
// and process group is still killed when the worker dies: the Reaper
// adopts it and its sweep kills it. A Reaper changes the whole process, so
// the scenario runs in a process of its own (TestReaperHelperProcess); it
// also checks that, without a Reaper, the descendant survives.
func TestReaperKillsEscapees(t *testing.T) {
	for _, reaper := range []bool{true, false} {
		t.Run(map[bool]string{true: "with a reaper", false: "without"}[reaper], func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestReaperHelperProcess$", "-test.v")
			cmd.Env = append(os.Environ(), "WORKERS_REAPER_HELPER="+strconv.FormatBool(reaper))
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestReaperHelperProcess") {
				t.Fatalf("helper: %v\n%s", err, out)
			}
		})
	}
}

func TestReaperHelperProcess(t *testing.T) {
	mode := os.Getenv("WORKERS_REAPER_HELPER")
	if mode == "" {
		t.Skip("the helper process of TestReaperKillsEscapees")
	}
	var r *Reaper
	if mode == "true" {
		var err error
		if r, err = NewReaper(); err != nil {
			t.Fatal(err)
		}
	}
	p := startPool(t, "escape", Config{Size: 1, Timeout: 300 * time.Millisecond, QuarantineGrace: 100 * time.Millisecond, Reaper: r})
	pid := p.Workers()[0]
	_, _, _, err := get(context.Background(), p.Pool, "/?how=fork")
	var te *TimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("hanging request: %v", err)
	}
	e := logLine(p.hook, "escape: descendant ")
	if e == nil {
		t.Fatal("the worker started no descendant")
	}
	desc, _ := strconv.Atoi(strings.TrimPrefix(e.Message, "escape: descendant "))
	waitGone(t, pid)
	if r == nil {
		if !alive(desc) {
			t.Fatal("without a reaper the escapee died: the test shows nothing")
		}
		_ = syscallKill(desc)
		return
	}
	waitGone(t, desc)
	// The sweep logs after its kill, which waitGone may see first.
	waitFor(t, "the log line about the escapees", func() bool {
		return logLine(p.hook, "killed processes that escaped a worker") != nil
	})
}

func syscallKill(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}
