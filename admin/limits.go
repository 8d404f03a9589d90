package admin

import (
	stdlog "log"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// Limits bound what the clients of the admin listener may hold: anything
// that reaches it, workers included, is a client. A zero field means its
// default.
type Limits struct {
	// MaxConns caps the open connections; more wait in the listen backlog
	// until one closes, holding none of the dispatcher's descriptors.
	MaxConns int
	// ReadHeaderTimeout bounds the time to send a request's head.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds the time to send a whole request (admin requests
	// have no body).
	ReadTimeout time.Duration
	// WriteTimeout bounds a response, from the end of its request's head.
	// A CPU profile or trace asked for longer is refused by pprof.
	WriteTimeout time.Duration
	// IdleTimeout bounds the wait of a keep-alive connection for its next
	// request.
	IdleTimeout time.Duration
}

// Defaults of Limits.
const (
	DefaultMaxConns          = 64
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 10 * time.Second
	DefaultWriteTimeout      = time.Minute
	DefaultIdleTimeout       = 30 * time.Second
	maxHeaderBytes           = 16 << 10
)

func (l Limits) withDefaults() Limits {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if l.MaxConns == 0 {
		l.MaxConns = DefaultMaxConns
	}
	def(&l.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&l.ReadTimeout, DefaultReadTimeout)
	def(&l.WriteTimeout, DefaultWriteTimeout)
	def(&l.IdleTimeout, DefaultIdleTimeout)
	return l
}

// HTTPServer returns an http.Server for s with the timeouts of lim, to be
// served on lim.Listener(ln).
func (s *Server) HTTPServer(lim Limits, errorLog *stdlog.Logger) *http.Server {
	lim = lim.withDefaults()
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          errorLog,
	}
}

// Listener returns ln capped at lim.MaxConns open connections.
func (lim Limits) Listener(ln net.Listener) net.Listener {
	return netutil.LimitListener(ln, lim.withDefaults().MaxConns)
}
