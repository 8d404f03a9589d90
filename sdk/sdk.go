// Package sdk is what a worker binary imports: it runs an ordinary
// http.Handler inside a process started by the dispatcher.
//
//	func main() {
//		sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//			fmt.Fprintln(w, "hello world")
//		}))
//	}
//
// The handler receives a real *http.Request (method, URL, proto, headers,
// Host, ContentLength, a streaming Body, the client's RemoteAddr, and a
// Context cancelled when the dispatcher gives up on the request) and an
// http.ResponseWriter that behaves like net/http's: status 200 unless told
// otherwise, multi-valued headers, Content-Type sniffing when unset (done by
// the dispatcher's net/http server), one WriteHeader, http.Flusher. A panic in
// the handler is logged with its stack and answered with a 500 (or, once the
// head is sent, a cut connection); the worker keeps serving.
//
// Rules for handler code: write nothing to standard output before Serve (the
// first line of stdout is go-plugin's handshake); once serving, whatever the
// process writes on standard output and error reaches the dispatcher's log
// line by line. Use Logger
// for structured logs that keep their level and request ID.
//
// The sdk owns the process's side of the wire protocol (package ipc); it does
// not own process limits or sandboxing, which the dispatcher applies before
// the worker starts. Package sdk/sdktest runs a worker's main package under
// a real dispatcher in tests, as net/http/httptest runs a handler.
package sdk

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/childproc/dispatcher/ipc"
	"github.com/sirupsen/logrus"
)

// Version identifies this sdk in the worker's handshake information.
const Version = "go-sdk/1"

// ShutdownGrace is how long Serve waits for in-flight handlers after the
// dispatcher asked the worker to stop.
const ShutdownGrace = 30 * time.Second

var logger = newLogger()

func newLogger() *logrus.Logger {
	l := logrus.New()
	l.Out = os.Stderr // fd 2 itself: go-plugin later swaps the os.Stderr variable
	l.Formatter = &logrus.JSONFormatter{
		TimestampFormat: "2006-01-02T15:04:05.000000Z07:00",
		FieldMap: logrus.FieldMap{
			logrus.FieldKeyMsg:   "@message",
			logrus.FieldKeyLevel: "@level",
			logrus.FieldKeyTime:  "@timestamp",
		},
	}
	l.Level = logrus.DebugLevel
	return l
}

type ctxKey struct{}

// Logger returns a logger whose lines reach the dispatcher's log at their own
// level. Given a request's context it adds the request ID.
func Logger(ctx context.Context) *logrus.Entry {
	e := logrus.NewEntry(logger)
	if ex, ok := ctx.Value(ctxKey{}).(*exchange); ok && ex.requestID != "" {
		e = e.WithField("request_id", ex.requestID)
	}
	return e
}

// RequestID returns the dispatcher's ID of the request whose context this is,
// or "". It is also in the request's X-Request-Id header.
func RequestID(ctx context.Context) string {
	if ex, ok := ctx.Value(ctxKey{}).(*exchange); ok {
		return ex.requestID
	}
	return ""
}

// Serve runs h for every request the dispatcher sends to this process. It
// returns after the dispatcher asked the worker to stop and in-flight
// requests finished (at most ShutdownGrace). Started outside a dispatcher, it
// prints an explanation and exits with status 1.
func Serve(h http.Handler) {
	conns, maxFrame, depth, err := ipc.WorkerConns()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%v\nThis program is a dispatcher worker: run it with `dispatcher --workers %s`.\n", err, os.Args[0])
		os.Exit(1)
	}
	w := &worker{
		h:             h,
		depth:         depth,
		informational: ipc.HasFeature(ipc.FeatureInformational),
		headAck:       ipc.HasFeature(ipc.FeatureHeadAck),
	}
	w.wide = w.headAck && ipc.HasFeature(ipc.FeatureWideWindow)
	w.wideChunk = ipc.HasFeature(ipc.FeatureWideChunk) && maxFrame >= ipc.WideChunkMaxFrame
	// The pongs list the announced features this worker uses.
	var used []string
	if w.informational {
		used = append(used, ipc.FeatureInformational)
	}
	if w.headAck {
		used = append(used, ipc.FeatureHeadAck)
	}
	if w.wide {
		used = append(used, ipc.FeatureWideWindow)
	}
	if w.wideChunk {
		// The slots accept wide chunks too (requestBody.push).
		used = append(used, ipc.FeatureWideChunk)
	}
	if ipc.HasFeature(ipc.FeatureWithdraw) {
		// A queued request is given back at once when asked (slot.serve).
		used = append(used, ipc.FeatureWithdraw)
	}
	if ipc.HasFeature(ipc.FeatureContinue) {
		// Nothing to decide: a request marked continue gets its window at
		// its handler's first read (requestBody).
		used = append(used, ipc.FeatureContinue)
	}
	for _, c := range conns {
		sc := ipc.NewServerConn(c, maxFrame)
		sc.SetFeatures(used)
		s := &slot{w: w, sc: sc}
		w.slots.Add(1)
		go s.serve()
	}
	go func() {
		// Every slot at end of stream: the dispatcher is gone.
		w.slots.Wait()
		w.inflight.Wait()
		os.Exit(0)
	}()
	ipc.ServeWorker(ipc.Info{SDK: Version})
	w.drain(ShutdownGrace)
}

type worker struct {
	h     http.Handler
	depth int // requests the dispatcher may send on a slot before one ends
	// informational: the dispatcher relays 1xx responses.
	informational bool
	// headAck: the dispatcher keeps a streamed body to send it again
	// elsewhere until the worker acknowledges its request (WriteAck).
	headAck bool
	// wide: FeatureWideWindow (see window).
	wide bool
	// wideChunk: FeatureWideChunk (see chunk).
	wideChunk bool
	slots     sync.WaitGroup
	inflight  sync.WaitGroup
}

// window is the unacknowledged request body bytes a slot accepts per
// exchange: ipc.WideWindow with FeatureWideWindow (the acknowledgement
// grants the difference), else ipc.Window.
func (w *worker) window() int {
	if w.wide {
		return ipc.WideWindow
	}
	return ipc.Window
}

// chunk is the largest response body chunk after the first:
// ipc.WideChunkSize with FeatureWideChunk, else ipc.ChunkSize.
func (w *worker) chunk() int {
	if w.wideChunk {
		return ipc.WideChunkSize
	}
	return ipc.ChunkSize
}

func (w *worker) drain(grace time.Duration) {
	done := make(chan struct{})
	go func() {
		w.inflight.Wait()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		logger.WithField("grace", grace.String()).Warn("stopping with requests still in flight")
	}
}
