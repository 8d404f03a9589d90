package ipc

import "net"

// RawConns returns the dispatcher's ends of the child's slot connections as
// plain stream connections, in slot order, for tools that speak the wire
// protocol themselves, byte by byte (cmd/conformance drives a worker
// through well-formed and malformed frames with it). Launch has already
// exchanged one ping (id 1) on each. Whoever uses them must not use Conns:
// the two would read the same stream.
func (c *Child) RawConns() []net.Conn {
	raw := make([]net.Conn, len(c.conns))
	for i, conn := range c.conns {
		raw[i] = conn.nc
	}
	return raw
}
