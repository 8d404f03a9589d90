// Command echo reflects the whole request back: as JSON at /json (method,
// URI, proto, headers, host, content length, remote address, request ID,
// body), or the raw body otherwise, streamed as it is read. It sets two
// Set-Cookie headers, and a trailer when asked with ?trailer=1.
package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/childproc/dispatcher/sdk"
)

type reflection struct {
	Method        string
	URI           string
	Path          string
	Query         string
	Proto         string
	Header        http.Header
	Host          string
	ContentLength int64
	RemoteAddr    string
	RequestID     string
	Body          string
	Trailer       http.Header
	PID           int
}

func main() {
	sdk.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.Header().Set("X-Worker-Pid", strconv.Itoa(os.Getpid()))
		if r.URL.Path == "/json" {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(reflection{
				Method: r.Method, URI: r.RequestURI, Path: r.URL.Path, Query: r.URL.RawQuery,
				Proto: r.Proto, Header: r.Header, Host: r.Host, ContentLength: r.ContentLength,
				RemoteAddr: r.RemoteAddr, RequestID: sdk.RequestID(r.Context()), Body: string(body),
				Trailer: r.Trailer, PID: os.Getpid(),
			})
			return
		}
		if r.URL.Query().Get("trailer") == "1" {
			w.Header().Set("Trailer", "X-Checksum")
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		n, err := io.Copy(w, r.Body)
		if err != nil {
			sdk.Logger(r.Context()).WithError(err).Warn("echo: reading body")
			return
		}
		if r.URL.Query().Get("trailer") == "1" {
			w.Header().Set("X-Checksum", strconv.FormatInt(n, 10))
		}
	}))
}
