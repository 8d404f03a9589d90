// Command forkchild is the program the fork-per-request baseline (inproc
// -fork) runs once per request, as of-watchdog's serializing mode runs a
// function: it reads the request body on standard input and writes the
// response body on standard output. Built static (CGO_ENABLED=0), as in
// ../shared/ANCHORS.md's ofwd-serializing entry; it answers "hello world"
// to an empty body, and echoes any other.
package main

import (
	"io"
	"os"
)

func main() {
	body, err := io.ReadAll(os.Stdin)
	if err != nil {
		os.Exit(1)
	}
	if len(body) == 0 {
		body = []byte("hello world\n")
	}
	os.Stdout.Write(body)
}
