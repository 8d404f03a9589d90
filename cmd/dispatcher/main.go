// Command dispatcher serves HTTP requests by running each one in a worker
// child process built with the sdk package.
//
//	dispatcher --workers ./bin/handler --listen 127.0.0.1:8080
//
// Exit status: 0 after a clean shutdown (SIGINT or SIGTERM), 2 for a usage
// error or a worker binary that is missing, not executable or not a worker,
// 1 for any other failure. A second signal during shutdown exits at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal gets the default action: exit now
	}()
	err := NewMain().Run(ctx, os.Args[1:])
	os.Exit(exitCode(err))
}

func exitCode(err error) int {
	var ue *UsageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, "dispatcher: "+ue.Error())
		return 2
	default:
		fmt.Fprintln(os.Stderr, "dispatcher: "+err.Error())
		return 1
	}
}
