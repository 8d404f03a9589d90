// Command files stores uploads in a directory and serves them back,
// streaming both ways: neither an upload nor a download is held in memory,
// so files far larger than a protocol frame (1 MiB) or than the worker's
// memory pass through, with flow control, at the pace of the client.
//
//	PUT /files/{name}   store the request body; 201 with {"name","bytes","sha256"}
//	GET /files/{name}   the file (Range, conditional requests and HEAD via http.ServeContent)
//
// FILES_DIR names the directory, shared by all workers; MAX_UPLOAD bounds an
// upload in bytes (default 1 GiB; larger ones get 413). A worker gets no
// environment but the dispatcher's minimal one, so pass them explicitly:
//
//	bin/dispatcher --workers bin/files --env FILES_DIR=/srv/files
//	curl -T big.iso 127.0.0.1:8080/files/big.iso
//	curl -O 127.0.0.1:8080/files/big.iso
//
// An upload goes to a temporary file renamed into place once complete, so a
// concurrent download, from any worker, sees the old file or the new one,
// never a partial one.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/childproc/dispatcher/sdk"
)

// validName keeps names to one path element that is not hidden.
var validName = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$`)

type store struct {
	dir       string
	maxUpload int64
}

// Stored is the answer to an upload.
type Stored struct {
	Name   string `json:"name"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

func main() {
	s, err := configure()
	if err != nil {
		fmt.Fprintln(os.Stderr, "files:", err)
		os.Exit(1)
	}
	sdk.Serve(s.routes())
}

func configure() (*store, error) {
	s := &store{dir: os.Getenv("FILES_DIR"), maxUpload: 1 << 30}
	if s.dir == "" {
		return nil, errors.New("FILES_DIR is not set: pass it with dispatcher --env FILES_DIR=/path")
	}
	if fi, err := os.Stat(s.dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("FILES_DIR=%s is not a directory", s.dir)
	}
	if v := os.Getenv("MAX_UPLOAD"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("MAX_UPLOAD=%q: want a positive number of bytes", v)
		}
		s.maxUpload = n
	}
	return s, nil
}

func (s *store) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /files/{name}", s.put)
	mux.HandleFunc("GET /files/{name}", s.get)
	return mux
}

func (s *store) put(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !validName.MatchString(name) {
		http.Error(w, "invalid file name", http.StatusBadRequest)
		return
	}
	tmp, err := os.CreateTemp(s.dir, ".upload-*")
	if err != nil {
		sdk.Logger(r.Context()).WithError(err).Error("creating the upload file")
		http.Error(w, "cannot store the file", http.StatusInternalServerError)
		return
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	defer tmp.Close()

	// io.Copy reads the body as it arrives: each read lets the dispatcher
	// send more.
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, sum), http.MaxBytesReader(w, r.Body, s.maxUpload))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("upload over %d bytes", s.maxUpload), http.StatusRequestEntityTooLarge)
			return
		}
		// The client went away or its body broke: nothing to store.
		sdk.Logger(r.Context()).WithError(err).Warn("upload interrupted")
		http.Error(w, "upload interrupted", http.StatusBadRequest)
		return
	}
	if err := tmp.Close(); err != nil {
		http.Error(w, "cannot store the file", http.StatusInternalServerError)
		return
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.dir, name)); err != nil {
		http.Error(w, "cannot store the file", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/files/"+name)
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(Stored{Name: name, Bytes: n, SHA256: hex.EncodeToString(sum.Sum(nil))})
}

func (s *store) get(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !validName.MatchString(name) {
		http.Error(w, "invalid file name", http.StatusBadRequest)
		return
	}
	f, err := os.Open(filepath.Join(s.dir, name))
	if err != nil {
		http.Error(w, "no such file", http.StatusNotFound)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, "cannot read the file", http.StatusInternalServerError)
		return
	}
	// ServeContent copies the file in 32 KiB writes; the sdk sends the body
	// in frames as they fill, and the dispatcher relays each to the client.
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, name, fi.ModTime(), f)
}
