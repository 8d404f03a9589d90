// Command hello is the smallest worker: it answers every request with
// "hello world".
package main

import (
	"fmt"
	"net/http"

	"github.com/childproc/dispatcher/sdk"
)

func main() {
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello world")
	}))
}
