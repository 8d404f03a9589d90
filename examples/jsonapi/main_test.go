package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/sdk/sdktest"
)

// do sends a request to the worker through the dispatcher and decodes the
// JSON answer into out.
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
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json; body %s", method, url, ct, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s %s: %v: %s", method, url, err, b)
	}
	return resp
}

func TestJSONAPI(t *testing.T) {
	srv := sdktest.Start(t, sdktest.Build(t, "."), sdktest.Options{Size: 2})

	t.Run("catalog", func(t *testing.T) {
		var ps []Product
		resp := do(t, "GET", srv.URL+"/products", "", "", &ps)
		if resp.StatusCode != 200 || len(ps) != len(catalog) || ps[1] != catalog[1] {
			t.Errorf("%d %+v", resp.StatusCode, ps)
		}
		// The default client asked for gzip and undid it: chi's Compress
		// middleware wrapped the sdk's ResponseWriter.
		if !resp.Uncompressed {
			t.Error("the response was not gzipped")
		}
	})
	t.Run("route parameter", func(t *testing.T) {
		var p Product
		if resp := do(t, "GET", srv.URL+"/products/p3/", "", "", &p); resp.StatusCode != 200 || p != catalog[2] {
			t.Errorf("%d %+v", resp.StatusCode, p)
		}
	})
	t.Run("quote", func(t *testing.T) {
		var q Quote
		resp := do(t, "POST", srv.URL+"/quotes", "application/json", `{"items":[{"id":"p1","qty":2},{"id":"p2","qty":3}]}`, &q)
		if resp.StatusCode != 200 || q.Total != 2*450+3*120 || len(q.Lines) != 2 || q.Lines[1].Subtotal != 360 {
			t.Errorf("%d %+v", resp.StatusCode, q)
		}
	})

	errorCases := []struct {
		name, method, path, contentType, body string
		status                                int
		msg                                   string
	}{
		{"unknown product", "GET", "/products/p9", "", "", 404, `no product "p9"`},
		{"unknown route", "GET", "/nothing", "", "", 404, "no such route"},
		{"invalid JSON", "POST", "/quotes", "application/json", `{"items":`, 400, "invalid JSON"},
		{"unknown field", "POST", "/quotes", "application/json", `{"itemz":[]}`, 400, "unknown field"},
		{"no items", "POST", "/quotes", "application/json", `{"items":[]}`, 422, "no items"},
		{"bad quantity", "POST", "/quotes", "application/json", `{"items":[{"id":"p1","qty":0}]}`, 422, "qty 0"},
		{"too large", "POST", "/quotes", "application/json", `{"items":"` + strings.Repeat("x", maxBody) + `"}`, 413, "body over"},
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			var e struct{ Error string }
			resp := do(t, tc.method, srv.URL+tc.path, tc.contentType, tc.body, &e)
			if resp.StatusCode != tc.status || !strings.Contains(e.Error, tc.msg) {
				t.Errorf("%d %q, want %d with %q", resp.StatusCode, e.Error, tc.status, tc.msg)
			}
			if resp.Header.Get("X-Dispatcher-Error") != "" {
				t.Error("the handler's error was replaced by the dispatcher's")
			}
		})
	}

	t.Run("wrong content type", func(t *testing.T) {
		resp, err := http.Post(srv.URL+"/quotes", "text/plain", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnsupportedMediaType {
			t.Errorf("%d, want 415 from chi's AllowContentType", resp.StatusCode)
		}
	})
}
