package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/childproc/dispatcher/sdk"
)

func main() {
	env := os.Environ()
	fds, _ := os.ReadDir("/proc/self/fd")
	var names []string
	for _, f := range fds {
		l, _ := os.Readlink("/proc/self/fd/" + f.Name())
		names = append(names, f.Name()+"->"+l)
	}
	args := os.Args
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, strings.Join(env, "\n"))
		fmt.Fprintln(w, strings.Join(names, "\n"))
		fmt.Fprintln(w, args)
	}))
}
