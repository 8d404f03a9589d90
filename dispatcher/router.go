package dispatcher

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
)

// Route sends the requests whose host and path match it to a Handler
// (usually a *Server, one per function).
type Route struct {
	// Name names the route's function in errors.
	Name string
	// Host, if set, restricts the route to requests for that host
	// (compared without the port, case-insensitively).
	Host string
	// Prefix is the path prefix the route serves, on a segment boundary:
	// "/api" matches /api and /api/users, not /apis. "/" (or "") matches
	// every path. The handler sees the whole path, unless StripPrefix.
	Prefix string
	// StripPrefix makes the handler see the path without Prefix (/api/users
	// as /users, /api as /), with the prefix in the X-Forwarded-Prefix
	// header, as gateways that strip a prefix do. Any X-Forwarded-Prefix
	// the client sent is replaced.
	StripPrefix bool
	// Handler serves the route's requests.
	Handler http.Handler
}

// Router is an http.Handler that sends each request to the route with the
// longest matching prefix among those for its host, then among those for
// any host. Its routes can be replaced while it serves (a reload).
type Router struct {
	routes atomic.Pointer[[]Route]
}

// NewRouter returns a Router for routes.
func NewRouter(routes []Route) (*Router, error) {
	rt := &Router{}
	if err := rt.Set(routes); err != nil {
		return nil, err
	}
	return rt, nil
}

// Set replaces the routes. Requests already routed keep their handler.
func (rt *Router) Set(routes []Route) error {
	rs := slices.Clone(routes)
	seen := map[string]string{}
	for i := range rs {
		r := &rs[i]
		if r.Handler == nil {
			return fmt.Errorf("route %q: no handler", r.Name)
		}
		if r.Prefix == "" {
			r.Prefix = "/"
		}
		if !strings.HasPrefix(r.Prefix, "/") {
			return fmt.Errorf("route %q: prefix %q must start with /", r.Name, r.Prefix)
		}
		if len(r.Prefix) > 1 {
			r.Prefix = strings.TrimSuffix(r.Prefix, "/")
		}
		r.Host = strings.ToLower(r.Host)
		key := r.Host + r.Prefix
		if other, ok := seen[key]; ok {
			return fmt.Errorf("routes %q and %q both serve host %q, prefix %q", other, r.Name, r.Host, r.Prefix)
		}
		seen[key] = r.Name
	}
	// Host routes first, then the longest prefix first: the first match
	// wins.
	slices.SortStableFunc(rs, func(a, b Route) int {
		if (a.Host == "") != (b.Host == "") {
			if a.Host != "" {
				return -1
			}
			return 1
		}
		return len(b.Prefix) - len(a.Prefix)
	})
	rt.routes.Store(&rs)
	return nil
}

// Routes returns the current routes, host routes and longest prefixes
// first.
func (rt *Router) Routes() []Route { return slices.Clone(*rt.routes.Load()) }

func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route := rt.match(r.Host, r.URL.Path)
	if route == nil {
		w.Header().Set(HeaderError, "true")
		http.Error(w, "no function serves this host and path", http.StatusNotFound)
		return
	}
	if route.StripPrefix && route.Prefix != "/" {
		r = stripPrefix(r, route.Prefix)
	}
	route.Handler.ServeHTTP(w, r)
}

// stripPrefix returns r for a handler mounted at prefix, which r's path
// has on a segment boundary.
func stripPrefix(r *http.Request, prefix string) *http.Request {
	r2 := new(http.Request)
	*r2 = *r
	r2.URL = new(url.URL)
	*r2.URL = *r.URL
	r2.URL.Path = "/" + strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, prefix), "/")
	r2.URL.RawPath = ""
	if r.URL.RawPath != "" {
		// The escaped path starts with the escaped prefix; keep the
		// escaping of the rest.
		if rest, ok := strings.CutPrefix(r.URL.RawPath, (&url.URL{Path: prefix}).EscapedPath()); ok {
			r2.URL.RawPath = "/" + strings.TrimPrefix(rest, "/")
		}
	}
	r2.RequestURI = r2.URL.RequestURI()
	r2.Header = r.Header.Clone()
	r2.Header.Set("X-Forwarded-Prefix", prefix)
	return r2
}

func (rt *Router) match(host, path string) *Route {
	routes := *rt.routes.Load()
	if len(routes) == 1 && routes[0].Host == "" && routes[0].Prefix == "/" {
		return &routes[0] // the --workers shortcut
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for i := range routes {
		rt := &routes[i]
		if rt.Host != "" && !strings.EqualFold(rt.Host, host) {
			continue
		}
		if pathHasPrefix(path, rt.Prefix) {
			return rt
		}
	}
	return nil
}

func pathHasPrefix(path, prefix string) bool {
	if prefix == "/" {
		return true
	}
	return strings.HasPrefix(path, prefix) && (len(path) == len(prefix) || path[len(prefix)] == '/')
}
