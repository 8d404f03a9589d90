// Command crash dies on request, after a line on stderr: /exit exits with
// status 3, /kill sends itself SIGKILL, /fatal overflows its stack (a Go
// fatal error). Any other path answers "ok".
package main

import (
	"fmt"
	"net/http"
	"os"
	"runtime/debug"
	"syscall"

	"github.com/childproc/dispatcher/sdk"
)

func recurse(n int) int { return recurse(n+1) + 1 }

func main() {
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
		}
		fmt.Fprintln(w, "ok")
	}))
}
