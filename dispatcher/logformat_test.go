package dispatcher

import (
	"bytes"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func TestTextFormatterBlocks(t *testing.T) {
	at := time.Date(2026, 12, 7, 22, 0, 0, 0, time.UTC)
	plain := &logrus.TextFormatter{DisableTimestamp: true}
	f := &TextFormatter{TextFormatter: logrus.TextFormatter{DisableTimestamp: true}}
	tests := []struct {
		name   string
		fields logrus.Fields
		want   string
	}{
		{"no block: as the TextFormatter", logrus.Fields{"pid": 7, "s": "a b"}, ""},
		{"not a block field: as the TextFormatter", logrus.Fields{"user_agent": "a\nb"}, ""},
		{"a field with newlines escaped as one line by the TextFormatter, but not here", logrus.Fields{"pid": 7, "stack": "panic: boom\n\ngoroutine 1 [running]:\n\tmain.go:3\n"},
			"level=error msg=\"panic: boom\" pid=7\n\tpanic: boom\n\t\n\tgoroutine 1 [running]:\n\t\tmain.go:3\n"},
		{"control characters escaped", logrus.Fields{"stderr": "a\rb\x1b[31m\nc"},
			"level=error msg=\"panic: boom\"\n\ta\\x0db\\x1b[31m\n\tc\n"},
		{"two blocks, labelled", logrus.Fields{"stderr": "1\n2", "child.stack": "x\ny"},
			"level=error msg=\"panic: boom\"\n\t[child.stack]\n\tx\n\ty\n\t[stderr]\n\t1\n\t2\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &logrus.Entry{Logger: logrus.New(), Data: tt.fields, Time: at, Level: logrus.ErrorLevel, Message: "panic: boom"}
			got, err := f.Format(e)
			if err != nil {
				t.Fatal(err)
			}
			want := []byte(tt.want)
			if tt.want == "" {
				want, _ = plain.Format(e)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got\n%s\nwant\n%s", got, want)
			}
			if tt.fields["stack"] != nil && e.Data["stack"] == nil {
				t.Error("Format changed the entry")
			}
		})
	}
}
