package ipc

import "net"

// NetConn returns the connection under c, for tools that speak the wire
// protocol themselves, byte by byte (cmd/conformance drives a worker
// through well-formed and malformed frames with it). Whoever uses it must
// not use c: the two would read the same stream.
func (c *Conn) NetConn() net.Conn { return c.nc }
