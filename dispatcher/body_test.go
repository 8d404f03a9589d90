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
// does (a (0, nil) return lets the pump check whether to stop).
func readSome(tb testing.TB, b *requestBody, p []byte) (n int, err error) {
	tb.Helper()
	deadline := time.Now().Add(wait)
	for n == 0 && err == nil {
		if time.Now().After(deadline) {
			tb.Fatal("no data and no error")
		}
		n, err = b.Read(p)
	}
	return n, err
}

// The pump's reads of a client that sends nothing return (0, nil) after
// stopCheck instead of blocking; the bytes that come later are not lost;
// crossing the limit yields exactly the limit's bytes, then
// *http.MaxBytesError, and onLimit once.
func TestRequestBodyReads(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	r := httptest.NewRequest("POST", "/", pr)
	var limits []error
	b := newRequestBody(httptest.NewRecorder(), r, 10, func(err error) { limits = append(limits, err) })
	defer b.release()
	buf := make([]byte, 64)

	if n, err := b.Read(buf); n != 0 || err != nil {
		t.Fatalf("Read with nothing sent: %d, %v; want 0, nil", n, err)
	}
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
