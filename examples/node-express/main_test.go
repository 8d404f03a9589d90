// Package nodeexpress tests the node-express example: an Express 5 JSON
// API, unchanged, through a real dispatcher.
package nodeexpress

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/sdk/node/nodetest"
	"github.com/childproc/dispatcher/sdk/sdktest"
	"github.com/sirupsen/logrus"
)

// do sends a request through the dispatcher and decodes the JSON answer
// into out.
func do(t *testing.T, method, url, contentType, body string, out any) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("%s %s: Content-Type %q; body %s", method, url, ct, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s %s: %v: %s", method, url, err, b)
	}
	return resp
}

type product struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	PriceCents int    `json:"price_cents"`
}

type apiError struct {
	Error string `json:"error"`
}

func TestExpressAPI(t *testing.T) {
	nodetest.Install(t, nodetest.SDKDir())
	nodetest.Install(t, ".")
	script, err := filepath.Abs("server.js")
	if err != nil {
		t.Fatal(err)
	}
	srv := sdktest.Start(t, script, sdktest.Options{Size: 2, Env: nodetest.Env(t)})

	t.Run("catalog", func(t *testing.T) {
		var ps []product
		if resp := do(t, "GET", srv.URL+"/products", "", "", &ps); resp.StatusCode != 200 || len(ps) != 3 || ps[1] != (product{"p2", "pencil", 120}) {
			t.Errorf("%d %+v", resp.StatusCode, ps)
		}
	})
	t.Run("route parameter", func(t *testing.T) {
		var p product
		if resp := do(t, "GET", srv.URL+"/products/p3", "", "", &p); resp.StatusCode != 200 || p != (product{"p3", "eraser", 80}) {
			t.Errorf("%d %+v", resp.StatusCode, p)
		}
	})
	t.Run("quote", func(t *testing.T) {
		var q struct {
			Lines []struct {
				ID       string `json:"id"`
				Qty      int    `json:"qty"`
				Subtotal int    `json:"subtotal_cents"`
			} `json:"lines"`
			Total int `json:"total_cents"`
		}
		resp := do(t, "POST", srv.URL+"/quotes", "application/json", `{"items":[{"id":"p1","qty":2},{"id":"p2","qty":3}]}`, &q)
		if resp.StatusCode != 200 || q.Total != 1260 || len(q.Lines) != 2 || q.Lines[1].Subtotal != 360 {
			t.Errorf("%d %+v", resp.StatusCode, q)
		}
		// The handler's log line reaches the dispatcher's log with its
		// level, fields and request ID.
		id := resp.Header.Get("X-Request-Id")
		srv.WaitLog(t, func(e sdktest.Entry) bool {
			return e.Message == "quote" && e.Level == logrus.InfoLevel && e.Fields["req_id"] == id && e.Fields["child.total_cents"] == float64(1260)
		})
	})
	for _, c := range []struct {
		name, method, path, contentType, body string
		status                                int
		err                                   string
	}{
		{"unknown product", "GET", "/products/p9", "", "", 404, `no product "p9"`},
		{"unknown route", "GET", "/nowhere", "", "", 404, "no such route"},
		{"bad JSON", "POST", "/quotes", "application/json", `{"items":`, 400, ""},
		{"not JSON", "POST", "/quotes", "text/plain", `{"items":[]}`, 415, "want Content-Type application/json"},
		{"no items", "POST", "/quotes", "application/json", `{"items":[]}`, 422, "no items"},
		{"bad quantity", "POST", "/quotes", "application/json", `{"items":[{"id":"p1","qty":0}]}`, 422, `qty 0 of "p1" outside 1-1000`},
		{"body over the limit", "POST", "/quotes", "application/json", `{"items":"` + strings.Repeat("x", 70<<10) + `"}`, 413, "request entity too large"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var e apiError
			resp := do(t, c.method, srv.URL+c.path, c.contentType, c.body, &e)
			if resp.StatusCode != c.status || e.Error == "" || (c.err != "" && e.Error != c.err) {
				t.Errorf("%d %+v, want %d %q", resp.StatusCode, e, c.status, c.err)
			}
		})
	}
}
