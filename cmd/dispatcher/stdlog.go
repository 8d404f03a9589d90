package main

import (
	"io"
	"log"
)

// newStdLogger adapts a writer (a logrus level writer) for http.Server's
// ErrorLog.
func newStdLogger(w io.Writer) *log.Logger { return log.New(w, "", 0) }
