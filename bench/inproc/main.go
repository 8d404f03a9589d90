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
// With -fork BINARY it is instead the fork-per-request baseline, after
// of-watchdog's serializing mode (../shared/ANCHORS.md, ofwd-serializing):
// each request runs BINARY once, with the request body on its standard
// input, and answers with what it writes on standard output.
//
// With -cgi BINARY it is the CGI baseline: the standard library's
// net/http/cgi runs BINARY (see bench/cgichild, a net/http handler) once
// per request.
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
	"net/http/cgi"
	"os/exec"
	"strconv"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to serve HTTP on")
	fork := flag.String("fork", "", "serve every request by running `binary` (see bench/forkchild) instead")
	cgiBin := flag.String("cgi", "", "serve every request by running `binary` as a CGI program (see bench/cgichild) instead")
	flag.Parse()

	if *cgiBin != "" {
		log.Fatal(http.ListenAndServe(*listen, &cgi.Handler{Path: *cgiBin}))
	}
	if *fork != "" {
		log.Fatal(http.ListenAndServe(*listen, forkPerRequest(*fork)))
	}
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

// forkPerRequest runs bin once per request: the body in on standard input,
// the response body from standard output (of-watchdog's serializing mode).
func forkPerRequest(bin string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cmd := exec.Command(bin)
		cmd.Env = []string{}
		cmd.Stdin = r.Body
		out, err := cmd.Output()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write(out)
	})
}
