package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/childproc/dispatcher/ipc"
)

func main() {
	cmd := exec.Command(os.Args[1])
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	c, err := ipc.Launch(ipc.LaunchConfig{Cmd: cmd, Slots: 2, Depth: 3})
	if err != nil {
		panic(err)
	}
	_, body, err := c.Conns()[0].RoundTrip(&ipc.Request{Method: "GET", URI: "/", Proto: "HTTP/1.1", EOF: true}, nil)
	if err != nil {
		panic(err)
	}
	io.Copy(os.Stdout, body)
	c.Kill()
	fmt.Println("state", c.ExitState())
}
