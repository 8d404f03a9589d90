// Command probe reports what a worker sees of its process, for the tests of
// package sdktest: GET / answers JSON with its pid, arguments, working
// directory and environment; /barrier?n=N answers only once N requests are
// inside the handler at the same time; /log logs a warning through
// sdk.Logger; /sleep never answers, whatever its context says.
package main

import (
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"sync"

	"github.com/childproc/dispatcher/sdk"
)

type report struct {
	PID  int
	Args []string
	Dir  string
	Env  []string
}

var barrier struct {
	mu      sync.Mutex
	arrived int
	open    chan struct{}
}

func main() {
	barrier.open = make(chan struct{})
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/barrier":
			n, err := strconv.Atoi(r.URL.Query().Get("n"))
			if err != nil {
				http.Error(w, "n: "+err.Error(), http.StatusBadRequest)
				return
			}
			barrier.mu.Lock()
			barrier.arrived++
			if barrier.arrived == n {
				close(barrier.open)
			}
			barrier.mu.Unlock()
			select {
			case <-barrier.open:
				w.Write([]byte("all arrived\n"))
			case <-r.Context().Done():
			}
			return
		case "/sleep":
			select {}
		case "/log":
			sdk.Logger(r.Context()).WithField("probe", "yes").Warn("probe warning")
			w.Write([]byte("logged\n"))
			return
		}
		wd, _ := os.Getwd()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(report{PID: os.Getpid(), Args: os.Args[1:], Dir: wd, Env: os.Environ()})
	}))
}
