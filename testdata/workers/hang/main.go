// Command hang never answers /hang. With /spawn it first starts a
// grandchild (sleep) in its process group and reports its pid on stderr as
// "grandchild <pid>". /ctx logs "hang: waiting", waits for its context to
// be cancelled and logs that. /deadline waits for its context's deadline and
// answers 503 itself. Other paths answer "ok" and the worker's pid.
package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"

	"github.com/childproc/dispatcher/sdk"
)

func main() {
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/spawn":
			cmd := exec.Command("sleep", "1000")
			if err := cmd.Start(); err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(os.Stderr, "grandchild %d\n", cmd.Process.Pid)
			select {}
		case "/hang":
			select {}
		case "/deadline":
			// Gives up at its deadline, with an answer of its own.
			<-r.Context().Done()
			http.Error(w, "gave up: "+r.Context().Err().Error(), http.StatusServiceUnavailable)
			return
		case "/ctx":
			fmt.Fprintln(os.Stderr, "hang: waiting for cancellation of", sdk.RequestID(r.Context()))
			<-r.Context().Done()
			fmt.Fprintln(os.Stderr, "hang: context cancelled:", r.Context().Err())
			return
		}
		fmt.Fprintf(w, "ok %d\n", os.Getpid())
	}))
}
