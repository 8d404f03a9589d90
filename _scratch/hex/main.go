package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/childproc/dispatcher/ipc"
)

func main() {
	h, w := net.Pipe()
	hc := ipc.NewConn(h, 0)
	sc := ipc.NewServerConn(w, 0)
	go func() {
		_, _, err := hc.RoundTrip(&ipc.Request{Method: "GET", URI: "/hi?x=1", Proto: "HTTP/1.1",
			Header: http.Header{"Accept": {"*/*"}}, Host: "example.com", RemoteAddr: "192.0.2.7:51234",
			ContentLength: 0, RequestID: "r1", EOF: true}, nil)
		fmt.Println("rt", err)
	}()
	buf := make([]byte, 4096)
	n, _ := w.Read(buf)
	fmt.Println("request:", hex.EncodeToString(buf[:n]))
	go func() {
		sc.WriteResponse(&ipc.Response{ID: 1, Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("hi\n"), EOF: true})
	}()
	n, _ = io.ReadAtLeast(h, buf, 5)
	fmt.Println("response:", hex.EncodeToString(buf[:n]))
	go sc.WriteWindow(1, 65536)
	n, _ = io.ReadAtLeast(h, buf, 5)
	fmt.Println("window:", hex.EncodeToString(buf[:n]))
	go sc.WriteAbort(3, "cancelled before it started")
	n, _ = io.ReadAtLeast(h, buf, 5)
	fmt.Println("abort:", hex.EncodeToString(buf[:n]))
}
