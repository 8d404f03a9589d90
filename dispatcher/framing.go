package dispatcher

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync/atomic"
)

// GuardFraming makes hs close each HTTP/1 connection that carried a request
// whose framing is ambiguous, once that request is answered (RFC 9112
// §6.1): a request with both Transfer-Encoding and Content-Length, or an
// HTTP/1.0 request with Transfer-Encoding. net/http serves such a request
// by its Transfer-Encoding and drops the Content-Length before a handler
// sees it, so the connection's bytes are watched on their way in: it
// returns ln with its connections wrapped, sets hs.ConnContext (calling
// any set before) and wraps hs.Handler. Call it before hs.Serve(ln). Over
// TLS (hs.TLSConfig set) the bytes cannot be seen below net/http: it then
// returns ln and leaves hs as it is.
func GuardFraming(hs *http.Server, ln net.Listener) net.Listener {
	if hs.TLSConfig != nil {
		return ln
	}
	next := hs.ConnContext
	hs.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if next != nil {
			ctx = next(ctx, c)
		}
		if fc, ok := c.(*framingConn); ok {
			ctx = context.WithValue(ctx, framingKey{}, &fc.scan)
		}
		return ctx
	}
	hs.Handler = framingHandler{next: hs.Handler}
	return framingListener{ln}
}

type framingKey struct{}

type framingListener struct{ net.Listener }

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &framingConn{Conn: c}, nil
}

// framingConn is a connection whose incoming header fields are watched.
type framingConn struct {
	net.Conn
	scan framingScan
}

func (c *framingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.scan.feed(p[:n])
	return n, err
}

// CloseWrite lets net/http half-close the connection, as it does a TCP
// connection's, before closing it.
func (c *framingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// What framingScan looks for: fields in one header block, and what they
// mean once the block ends.
const (
	fieldCL       = 1 << iota // Content-Length
	fieldTE                   // Transfer-Encoding
	seenAmbiguous             // a block with both
	seenTE                    // a block with Transfer-Encoding
)

// framingScan finds, in the bytes of a connection, the header blocks
// (lines up to an empty one) that have a Content-Length or
// Transfer-Encoding field. It sees bodies too, and does not know where
// they end: a body line that looks like such a field can only make it
// close a connection that needed no closing. It never misses a real
// field: a field name begins a line, and a head begins after an empty
// line or on the first line. Most lines cost it one byte compare;
// IndexByte skips the rest.
type framingScan struct {
	pos   int   // position in the current line; -1: skipping to its end
	cand  byte  // what the current line may still be: '\r', 'c' or 't'
	block uint8 // fields in the current block
	seen  atomic.Uint32
}

func (s *framingScan) feed(p []byte) {
	for i := 0; i < len(p); {
		if s.pos < 0 {
			j := bytes.IndexByte(p[i:], '\n')
			if j < 0 {
				return
			}
			i += j + 1
			s.pos = 0
			continue
		}
		c := p[i]
		i++
		if c == '\n' {
			if s.pos == 0 || s.cand == '\r' {
				s.endBlock()
			}
			s.pos = 0
			continue
		}
		s.step(c)
	}
}

const (
	nameCL = "content-length:"
	nameTE = "transfer-encoding:"
)

// step takes byte c, not a newline, at s.pos in the current line.
func (s *framingScan) step(c byte) {
	if 'A' <= c && c <= 'Z' {
		c += 'a' - 'A'
	}
	if s.pos == 0 {
		switch c {
		case '\r', 'c', 't':
			s.cand, s.pos = c, 1
		default:
			s.pos = -1
		}
		return
	}
	var name string
	var field uint8
	switch s.cand {
	case 'c':
		name, field = nameCL, fieldCL
	case 't':
		name, field = nameTE, fieldTE
	default: // "\r" followed by anything but "\n"
		s.pos = -1
		return
	}
	if c != name[s.pos] {
		s.pos = -1
		return
	}
	s.pos++
	if s.pos == len(name) {
		s.block |= field
		s.pos = -1
	}
}

func (s *framingScan) endBlock() {
	switch s.block {
	case fieldCL | fieldTE:
		s.seen.Or(seenAmbiguous | seenTE)
	case fieldTE:
		s.seen.Or(seenTE)
	}
	s.block = 0
}

// ambiguous reports whether r, a request read from the scanned connection,
// may be one whose framing is ambiguous. The flags are sticky: once one
// such request came, every later chunked (or HTTP/1.0) request on the
// connection counts, though the connection ends with the first.
func (s *framingScan) ambiguous(r *http.Request) bool {
	seen := s.seen.Load()
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		return seen&seenTE != 0
	}
	return seen&seenAmbiguous != 0
}

// framingHandler closes the connection after a request of ambiguous
// framing. Other requests pass at the cost of one comparison.
type framingHandler struct{ next http.Handler }

func (h framingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(r.TransferEncoding) > 0 || r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		if s, _ := r.Context().Value(framingKey{}).(*framingScan); s != nil && s.ambiguous(r) {
			w = &closingWriter{ResponseWriter: w}
		}
	}
	h.next.ServeHTTP(w, r)
}
