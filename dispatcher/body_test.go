package dispatcher

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// readSome calls Read until it returns data or an error, as the body pump
// does.
func readSome(tb testing.TB, b *requestBody, p []byte) (n int, err error) {
	tb.Helper()
	for n == 0 && err == nil {
		n, err = b.Read(p)
	}
	return n, err
}

// Crossing the limit yields exactly the limit's bytes, then
// *http.MaxBytesError, and onLimit once.
func TestRequestBodyReads(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	r := httptest.NewRequest("POST", "/", pr)
	var limits []error
	b := newRequestBody(httptest.NewRecorder(), r, 10, func(err error) { limits = append(limits, err) })
	defer b.release()
	buf := make([]byte, 64)

	go pw.Write([]byte("hello"))
	n, err := readSome(t, b, buf)
	if string(buf[:n]) != "hello" || err != nil {
		t.Fatalf("got %q, %v", buf[:n], err)
	}

	go pw.Write([]byte("0123456789"))
	var got []byte
	for err == nil {
		n, err = readSome(t, b, buf)
		got = append(got, buf[:n]...)
	}
	var mbe *http.MaxBytesError
	if string(got) != "01234" || !errors.As(err, &mbe) || mbe.Limit != 10 {
		t.Fatalf("got %q, %v; want the 5 bytes left under the limit, then *http.MaxBytesError", got, err)
	}
	if n, err := b.Read(buf); n != 0 || !errors.As(err, &mbe) {
		t.Errorf("Read after the limit: %d, %v", n, err)
	}
	if len(limits) != 1 || b.overLimit() == nil {
		t.Errorf("onLimit called %d times, overLimit %v", len(limits), b.overLimit())
	}
}

// Trailers received at the end of the body are copied for the end frame
// before io.EOF reaches the pump; after release, nothing is read.
func TestRequestBodyTrailerAndRelease(t *testing.T) {
	data := []byte("abc")
	r := httptest.NewRequest("POST", "/", nil)
	reads := 0
	r.Body = io.NopCloser(readerFunc(func(p []byte) (int, error) {
		reads++
		if len(data) == 0 {
			r.Trailer = http.Header{"X-Sum": {"3"}} // as net/http does at the end of a chunked body
			return 0, io.EOF
		}
		n := copy(p, data)
		data = data[n:]
		return n, nil
	}))
	b := newRequestBody(httptest.NewRecorder(), r, 0, nil)
	got, err := io.ReadAll(readerFunc(func(p []byte) (int, error) {
		n, err := readSome(t, b, p)
		return n, err
	}))
	if string(got) != "abc" || err != nil || b.trailer.Get("X-Sum") != "3" {
		t.Fatalf("%q, %v, trailer %v", got, err, b.trailer)
	}
	b.release()
	before := reads
	if _, err := b.Read(make([]byte, 1)); err != errBodyReleased || reads != before {
		t.Fatalf("Read after release: %v, source read %d more times", err, reads-before)
	}
}

// release waits for a read in flight, which then returns errBodyReleased
// (its bytes go nowhere), and refuses later reads. Under a real server
// release interrupts the read with a read deadline; here the client ends it.
func TestRequestBodyReleaseDuringRead(t *testing.T) {
	pr, pw := io.Pipe()
	r := httptest.NewRequest("POST", "/", pr)
	b := newRequestBody(httptest.NewRecorder(), r, 0, nil)
	read := make(chan error, 1)
	go func() {
		_, err := b.Read(make([]byte, 8))
		read <- err
	}()
	waitFor(t, "the read to be in flight", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.reading
	})
	released := make(chan struct{})
	go func() {
		b.release()
		close(released)
	}()
	waitFor(t, "release to wait for the read", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.released != nil
	})
	select {
	case <-released:
		t.Fatal("release returned while a read was in flight")
	default:
	}
	pw.Write([]byte("late"))
	<-released
	if err := <-read; err != errBodyReleased {
		t.Errorf("the read in flight returned %v, want errBodyReleased", err)
	}
	if _, err := b.Read(make([]byte, 1)); err != errBodyReleased {
		t.Errorf("Read after release: %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after a while.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
