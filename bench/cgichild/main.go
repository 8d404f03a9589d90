// Command cgichild is the program the CGI baseline (inproc -cgi) runs once
// per request: the hello handler of examples/hello, served by the standard
// library's net/http/cgi. It is what a fresh process per request costs for
// a net/http handler without the dispatcher: fork, exec, the Go runtime and
// net/http's start, one request, exit. Built static (CGO_ENABLED=0).
package main

import (
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
)

func main() {
	err := cgi.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello world")
	}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "cgichild:", err)
		os.Exit(1)
	}
}
