// Command broken is a worker with deliberate protocol bugs, for the tests of
// cmd/conformance, which must catch each of them with a clear reason. It
// speaks the protocol through package ipc directly, one frame at a time, and
// answers every request with "broken". It gets right what the bugs leave
// alone: pings, complete requests answered at once, streamed bodies
// acknowledged, requests queued behind a running one answered in order.
// Its bugs:
//
//   - a request whose body is streamed is answered only once the body has
//     ended: a cancel frame does not stop the wait (PROTOCOL.md §4.6);
//   - a cancelled queued request is answered at once with an abort frame,
//     ahead of the requests before it, instead of in its turn (§4.5);
//   - while a request's body streams on one slot, pings on the other slots
//     wait for it to end, as in a worker whose one thread blocks on a body
//     read (§5);
//   - its pongs list the head-ack feature, but a streamed request is
//     acknowledged with credit for its first chunk, not with the window
//     frame [id, 0] due first (§4.2);
//   - a malformed, oversized or unexpected frame is skipped instead of
//     closing the slot (§7);
//   - asked to quit, it exits with status 3 instead of 0 (§9).
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"

	"github.com/childproc/dispatcher/ipc"
)

func main() {
	conns, maxFrame, _, err := ipc.WorkerConns()
	if err != nil {
		fmt.Fprintln(os.Stderr, "broken:", err)
		os.Exit(1)
	}
	var features []string
	if ipc.HasFeature(ipc.FeatureHeadAck) {
		features = []string{ipc.FeatureHeadAck} // bug: it sends no acknowledgement
	}
	var slots sync.WaitGroup
	for _, c := range conns {
		slots.Add(1)
		sc := ipc.NewServerConn(c, maxFrame)
		sc.SetFeatures(features)
		go func() {
			defer slots.Done()
			serve(sc)
		}()
	}
	go func() {
		slots.Wait()
		os.Exit(0)
	}()
	ipc.ServeWorker(ipc.Info{SDK: "broken/1"})
	os.Exit(3) // bug: a worker asked to quit must exit with status 0
}

// streaming is held while a request's body streams on some slot. Bug: pongs
// wait for it.
var streaming sync.Mutex

func serve(sc *ipc.ServerConn) {
	defer sc.Close()
	var (
		running uint64   // a request whose body is still streaming, or 0
		queue   []uint64 // complete requests that arrived behind it
	)
	for {
		f, err := sc.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			// Bug: the stream can no longer be trusted, but it goes on.
			fmt.Fprintln(os.Stderr, "broken: ignoring a bad frame:", err)
			continue
		}
		switch f.Kind {
		case ipc.KindPing:
			if running == 0 {
				streaming.Lock() // wait for the streams of other slots
				streaming.Unlock()
			}
			if sc.WritePong(f.ID) != nil {
				return
			}
		case ipc.KindRequest:
			switch {
			case running != 0:
				queue = append(queue, f.ID)
			case f.Request.EOF:
				answer(sc, f.ID)
			default:
				running = f.ID // bug: answered only at the end of the body
				streaming.Lock()
				_ = sc.WriteWindow(f.ID, len(f.Request.Body))
			}
		case ipc.KindBody:
			if f.ID == running {
				_ = sc.WriteWindow(f.ID, len(f.Data))
			}
		case ipc.KindEnd, ipc.KindAbort:
			if f.ID == running {
				running = 0
				streaming.Unlock()
				answer(sc, f.ID)
				for _, id := range queue {
					answer(sc, id)
				}
				queue = nil
			}
		case ipc.KindCancel:
			if i := slices.Index(queue, f.ID); i >= 0 {
				// Bug: the abort overtakes the answers still due before it.
				queue = slices.Delete(queue, i, i+1)
				_ = sc.WriteAbort(f.ID, "cancelled before it started")
			}
		}
	}
}

func answer(sc *ipc.ServerConn, id uint64) {
	_ = sc.WriteResponse(&ipc.Response{ID: id, Status: http.StatusOK,
		Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("broken\n"), EOF: true})
}
