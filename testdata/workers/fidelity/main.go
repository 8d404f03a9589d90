// Command fidelity exercises the HTTP behaviour the dispatcher must carry
// through a worker unchanged:
//
//	/status?code=N     answers status N ("status N" as body where allowed)
//	/early             sends 103 Early Hints (Link), then 200 "final"; with
//	                   hold=1 it waits for a request to /early/release
//	                   between the two
//	/processing        sends 102 Processing, then 200 "done"
//	/switch            answers 101, which no worker may send
//	/hop               sets hop-by-hop response headers and one end-to-end
//	                   header, and answers the request headers as JSON
//	/sse?n=N           server-sent events in lockstep: event i+1 is sent
//	                   only after a request to /sse/next; after N events the
//	                   stream ends. Flushes with http.ResponseController. If
//	                   the client goes away it logs "sse: cancelled after K
//	                   events".
//	/sse/next          lets the running /sse send its next event
//	/count             reads the whole body and answers "read N bytes", or
//	                   400 and logs "count: read failed" if the read fails
//	/duplex            echoes the body line by line, flushing each line
//	/trailers          reads the body; answers its length and the request
//	                   trailer X-Req-Trailer as response trailers
//	/big?n=N           answers N bytes (a-z repeated); with cl=1 it declares
//	                   Content-Length first
//	/badlength         declares Content-Length: 3 and writes 10 bytes
//	/badtrailer        sends a trailer value with CR/LF
//	/readdeadline?ms=M sets a read deadline M ms ahead, reads the body and
//	                   answers what it read and whether the deadline hit
//	/writedeadline     sends "first", sets a write deadline in the past, and
//	                   logs the error of the next flush
//
// Every response carries the worker's pid in X-Worker-Pid.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/childproc/dispatcher/sdk"
)

var next = make(chan struct{})

var release = make(chan struct{})

func main() {
	pid := strconv.Itoa(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.URL.Query().Get("code"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d\n", code)
	})
	mux.HandleFunc("/early", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		if r.URL.Query().Get("hold") == "1" {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "final\n")
	})
	mux.HandleFunc("/early/release", func(w http.ResponseWriter, r *http.Request) {
		select {
		case release <- struct{}{}:
			io.WriteString(w, "released\n")
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/processing", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusProcessing)
		io.WriteString(w, "done\n")
	})
	mux.HandleFunc("/switch", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Upgrade", "websocket")
		w.WriteHeader(http.StatusSwitchingProtocols)
	})
	mux.HandleFunc("/hop", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Connection", "X-Conn-Listed, close")
		h.Set("X-Conn-Listed", "secret")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Connection", "keep-alive")
		h.Set("Upgrade", "h2c")
		h.Set("Te", "trailers")
		h.Set("Transfer-Encoding", "identity")
		h.Set("X-End-To-End", "kept")
		h.Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(r.Header)
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		for i := 1; i <= n; i++ {
			fmt.Fprintf(w, "id: %d\ndata: event %d\n\n", i, i)
			if err := rc.Flush(); err != nil {
				sdk.Logger(r.Context()).WithError(err).Error("sse: flush failed")
				return
			}
			if i == n {
				return
			}
			select {
			case <-next:
			case <-r.Context().Done():
				sdk.Logger(r.Context()).Infof("sse: cancelled after %d events", i)
				return
			}
		}
	})
	mux.HandleFunc("/sse/next", func(w http.ResponseWriter, r *http.Request) {
		select {
		case next <- struct{}{}:
			io.WriteString(w, "ok\n")
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			sdk.Logger(r.Context()).WithError(err).Info("count: read failed")
			http.Error(w, fmt.Sprintf("read %d bytes, then: %v", n, err), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "read %d bytes\n", n)
	})
	mux.HandleFunc("/duplex", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.EnableFullDuplex(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			fmt.Fprintf(w, "echo: %s\n", sc.Text())
			if err := rc.Flush(); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Trailer", "X-Body-Bytes, X-Echo-Trailer")
		fmt.Fprintf(w, "read %d bytes\n", n)
		w.Header().Set("X-Body-Bytes", strconv.FormatInt(n, 10))
		w.Header().Set("X-Echo-Trailer", r.Trailer.Get("X-Req-Trailer"))
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if r.URL.Query().Get("cl") == "1" {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		buf := make([]byte, 32<<10)
		for i := range buf {
			buf[i] = 'a' + byte(i%26)
		}
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("/badlength", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3")
		io.WriteString(w, "0123456789")
	})
	mux.HandleFunc("/badtrailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Bad")
		io.WriteString(w, "body\n")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Bad", "a\r\nX-Injected: 1")
	})
	mux.HandleFunc("/readdeadline", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Duration(ms) * time.Millisecond)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "read %q; deadline exceeded: %v; err: %v\n", b, errors.Is(err, os.ErrDeadlineExceeded), err)
	})
	mux.HandleFunc("/writedeadline", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		io.WriteString(w, "first\n")
		if err := rc.Flush(); err != nil {
			sdk.Logger(r.Context()).WithError(err).Error("writedeadline: first flush failed")
			return
		}
		if err := rc.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
			sdk.Logger(r.Context()).WithError(err).Error("writedeadline: SetWriteDeadline failed")
			return
		}
		_, werr := io.WriteString(w, "second\n")
		ferr := rc.Flush()
		sdk.Logger(r.Context()).Infof("writedeadline: write error %v, flush error %v, deadline exceeded %v",
			werr, ferr, errors.Is(ferr, os.ErrDeadlineExceeded))
	})
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Pid", pid)
		mux.ServeHTTP(w, r)
	}))
}
