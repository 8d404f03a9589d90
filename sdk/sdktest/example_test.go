package sdktest_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"testing"
	"time"

	"github.com/childproc/dispatcher/sdk/sdktest"
)

// A test of a handler: build the worker package once, start it under a real
// dispatcher, and make requests as a client would. The dispatcher stops when
// the test ends.
func ExampleStart() {
	// In a _test.go file beside the worker's main package:
	test := func(t *testing.T) {
		srv := sdktest.Start(t, sdktest.Build(t, "."), sdktest.Options{Size: 2})
		resp, err := http.Get(srv.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("status %d", resp.StatusCode)
		}
	}
	_ = test
}

// Without a testing.TB, for instance in a TestMain shared by every test of a
// package, Binary and NewServer report errors instead of failing a test, and
// the caller closes the server.
func ExampleNewServer() {
	bin, err := sdktest.Binary("github.com/childproc/dispatcher/examples/hello")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := sdktest.NewServer(bin, sdktest.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status)
	fmt.Print(string(body))
	// Output:
	// 200 OK
	// hello world
}

// The dispatcher's log holds one access log entry per request, found by the
// request ID the client got back.
func ExampleServer_Log() {
	bin, err := sdktest.Binary("github.com/childproc/dispatcher/examples/hello")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := sdktest.NewServer(bin, sdktest.Options{})
	if err != nil {
		log.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/some/path?q=1")
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// Close waits for the requests in flight, so their entries are all in.
	if err := srv.Close(); err != nil {
		log.Fatal(err)
	}
	for _, e := range srv.Log() {
		if e.Message == "request" && e.Fields["req_id"] == resp.Header.Get("X-Request-Id") {
			fmt.Println(e.Fields["method"], e.Fields["path"], e.Fields["status"])
		}
	}
	// Output:
	// GET /some/path 200
}

// The production failure mapping applies: a handler still busy after
// Options.Timeout costs its client a 504 from the dispatcher (marked with
// X-Dispatcher-Error), and its worker is killed and replaced.
func ExampleOptions_timeout() {
	bin, err := sdktest.Binary("./testdata/probe") // its /sleep never answers
	if err != nil {
		log.Fatal(err)
	}
	srv, err := sdktest.NewServer(bin, sdktest.Options{Timeout: 300 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/sleep")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status, resp.Header.Get("X-Dispatcher-Error"))
	// Output:
	// 504 Gateway Timeout true
}
