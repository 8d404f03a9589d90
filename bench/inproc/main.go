// Command inproc is the in-process baseline for the benchmarks in bench/: a
// plain net/http server with the same handlers as the test workers, so the
// difference against the dispatcher is the cost of the dispatcher itself.
//
//	GET  /      "hello world\n"               (like examples/hello)
//	POST /echo  the request body, streamed back (like testdata/workers/echo,
//	            raw path: io.Copy with Content-Type application/octet-stream)
//
// The echo handler enables full duplex: without it, net/http stops reading
// an HTTP/1.x request body once the response has started, so io.Copy would
// echo only the first 512 bytes (what ResponseWriter.ReadFrom sniffs before
// writing the header).
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to serve HTTP on")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello world")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		io.Copy(w, r.Body)
	})
	log.Fatal(http.ListenAndServe(*listen, mux))
}
