// Command escape is a worker that tries to outlive its kill. Each request
// says how, with the query parameter how (several may be given):
//
//	how=group    moves the worker into its parent's process group (the
//	             dispatcher's), out of its own
//	how=quit     ignores SIGQUIT and SIGTERM
//	how=fork     starts a descendant that leaves the worker's session and
//	             process group (setsid) and sleeps for an hour; it logs
//	             "escape: descendant PID"
//
// then it logs "escape: ready PID" and hangs without answering, so that
// the dispatcher's timeout must kill it. Without how, it answers 200
// "pid PID".
//
// The descendant is this binary again with ESCAPE_DESCENDANT=1.
package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/sdk"
)

var stderr = os.NewFile(2, "/dev/stderr")

func main() {
	if os.Getenv("ESCAPE_DESCENDANT") == "1" {
		time.Sleep(time.Hour)
		return
	}
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		how := r.URL.Query()["how"]
		if len(how) == 0 {
			fmt.Fprintf(w, "pid %d\n", os.Getpid())
			return
		}
		if slices.Contains(how, "quit") {
			signal.Ignore(syscall.SIGQUIT, syscall.SIGTERM)
		}
		if slices.Contains(how, "fork") {
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), "ESCAPE_DESCENDANT=1")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := cmd.Start(); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(stderr, "escape: descendant %d\n", cmd.Process.Pid)
		}
		if slices.Contains(how, "group") {
			pgid, err := syscall.Getpgid(os.Getppid())
			if err == nil {
				err = syscall.Setpgid(0, pgid)
			}
			if err != nil {
				http.Error(w, "setpgid: "+err.Error(), http.StatusInternalServerError)
				return
			}
		}
		fmt.Fprintf(stderr, "escape: ready %s\n", strconv.Itoa(os.Getpid()))
		select {}
	}))
}
