// Command stderrjunk writes hostile lines on stderr, at start and on every
// request, then answers "ok": JSON with well-known keys of the wrong types,
// malformed JSON, a 1 MiB line, control bytes and invalid UTF-8.
package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/childproc/dispatcher/sdk"
)

func junk() {
	fmt.Fprintln(os.Stderr, `{"@message":1,"@level":["x"],"@timestamp":{}}`)
	fmt.Fprintln(os.Stderr, `{"@level":"panic","@message":"pretend panic"}`)
	fmt.Fprintln(os.Stderr, `{"@level":"fatal","msg":"pretend fatal"}`)
	fmt.Fprintln(os.Stderr, `{"unterminated":`)
	fmt.Fprintln(os.Stderr, strings.Repeat("x", 1<<20))
	os.Stderr.Write([]byte("ctrl \x00\x1b[31m\x7f bytes \xff\xfe end\n"))
	fmt.Fprintln(os.Stderr, "stderrjunk: done")
}

func main() {
	junk()
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		junk()
		fmt.Fprintln(w, "ok")
	}))
}
