// Command drip streams ?n= chunks ("chunk <i>\n"), one every ?every=
// (a duration, default 100ms), flushing each: a long stream that keeps
// making progress.
package main

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/childproc/dispatcher/sdk"
)

func main() {
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		every, err := time.ParseDuration(r.URL.Query().Get("every"))
		if err != nil {
			every = 100 * time.Millisecond
		}
		w.Header().Set("Content-Type", "text/plain")
		for i := 1; i <= n; i++ {
			if i > 1 {
				select {
				case <-time.After(every):
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprintf(w, "chunk %d\n", i)
			w.(http.Flusher).Flush()
		}
	}))
}
