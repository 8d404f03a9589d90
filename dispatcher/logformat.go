package dispatcher

import (
	"bytes"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/sirupsen/logrus"
)

// TextFormatter is logrus's TextFormatter for entries that carry a text of
// several lines, such as a worker's stack trace: a block field holding a
// line feed is left out of the entry's key=value line and follows it, each
// of its lines indented by a tab. The entry stays one entry (one write,
// and its continuation lines start with white space, as log shippers'
// multi-line rules expect), and reads as the trace did. Other entries, and
// other fields (a client's header with a line feed), are formatted exactly
// as by the TextFormatter.
type TextFormatter struct {
	logrus.TextFormatter
	// Blocks are the fields shown as blocks. If nil, BlockFields.
	Blocks []string
}

// BlockFields are the fields of several lines in the dispatcher's log: a
// worker's stack trace (its own, or the sdk's record of a handler panic)
// and the stderr lines a crash report quotes.
var BlockFields = []string{"stack", "child.stack", "stderr"}

// Format renders a single log entry.
func (f *TextFormatter) Format(e *logrus.Entry) ([]byte, error) {
	keys := f.Blocks
	if keys == nil {
		keys = BlockFields
	}
	var blocks []string
	for _, k := range keys {
		if s, ok := e.Data[k].(string); ok && strings.IndexByte(s, '\n') >= 0 {
			blocks = append(blocks, k)
		}
	}
	if len(blocks) == 0 {
		return f.TextFormatter.Format(e)
	}
	slices.Sort(blocks)
	data := make(logrus.Fields, len(e.Data))
	for k, v := range e.Data {
		if !slices.Contains(blocks, k) {
			data[k] = v
		}
	}
	line := *e
	line.Data = data
	out, err := f.TextFormatter.Format(&line)
	if err != nil {
		return nil, err
	}
	b := bytes.NewBuffer(out)
	for _, k := range blocks {
		if len(blocks) > 1 {
			b.WriteString("\t[" + k + "]\n")
		}
		for l := range strings.SplitSeq(strings.TrimRight(e.Data[k].(string), "\n"), "\n") {
			b.WriteByte('\t')
			writeLine(b, l)
			b.WriteByte('\n')
		}
	}
	return b.Bytes(), nil
}

// writeLine writes l with its control characters other than tab escaped
// (a carriage return could otherwise hide the line before it on a
// terminal).
func writeLine(b *bytes.Buffer, l string) {
	for _, r := range l {
		switch {
		case r == '\t' || r >= 0x20 && r != 0x7f:
			b.WriteRune(r)
		case r == utf8.RuneError:
			b.WriteRune(r)
		default:
			b.WriteString(`\x`)
			b.WriteByte("0123456789abcdef"[r>>4])
			b.WriteByte("0123456789abcdef"[r&0xf])
		}
	}
}
