// Command sse streams server-sent events: GET /events sends a "tick" event
// at once, then one every ?every= (a Go duration, default 1s), flushing each
// so that it reaches the client immediately, until ?count= events were sent
// or the client goes away. A reconnecting client's Last-Event-ID header
// resumes the numbering.
//
//	bin/dispatcher --workers bin/sse --timeout 1h
//	curl -N '127.0.0.1:8080/events?every=500ms&count=5'
//
// Each Flush sends what was written so far to the dispatcher, which relays
// it to the client at once. A stream lasts as long as its handler, so the
// dispatcher's --timeout must exceed the longest stream. When the client
// disconnects, the handler's context is cancelled: the handler returns, and
// the slot serves the next request.
package main

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/childproc/dispatcher/sdk"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /events", events)
	sdk.Serve(mux)
}

func events(w http.ResponseWriter, r *http.Request) {
	every := time.Second
	if v := r.URL.Query().Get("every"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			http.Error(w, "every: want a positive duration such as 500ms", http.StatusBadRequest)
			return
		}
		every = d
	}
	count := -1 // unlimited
	if v := r.URL.Query().Get("count"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			http.Error(w, "count: want a positive number", http.StatusBadRequest)
			return
		}
		count = n
	}
	next := 1
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			next = n + 1
		}
	}

	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	log := sdk.Logger(r.Context())
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for sent := 0; count < 0 || sent < count; sent++ {
		if sent > 0 {
			select {
			case <-ticker.C:
			case <-r.Context().Done():
				log.WithField("sent", sent).Info("client went away")
				return
			}
		}
		fmt.Fprintf(w, "id: %d\nevent: tick\ndata: {\"n\":%d,\"time\":%q}\n\n", next, next, time.Now().UTC().Format(time.RFC3339Nano))
		flusher.Flush()
		next++
	}
	fmt.Fprint(w, "event: done\ndata: {}\n\n")
}
