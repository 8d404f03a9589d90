// Command holworker is the worker of bench/hol: GET / answers "hello
// world", GET /slow?d=D answers after D.
package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/childproc/dispatcher/sdk"
)

func main() {
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			d, _ := time.ParseDuration(r.URL.Query().Get("d"))
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprintln(w, "hello world")
	}))
}
