package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/sdk/sdktest"
	"github.com/sirupsen/logrus"
)

type event struct {
	id, name, data string
}

// readEvent reads one event from an event stream.
func readEvent(t *testing.T, br *bufio.Reader) event {
	t.Helper()
	var e event
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v (event so far %+v)", err, e)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			return e
		}
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "id":
			e.id = v
		case "event":
			e.name = v
		case "data":
			e.data = v
		}
	}
}

func TestEvents(t *testing.T) {
	srv := sdktest.Start(t, sdktest.Build(t, "."))

	t.Run("count and resume", func(t *testing.T) {
		req, _ := http.NewRequest("GET", srv.URL+"/events?every=1ms&count=3", nil)
		req.Header.Set("Last-Event-ID", "41")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
			t.Fatalf("%d %q", resp.StatusCode, ct)
		}
		br := bufio.NewReader(resp.Body)
		for _, want := range []string{"42", "43", "44"} {
			e := readEvent(t, br)
			var d struct{ N int }
			if err := json.Unmarshal([]byte(e.data), &d); err != nil || e.id != want || e.name != "tick" || strconv.Itoa(d.N) != want {
				t.Fatalf("event %+v (%v), want tick %s", e, err, want)
			}
		}
		if e := readEvent(t, br); e.name != "done" {
			t.Fatalf("event %+v, want done", e)
		}
		if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
			t.Errorf("after the last event: %q, %v", rest, err)
		}
	})

	// The first event arrives while the handler waits an hour for the
	// second: only a flush can have sent it. Hanging up cancels the
	// handler's context, which the handler logs.
	t.Run("flush and hang up", func(t *testing.T) {
		resp, err := http.Get(srv.URL + "/events?every=1h")
		if err != nil {
			t.Fatal(err)
		}
		id := resp.Header.Get("X-Request-Id")
		if e := readEvent(t, bufio.NewReader(resp.Body)); e.id != "1" || e.name != "tick" {
			t.Fatalf("first event %+v", e)
		}
		resp.Body.Close()
		e := srv.WaitLog(t, func(e sdktest.Entry) bool {
			return e.Message == "client went away" && e.Fields["req_id"] == id
		})
		if e.Level != logrus.InfoLevel || e.Fields["child.sent"] != float64(1) {
			t.Errorf("log entry %v, want info with child.sent=1", e)
		}
	})
}
