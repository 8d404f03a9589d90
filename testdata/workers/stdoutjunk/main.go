// Command stdoutjunk is not a worker: it prints junk on stdout and waits.
package main

import (
	"fmt"
	"time"
)

func main() {
	fmt.Println("this is not a handshake line")
	time.Sleep(time.Hour)
}
