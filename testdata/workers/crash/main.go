// Command crash dies on request, after a line on stderr: /exit exits with
// status 3, /kill sends itself SIGKILL, /fatal overflows its stack (a Go
// fatal error), /gopanic panics in a goroutine of its own (which the sdk
// cannot recover). /say?text=T writes T on stderr and answers "ok"; so does
// any other path, without writing. With CRASH_IDLE_AFTER=D in its
// environment it exits with status 4 D after it started, serving or not (a
// binary that cannot stay up).
package main

import (
	"fmt"
	"net/http"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/childproc/dispatcher/sdk"
)

func recurse(n int) int { return recurse(n+1) + 1 }

func main() {
	if d, err := time.ParseDuration(os.Getenv("CRASH_IDLE_AFTER")); err == nil {
		time.AfterFunc(d, func() {
			fmt.Fprintln(os.Stderr, "crash: exiting while idle, as asked")
			os.Exit(4)
		})
	}
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/exit":
			fmt.Fprintln(os.Stderr, "crash: exiting with status 3 as asked")
			os.Exit(3)
		case "/kill":
			fmt.Fprintln(os.Stderr, "crash: killing myself")
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		case "/fatal":
			debug.SetMaxStack(1 << 20)
			recurse(0)
		case "/gopanic":
			go func() { panic("boom in a goroutine") }()
			select {}
		case "/say":
			fmt.Fprintln(os.Stderr, r.URL.Query().Get("text"))
		}
		fmt.Fprintln(w, "ok")
	}))
}
