// Command inproc is the in-process baseline for the benchmarks in bench/: a
// plain net/http server with the same handlers as the test workers, so the
// difference against the dispatcher is the cost of the dispatcher itself.
//
//	GET  /      "hello world\n"               (like examples/hello)
//	POST /echo  the request body, streamed back (like testdata/workers/echo,
//	            raw path: io.Copy with Content-Type application/octet-stream)
//	GET  /big?n=N[&cl=1]  N bytes in 32 KiB writes (like the fidelity worker)
//	POST /count           reads the body, answers "read N bytes" (likewise)
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
	"strconv"
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
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if r.URL.Query().Get("cl") == "1" {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		buf := make([]byte, 32<<10)
		for i := range buf {
			buf[i] = 'a' + byte(i%26)
		}
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "read %d bytes\n", n)
	})
	log.Fatal(http.ListenAndServe(*listen, mux))
}
