// Command hello answers "hello world" and its pid in a header.
package main

import (
	"fmt"
	"net/http"
	"os"
	"strconv"

	"github.com/childproc/dispatcher/sdk"
)

func main() {
	pid := strconv.Itoa(os.Getpid())
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintln(w, "hello world")
	}))
}
