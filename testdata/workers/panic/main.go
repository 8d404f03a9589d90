// Command panic panics in its handler: before writing at /panic, after the
// head and part of the body at /late. /badheader sets a header value with
// CR/LF, which the dispatcher must refuse. Other paths answer "ok" and the pid.
package main

import (
	"fmt"
	"net/http"
	"os"

	"github.com/childproc/dispatcher/sdk"
)

func main() {
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			panic("boom in handler")
		case "/badheader":
			w.Header().Set("X-Injected", "a\r\nSet-Cookie: evil=1")
			w.Write([]byte("should not reach the client"))
			return
		case "/late":
			w.Write([]byte("partial"))
			w.(http.Flusher).Flush()
			panic("boom after the head")
		}
		fmt.Fprintf(w, "ok %d\n", os.Getpid())
	}))
}
