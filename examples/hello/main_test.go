package main

import (
	"io"
	"net/http"
	"testing"

	"github.com/childproc/dispatcher/sdk/sdktest"
)

// The README's quick start, as a test: the handler answers through a real
// dispatcher, which adds the request ID.
func TestHello(t *testing.T) {
	srv := sdktest.Start(t, sdktest.Build(t, "."))
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || string(body) != "hello world\n" || resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("%d %v %q", resp.StatusCode, resp.Header, body)
	}
}
