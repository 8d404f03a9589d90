// Command counter answers with the number of requests its process has
// served, counting this one, and its pid: "<n> <pid>". In oneshot mode every
// request must see 1.
package main

import (
	"fmt"
	"net/http"
	"os"
	"sync/atomic"

	"github.com/childproc/dispatcher/sdk"
)

var served atomic.Int64

func main() {
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d %d", served.Add(1), os.Getpid())
	}))
}
