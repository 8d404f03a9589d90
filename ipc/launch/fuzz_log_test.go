package launch

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/childproc/dispatcher/internal/allocs"
	"github.com/sirupsen/logrus"
)

// FuzzWorkerLog feeds arbitrary worker output (standard error or standard
// output after the handshake line), split into two writes at an arbitrary
// point, through the real lineSink and workerLog: line splitting and
// truncation, JSON parsing, level and field mapping, the panic tail. No
// entry may be logged at panic or fatal level or make the dispatcher exit,
// every message, field name and top-level string value must be sanitized,
// a line's fields are capped, the tail stays small, and allocation stays in
// proportion to the input.
//
//	go test -run=NONE -fuzz=FuzzWorkerLog -fuzztime=1m ./ipc/
func FuzzWorkerLog(f *testing.F) {
	f.Add([]byte("plain line\n[WARN] tagged\r\n\n"), uint16(3))
	f.Add([]byte(`{"@level":"error","@message":"m\u0000","@timestamp":"t","request_id":"r1","k":"v\u001b[31m"}`+"\n"), uint16(20))
	f.Add([]byte(`{"level":"panic","msg":{"a":[1,"x"]},"time":5,"ts":"x"}`+"\n{\"level\":\"fatal\"}"), uint16(0))
	f.Add([]byte("panic: boom\n\ngoroutine 1 [running]:\nmain.main()\n"), uint16(8))
	f.Add([]byte("{\"a\xff\x01\":\"\xfe\",\"b\":null,\"c\":true,\"d\":1e400}\n{}\nnull\n{"), uint16(5))
	f.Add(append(bytes.Repeat([]byte("x"), maxLogLine+10), "\nnext\n"...), uint16(maxLogLine))
	var many strings.Builder
	many.WriteString("{")
	for i := range 40 {
		if i > 0 {
			many.WriteString(",")
		}
		many.WriteString(`"k` + string(rune('a'+i%26)) + string(rune('a'+i/26)) + `":1`)
	}
	many.WriteString("}\n")
	f.Add([]byte(many.String()), uint16(1))

	f.Fuzz(func(t *testing.T, b []byte, split uint16) {
		w, hook := newTestLog(t)
		lines := bytes.Count(b, []byte{'\n'}) + 1
		// An entry costs a fixed amount whatever its line's length.
		limit := 64<<10 + 64*uint64(len(b)) + uint64(lines)*4<<10
		allocs.AtMost(t, limit, func() {
			s := w.sink()
			k := 0
			if len(b) > 0 {
				k = int(split) % (len(b) + 1)
			}
			s.Write(b[:k])
			s.Write(b[k:])
			s.Flush()
			w.finish()
		})
		entries := hook.AllEntries()
		if len(entries) > lines {
			t.Fatalf("%d entries from %d lines", len(entries), lines)
		}
		for _, e := range entries {
			if e.Level < logrus.ErrorLevel {
				t.Fatalf("entry logged at %s: %q", e.Level, e.Message)
			}
			checkSanitized(t, "message", e.Message)
			if len(e.Message) > 4*(maxLogLine+len(" [truncated]")) {
				t.Fatalf("message of %d bytes", len(e.Message))
			}
			if e.Data["stream"] != "stderr" {
				t.Fatalf("stream field %v", e.Data["stream"])
			}
			child := 0
			for k, v := range e.Data {
				checkSanitized(t, "field name", k)
				if s, ok := v.(string); ok {
					if k == "stack" || k == "child.stack" {
						s = strings.ReplaceAll(s, "\n", " ") // a trace keeps its lines
						if k == "stack" && len(s) > maxTrace+len("\n[truncated]") {
							t.Fatalf("trace of %d bytes", len(s))
						}
					}
					checkSanitized(t, "field "+k, s)
				}
				switch {
				case k == "stream", k == "req_id", k == "child.more_fields", k == "stack":
				case strings.HasPrefix(k, "child."):
					child++
				default:
					t.Fatalf("field %q is not a child's field", k)
				}
			}
			if child > 32 {
				t.Fatalf("%d child fields", child)
			}
		}
		tail := w.Tail(time.Time{})
		if len(tail) > tailLines+2 {
			t.Fatalf("tail of %d lines", len(tail))
		}
		for _, l := range tail {
			checkSanitized(t, "tail line", l)
			if len(l) > maxTailLine+len("...") {
				t.Fatalf("tail line of %d bytes", len(l))
			}
		}
	})
}

func checkSanitized(t *testing.T, what, s string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Fatalf("%s is not valid UTF-8: %q", what, s)
	}
	for _, r := range s {
		if r < 0x20 && r != '\t' || r == 0x7f {
			t.Fatalf("%s keeps control character %#x: %q", what, r, s)
		}
	}
}
