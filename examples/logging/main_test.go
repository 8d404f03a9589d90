package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/sdk/sdktest"
	"github.com/sirupsen/logrus"
)

func post(t *testing.T, url, body string) (status int, requestID string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Request-Id")
}

// Each line the handler logs arrives in the dispatcher's log at its level,
// tagged with the ID the client got in X-Request-Id.
func TestLinesKeepLevelAndRequestID(t *testing.T) {
	srv := sdktest.Start(t, sdktest.Build(t, "."))
	status, id := post(t, srv.URL+"/orders", `{"item":"book","qty":200}`)
	if status != http.StatusAccepted || id == "" {
		t.Fatalf("status %d, request ID %q", status, id)
	}
	tests := []struct {
		msg    string
		level  logrus.Level
		fields map[string]any
	}{
		{"decoded", logrus.DebugLevel, map[string]any{"child.order": "{Item:book Qty:200}"}},
		{"order received", logrus.InfoLevel, map[string]any{"child.item": "book", "child.qty": float64(200)}},
		{"unusually large order", logrus.WarnLevel, map[string]any{"child.item": "book"}},
	}
	for _, tc := range tests {
		t.Run(tc.msg, func(t *testing.T) {
			e := srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == tc.msg && e.Fields["req_id"] == id })
			if e.Level != tc.level {
				t.Errorf("level %s, want %s", e.Level, tc.level)
			}
			for k, v := range tc.fields {
				if e.Fields[k] != v {
					t.Errorf("field %s = %#v, want %#v (entry %v)", k, e.Fields[k], v, e)
				}
			}
			if e.Fields["worker"] != "logging" || e.Fields["pid"] == nil {
				t.Errorf("entry %v does not name its worker", e)
			}
		})
	}

	t.Run("error", func(t *testing.T) {
		status, id := post(t, srv.URL+"/orders", `{"item":`)
		if status != http.StatusBadRequest {
			t.Fatalf("status %d, want 400", status)
		}
		e := srv.WaitLog(t, func(e sdktest.Entry) bool { return e.Message == "invalid order" && e.Fields["req_id"] == id })
		if e.Level != logrus.ErrorLevel || !strings.Contains(e.Fields["child.error"].(string), "unexpected EOF") {
			t.Errorf("entry %v, want error level with the decoder's error", e)
		}
	})
}
