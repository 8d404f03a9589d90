package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The promise at default flags: a request that crashes, hangs or panics
// costs that request and nothing else. A pool of four takes a load where one
// request in five makes its worker exit, SIGKILL itself, panic in its
// handler or hang; every healthy request gets 200, every fault its status,
// the breaker stays closed, and afterwards the pool has its four workers,
// no zombie, and as many descriptors as before.
func TestChaosAtDefaultFlags(t *testing.T) {
	t.Parallel()
	w := bin(t, "chaos")
	d := startDispatcher(t, "--workers", w, "--pool-size", "4", "--timeout", "1s")
	self := d.cmd.Process.Pid
	fdsBefore := countFDs(t, self)

	faults := []struct {
		query  string
		status int
	}{
		{"fault=crash&how=exit", http.StatusBadGateway},
		{"fault=crash&how=kill", http.StatusBadGateway},
		{"fault=panic", http.StatusInternalServerError},
		{"fault=hang", http.StatusGatewayTimeout},
	}
	const clients, perClient = 8, 60
	type failure struct {
		query, got string
	}
	var mu sync.Mutex
	var failures []failure
	healthy, faulty := 0, 0
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// No keep-alive: the dispatcher's descriptors are counted after.
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for i := range perClient {
				token := fmt.Sprintf("c%d-%d", c, i)
				q, want, ok := "fault=none&token="+token, http.StatusOK, true
				if (c+i)%5 == 0 {
					f := faults[(c*perClient+i)%len(faults)]
					q, want, ok = f.query, f.status, false
				}
				resp, err := client.Get(d.url + "/?" + q)
				got := ""
				if err != nil {
					got = err.Error()
				} else {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					got = fmt.Sprintf("%d %q", resp.StatusCode, firstLineOf(string(b)))
					if id := resp.Header.Get("X-Request-Id"); id != "" {
						if line, ok := d.log.wait(time.Second, containsAll("req_id="+id, "level=error")); ok {
							got += "; logged: " + line
						}
					}
					if resp.StatusCode == want && (!ok || strings.HasPrefix(string(b), "ok "+token+" ")) {
						got = ""
					}
				}
				mu.Lock()
				if ok {
					healthy++
				} else {
					faulty++
				}
				if got != "" {
					failures = append(failures, failure{q, got})
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for i, f := range failures {
		if i == 10 {
			t.Errorf("... %d failures in all", len(failures))
			break
		}
		t.Errorf("%s: %s", f.query, f.got)
	}
	t.Logf("%d healthy and %d faulty requests", healthy, faulty)
	if line, ok := d.log.wait(0, containsAll("breaker open")); ok {
		t.Errorf("the breaker opened: %s", line)
	}

	// Healed: four workers answer, and nothing else is left of the others.
	// (A worker that died as the load ended is a zombie until its init
	// reaps it: like the dispatcher's own zombies below, polled for.)
	var workers, zombies []int
	if !poll(goneWait, func() bool {
		workers, zombies = processesOf(w), nil
		for _, pid := range workers {
			if st, _, _ := procStat(pid); st == 'Z' {
				zombies = append(zombies, pid)
			}
		}
		return len(workers) == 4 && len(zombies) == 0
	}) {
		t.Errorf("workers after the load: %v (zombies: %v), want 4 and none", workers, zombies)
	}
	var z []int
	if !poll(goneWait, func() bool { z = zombieChildren(self); return len(z) == 0 }) {
		t.Errorf("zombie children of the dispatcher: %v", z)
	}
	var fdsAfter int
	if !poll(goneWait, func() bool { fdsAfter = countFDs(t, self); return fdsAfter <= fdsBefore }) {
		t.Errorf("descriptors: %d before the load, %d after", fdsBefore, fdsAfter)
	}
	faultStop(t, d)
}

// A worker that moves itself into the dispatcher's process group and
// ignores SIGQUIT still dies at its timeout: its client gets 504, it is
// replaced, the next request gets 200, and SIGTERM stops the dispatcher
// within its shutdown timeout and the stated bound.
func TestUnkillableWorker(t *testing.T) {
	t.Parallel()
	w := bin(t, "escape")
	d := startDispatcher(t, "--workers", w, "--pool-size", "1", "--timeout", "1s", "--shutdown-timeout", "2s")
	pid := d.workers[0]
	resp, body := d.get("/?how=group&how=quit")
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("hanging request: %d %q, want 504", resp.StatusCode, body)
	}
	d.waitLog("escape: ready")
	if !waitGone(pid, goneWait) {
		t.Fatalf("the worker %d that left its process group survived its kill", pid)
	}
	faultExpect(t, d, "/", http.StatusOK, "")
	start := time.Now()
	faultStop(t, d)
	// The shutdown timeout, then at most StopGrace for killed workers;
	// slack for a loaded machine.
	if took := time.Since(start); took > 2*time.Second+2*time.Second+5*time.Second {
		t.Errorf("shutdown took %s", took)
	}
}

// A descendant that left its worker's session and process group dies with
// the worker: killed with its cell, or, where no cgroup holds it, adopted
// by the dispatcher (a child subreaper) and killed.
func TestEscapedDescendantDies(t *testing.T) {
	t.Parallel()
	// --sandbox=off: the test finds the descendant by the pid the worker
	// reports, which in a sandbox is its PID namespace's.
	d := startDispatcher(t, "--workers", bin(t, "escape"), "--pool-size", "1", "--timeout", "1s", "--sandbox=off")
	resp, body := d.get("/?how=fork")
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("hanging request: %d %q, want 504", resp.StatusCode, body)
	}
	msg, _ := field(d.waitLog("escape: descendant"), "msg")
	desc, err := strconv.Atoi(strings.TrimPrefix(msg, "escape: descendant "))
	if err != nil {
		t.Fatalf("no pid in %q", msg)
	}
	if !waitGone(desc, goneWait) {
		t.Fatalf("the escaped descendant %d outlived its worker", desc)
	}
	faultExpect(t, d, "/", http.StatusOK, "")
	faultStop(t, d)
}

func firstLineOf(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// countFDs counts the open descriptors of process pid.
func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// zombieChildren lists the children of pid that are zombies.
func zombieChildren(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	for _, task := range tasks {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", task.Name(), "children"))
		for _, f := range strings.Fields(string(b)) {
			c, _ := strconv.Atoi(f)
			if st, _, ok := procStat(c); ok && st == 'Z' {
				out = append(out, c)
			}
		}
	}
	return out
}
