package ipc

import (
	"net"
	"net/http"
	"sync"
)

// Frame is one decoded frame received by a worker. Which fields are set
// depends on Kind. Data and Request.Body alias the connection's read buffer
// and are valid only until the next call to Next.
type Frame struct {
	Kind    Kind
	ID      uint64
	Request *Request    // KindRequest
	Data    []byte      // KindBody
	Trailer http.Header // KindEnd
	Reason  string      // KindAbort
}

// ServerConn is the worker's end of one slot connection. Next must be called
// from one goroutine; the Write methods are safe for concurrent use.
type ServerConn struct {
	nc  net.Conn
	fr  *frameReader
	pd  *payloadDecoder
	wmu sync.Mutex
	fw  *frameWriter
	// features are listed in every pong; set before serving.
	features []string
}

// NewServerConn wraps the worker's end of a slot connection. maxFrame bounds
// every frame read (DefaultMaxFrame if 0).
func NewServerConn(nc net.Conn, maxFrame int) *ServerConn {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &ServerConn{nc: nc, fr: newFrameReader(nc, maxFrame), pd: newPayloadDecoder(), fw: newFrameWriter()}
}

// Close closes the connection.
func (s *ServerConn) Close() error { return s.nc.Close() }

// SetFeatures names the optional features this worker uses, which every
// pong lists: only features the dispatcher announced (HasFeature). A
// worker that acknowledges the heads of streamed requests (WriteAck) lists
// FeatureHeadAck. Call it before the first Next.
func (s *ServerConn) SetFeatures(names []string) { s.features = names }

// Next reads and decodes the next frame sent by the dispatcher. It returns
// io.EOF when the dispatcher closed the connection and a *ProtocolError for
// anything malformed.
func (s *ServerConn) Next() (Frame, error) {
	k, p, err := s.fr.next()
	if err != nil {
		return Frame{}, err
	}
	s.pd.reset(k, p)
	f := Frame{Kind: k}
	switch k {
	case KindRequest:
		f.Request, err = s.pd.request()
		if f.Request != nil {
			f.ID = f.Request.ID
		}
	case KindBody:
		f.ID, f.Data, err = s.pd.idData()
	case KindEnd:
		f.ID, f.Trailer, err = s.pd.idHeader()
	case KindCancel, KindPing, KindWithdraw:
		f.ID, err = s.pd.idOnly()
	case KindAbort:
		f.ID, f.Reason, err = s.pd.idString()
	default:
		err = protoErr(k, "not expected by a worker")
	}
	return f, err
}

func (s *ServerConn) send(build func(*frameWriter) []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.nc.Write(build(s.fw))
	return err
}

// WriteResponse sends a response head, with inline body bytes and, if
// r.EOF, the trailers that complete it.
func (s *ServerConn) WriteResponse(r *Response) error {
	return s.send(func(fw *frameWriter) []byte { return fw.response(r) })
}

// WriteInformational sends an informational (1xx) response for exchange id
// before its head. Only for a dispatcher that announced
// FeatureInformational (see Features).
func (s *ServerConn) WriteInformational(id uint64, status int, header http.Header) error {
	return s.send(func(fw *frameWriter) []byte { return fw.informational(id, status, header) })
}

// WriteBody sends a chunk of the response body; data must not exceed
// ChunkSize, or WideChunkSize if the dispatcher announced FeatureWideChunk.
func (s *ServerConn) WriteBody(id uint64, data []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	head, tail := s.fw.bodyParts(id, data)
	return writeFrame(s.nc, head, tail)
}

// WriteEnd completes a response whose head was sent without EOF.
func (s *ServerConn) WriteEnd(id uint64, trailer http.Header) error {
	return s.send(func(fw *frameWriter) []byte { return fw.end(id, trailer) })
}

// WriteAbort ends a response abnormally: the client's connection is cut.
func (s *ServerConn) WriteAbort(id uint64, reason string) error {
	return s.send(func(fw *frameWriter) []byte { return fw.abort(id, reason) })
}

// WritePong answers a ping, listing the features given to SetFeatures.
func (s *ServerConn) WritePong(id uint64) error {
	return s.send(func(fw *frameWriter) []byte { return fw.pong(id, s.features) })
}

// WriteWithdrawn tells the dispatcher that queued request id, which it asked
// to withdraw (KindWithdraw), was dropped before it started
// (FeatureWithdraw).
func (s *ServerConn) WriteWithdrawn(id uint64) error {
	return s.send(func(fw *frameWriter) []byte { return fw.idFrame(KindWithdrawn, id) })
}

// WriteAck acknowledges the head of request id, whose body is streamed,
// with a window frame granting no credit (FeatureHeadAck). A worker that
// lists FeatureHeadAck sends it before anything else of the exchange, and
// before its handler starts: until it arrives, the dispatcher may send the
// request to another worker if this one dies.
func (s *ServerConn) WriteAck(id uint64) error { return s.WriteWindow(id, 0) }

// WriteWindow grants the dispatcher credit for n more request body bytes.
func (s *ServerConn) WriteWindow(id uint64, n int) error {
	return s.send(func(fw *frameWriter) []byte { return fw.window(id, n) })
}
