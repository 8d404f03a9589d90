package dispatcher

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// named answers with its name, to see which route served a request.
type named string

func (n named) ServeHTTP(w http.ResponseWriter, r *http.Request) { w.Write([]byte(n)) }

func TestRouterMatch(t *testing.T) {
	rt, err := NewRouter([]Route{
		{Name: "root", Prefix: "/", Handler: named("root")},
		{Name: "api", Prefix: "/api", Handler: named("api")},
		{Name: "api-v2", Prefix: "/api/v2/", Handler: named("api-v2")},
		{Name: "a-root", Host: "A.example", Prefix: "/", Handler: named("a-root")},
		{Name: "a-api", Host: "a.example", Prefix: "/api", Handler: named("a-api")},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ host, path, want string }{
		{"x", "/", "root"},
		{"x", "/apis", "root"}, // a prefix ends on a segment boundary
		{"x", "/api", "api"},
		{"x", "/api/", "api"},
		{"x", "/api/users", "api"},
		{"x", "/api/v2", "api-v2"},
		{"x", "/api/v2/users", "api-v2"},
		{"a.example", "/api/users", "a-api"},
		{"A.EXAMPLE:8080", "/api", "a-api"},
		{"a.example", "/other", "a-root"},
		{"b.example", "/api", "api"},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", tc.path, nil)
		req.Host = tc.host
		rt.ServeHTTP(rec, req)
		if got := rec.Body.String(); got != tc.want {
			t.Errorf("%s%s: served by %q, want %q", tc.host, tc.path, got, tc.want)
		}
	}
}

func TestRouterNoRouteAndSet(t *testing.T) {
	rt, err := NewRouter([]Route{{Name: "api", Prefix: "/api", Handler: named("api")}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	rt.ServeHTTP(rec, httptest.NewRequest("GET", "/other", nil))
	if rec.Code != 404 || rec.Header().Get(HeaderError) != "true" {
		t.Errorf("unrouted request: %d %q", rec.Code, rec.Header().Get(HeaderError))
	}
	if err := rt.Set([]Route{{Name: "all", Handler: named("all")}}); err != nil {
		t.Fatal(err)
	}
	rec = httptest.NewRecorder()
	rt.ServeHTTP(rec, httptest.NewRequest("GET", "/other", nil))
	if rec.Body.String() != "all" {
		t.Errorf("after Set: %q", rec.Body.String())
	}
	for _, bad := range [][]Route{
		{{Name: "a", Prefix: "/x", Handler: named("a")}, {Name: "b", Prefix: "/x/", Handler: named("b")}},
		{{Name: "a", Prefix: "x", Handler: named("a")}},
		{{Name: "a", Prefix: "/"}},
	} {
		if err := rt.Set(bad); err == nil || !strings.Contains(err.Error(), `"a"`) {
			t.Errorf("Set(%v): %v, want an error naming route a", bad, err)
		}
	}
	rec = httptest.NewRecorder()
	rt.ServeHTTP(rec, httptest.NewRequest("GET", "/other", nil))
	if rec.Body.String() != "all" {
		t.Errorf("a refused Set changed the routes: %q", rec.Body.String())
	}
}

// echoPath answers with the path, request URI and X-Forwarded-Prefix it
// got.
type echoPath struct{}

func (echoPath) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Write([]byte(r.URL.Path + " " + r.RequestURI + " " + r.Header.Get("X-Forwarded-Prefix")))
}

func TestRouterStripPrefix(t *testing.T) {
	rt, err := NewRouter([]Route{
		{Name: "mine", Prefix: "/mine/", StripPrefix: true, Handler: echoPath{}},
		{Name: "whole", Prefix: "/whole", Handler: echoPath{}},
		{Name: "root", Prefix: "/", StripPrefix: true, Handler: echoPath{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ uri, prefix, want string }{
		{"/mine/x/y?q=1", "", "/x/y /x/y?q=1 /mine"},
		{"/mine", "", "/ / /mine"},
		{"/mine/", "", "/ / /mine"},
		{"/mine/a%2Fb", "", "/a/b /a%2Fb /mine"}, // the escaping of the rest is kept
		{"/mine/x", "/spoofed", "/x /x /mine"},   // the client's header is replaced
		{"/whole/x", "", "/whole/x /whole/x "},
		{"/other", "", "/other /other "}, // "/" has nothing to strip
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", tc.uri, nil)
		if tc.prefix != "" {
			req.Header.Set("X-Forwarded-Prefix", tc.prefix)
		}
		rt.ServeHTTP(rec, req)
		if got := rec.Body.String(); got != tc.want {
			t.Errorf("%s: handler saw %q, want %q", tc.uri, got, tc.want)
		}
		if tc.prefix != "" && req.Header.Get("X-Forwarded-Prefix") != tc.prefix {
			t.Errorf("%s: the caller's request was changed", tc.uri)
		}
	}
}
