// Package nodehello tests the node-hello example: the README's Node.js
// quick start, started by its "#!/usr/bin/env node" line under a real
// dispatcher.
package nodehello

import (
	"io"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/childproc/dispatcher/sdk/node/nodetest"
	"github.com/childproc/dispatcher/sdk/sdktest"
)

func TestHello(t *testing.T) {
	nodetest.Install(t, nodetest.SDKDir())
	nodetest.Install(t, ".")
	script, err := filepath.Abs("server.js")
	if err != nil {
		t.Fatal(err)
	}
	srv := sdktest.Start(t, script, sdktest.Options{Env: nodetest.Env(t)})
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || string(body) != "hello world\n" || resp.Header.Get("X-Request-Id") == "" ||
		resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("%d %v %q", resp.StatusCode, resp.Header, body)
	}
}
