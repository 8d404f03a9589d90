package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/sdk/sdktest"
)

func put(t *testing.T, url string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("PUT", url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestUploadAndDownload(t *testing.T) {
	dir := sdktest.TempDir(t) // the workers write there
	srv := sdktest.Start(t, sdktest.Build(t, "."), sdktest.Options{
		Size: 2,
		Env:  []string{"FILES_DIR=" + dir, "MAX_UPLOAD=" + "10000000"},
		// The worker writes to FILES_DIR, which a sandbox's read-only
		// root would not let it (see examples/dispatcher.yaml).
		Flags: []string{"--sandbox=off"},
	})

	// 9 MB: many times the 1 MiB frame limit and the 256 KiB flow control
	// window, so it can only pass streamed. The reader hides its length:
	// the upload is chunked, as from a pipe.
	data := make([]byte, 9_000_000)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(data)
	sum := sha256.Sum256(data)

	resp, b := put(t, srv.URL+"/files/data.bin", io.MultiReader(bytes.NewReader(data)))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	var st Stored
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bytes != int64(len(data)) || st.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("stored %+v, want %d bytes with sha256 %x", st, len(data), sum)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".upload-*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	t.Run("download", func(t *testing.T) {
		resp, err := http.Get(srv.URL + "/files/data.bin")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || n != int64(len(data)) || !bytes.Equal(h.Sum(nil), sum[:]) {
			t.Fatalf("%d, %d bytes, sha256 %x; want 200, %d bytes, %x", resp.StatusCode, n, h.Sum(nil), len(data), sum)
		}
		if resp.ContentLength != int64(len(data)) {
			t.Errorf("Content-Length %d", resp.ContentLength)
		}
	})
	t.Run("range", func(t *testing.T) {
		req, _ := http.NewRequest("GET", srv.URL+"/files/data.bin", nil)
		req.Header.Set("Range", "bytes=5000000-5000099")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, data[5000000:5000100]) {
			t.Errorf("%d, %d bytes; want 206 with bytes 5000000-5000099", resp.StatusCode, len(b))
		}
	})
	t.Run("too large", func(t *testing.T) {
		resp, b := put(t, srv.URL+"/files/big.bin", bytes.NewReader(make([]byte, 10_000_001)))
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("%d %s, want 413", resp.StatusCode, b)
		}
		if _, err := os.Stat(filepath.Join(dir, "big.bin")); err == nil {
			t.Error("a refused upload was stored")
		}
	})
	t.Run("missing", func(t *testing.T) {
		resp, err := http.Get(srv.URL + "/files/nothing")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("%d, want 404", resp.StatusCode)
		}
	})
	t.Run("invalid name", func(t *testing.T) {
		resp, b := put(t, srv.URL+"/files/.hidden", strings.NewReader("x"))
		if resp.StatusCode != 400 {
			t.Errorf("%d %s, want 400", resp.StatusCode, b)
		}
	})
}

// Without FILES_DIR the worker refuses to start, and says why.
func TestMissingConfigStopsTheStart(t *testing.T) {
	_, err := sdktest.NewServer(sdktest.Build(t, "."), sdktest.Options{})
	if err == nil || !strings.Contains(err.Error(), "FILES_DIR is not set") {
		t.Fatalf("start without FILES_DIR: %v", err)
	}
}
