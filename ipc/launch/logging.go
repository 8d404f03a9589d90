package launch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/sirupsen/logrus"
)

// hclogAdapter sends go-plugin's own messages to logrus at debug level: the
// dispatcher logs the events that matter itself. GetLevel reports Off so that
// go-plugin does not run its own parser over worker stderr lines (a crafted
// line can panic it); lineSink parses them instead.
type hclogAdapter struct {
	e    *logrus.Entry
	name string
	args []any
	// named: a logger go-plugin named, which it does only to copy a
	// worker's standard error (client.go, logStderr), and which then logs
	// the pieces of a line longer than its read buffer at debug level.
	// lineSink logs those lines already: the pieces are dropped.
	named bool
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHclog(e *logrus.Entry) *hclogAdapter { return &hclogAdapter{e: e} }

func (h *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if !h.e.Logger.IsLevelEnabled(logrus.DebugLevel) || (h.named && level < hclog.Warn) {
		return
	}
	f := logrus.Fields{"component": "go-plugin"}
	if h.name != "" {
		f["logger"] = h.name
	}
	all := append(append([]any(nil), h.args...), args...)
	for i := 0; i+1 < len(all); i += 2 {
		f[fmt.Sprint(all[i])] = all[i+1]
	}
	h.e.WithFields(f).Debug(msg)
}

func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }
func (h *hclogAdapter) IsTrace() bool                 { return false }
func (h *hclogAdapter) IsDebug() bool                 { return h.e.Logger.IsLevelEnabled(logrus.DebugLevel) }
func (h *hclogAdapter) IsInfo() bool                  { return h.IsDebug() }
func (h *hclogAdapter) IsWarn() bool                  { return h.IsDebug() }
func (h *hclogAdapter) IsError() bool                 { return h.IsDebug() }
func (h *hclogAdapter) ImpliedArgs() []any            { return h.args }
func (h *hclogAdapter) Name() string                  { return h.name }
func (h *hclogAdapter) SetLevel(hclog.Level)          {}
func (h *hclogAdapter) GetLevel() hclog.Level         { return hclog.Off }

func (h *hclogAdapter) With(args ...any) hclog.Logger {
	return &hclogAdapter{e: h.e, name: h.name, args: append(append([]any(nil), h.args...), args...), named: h.named}
}

func (h *hclogAdapter) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return &hclogAdapter{e: h.e, name: name, args: h.args, named: true}
}

func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	return &hclogAdapter{e: h.e, name: name, args: h.args, named: true}
}

func (h *hclogAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(nil), "", 0)
}

func (h *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return &lineSink{emit: func(line []byte) { h.Debug(string(line)) }}
}

const (
	// maxLogLine is the longest worker log line kept; the rest is dropped.
	maxLogLine = 8 << 10
	// tailLines is how many recent stderr lines a Child keeps for crash
	// reports.
	tailLines = 20
	// maxTailLine caps each line kept in the tail.
	maxTailLine = 512
)

// lineSink is an io.Writer that splits what a worker writes into lines,
// caps their length and hands each to emit. It never fails and never blocks
// on anything but emit.
type lineSink struct {
	mu        sync.Mutex
	buf       []byte
	truncated bool
	emit      func(line []byte)
}

func (s *lineSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		room := maxLogLine - len(s.buf)
		if len(chunk) > room {
			chunk = chunk[:max(room, 0)]
			s.truncated = true
		}
		s.buf = append(s.buf, chunk...)
		if i < 0 {
			break
		}
		s.flushLocked()
		p = p[i+1:]
	}
	return n, nil
}

// Flush emits a final unterminated line.
func (s *lineSink) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buf) > 0 {
		s.flushLocked()
	}
}

func (s *lineSink) flushLocked() {
	line := bytes.TrimRight(s.buf, "\r")
	if s.truncated {
		line = append(line, " [truncated]"...)
	}
	if len(line) > 0 {
		s.emit(line)
	}
	s.buf = s.buf[:0]
	s.truncated = false
}

// workerLog turns a worker's output lines into log entries. JSON lines from
// the sdk logger (keys @level, @message, @timestamp, or logrus's level/msg/time)
// keep their level and fields, prefixed with "child." so they cannot
// overwrite the dispatcher's own fields; other lines are logged as they are,
// at info level, or at error level from the first line of a Go panic or fatal
// error on.
type workerLog struct {
	e         *logrus.Entry
	stream    string
	mu        sync.Mutex
	inPanic   bool
	panicHead string   // the line that started a panic or fatal error
	tail      []string // ring of recent lines, oldest first
}

func (w *workerLog) sink() *lineSink { return &lineSink{emit: w.line} }

func (w *workerLog) line(b []byte) {
	text := sanitize(b)
	w.mu.Lock()
	if len(w.tail) == tailLines {
		copy(w.tail, w.tail[1:])
		w.tail = w.tail[:tailLines-1]
	}
	short := text
	if len(short) > maxTailLine {
		cut := maxTailLine
		for cut > 0 && !utf8.RuneStart(short[cut]) {
			cut-- // keep the line valid UTF-8, as sanitize made it
		}
		short = short[:cut] + "..."
	}
	w.tail = append(w.tail, short)
	if !w.inPanic && (strings.HasPrefix(text, "panic: ") || strings.HasPrefix(text, "fatal error: ")) {
		w.inPanic = true
		w.panicHead = short
	}
	inPanic := w.inPanic
	w.mu.Unlock()

	e := w.e.WithField("stream", w.stream)
	if len(b) > 0 && b[0] == '{' {
		if lvl, msg, fields, ok := parseJSONLine(b); ok {
			e.WithFields(fields).Log(lvl, msg)
			return
		}
	}
	if inPanic {
		e.Error(text)
		return
	}
	e.Log(prefixLevel(text), text)
}

// prefixLevel infers the level of a plain line from a "[DEBUG]"-style tag
// near its start (the convention of go-plugin and of many std log users).
func prefixLevel(line string) logrus.Level {
	head := line[:min(len(line), 48)]
	i := strings.IndexByte(head, '[')
	if i < 0 {
		return logrus.InfoLevel
	}
	switch tag := head[i:]; {
	case strings.HasPrefix(tag, "[TRACE]"), strings.HasPrefix(tag, "[DEBUG]"):
		return logrus.DebugLevel
	case strings.HasPrefix(tag, "[WARN]"):
		return logrus.WarnLevel
	case strings.HasPrefix(tag, "[ERROR]"):
		return logrus.ErrorLevel
	}
	return logrus.InfoLevel
}

// Tail returns copies of the most recent lines, led by the first line of a
// panic or fatal error when that scrolled out of them (a goroutine dump is
// longer than the tail).
func (w *workerLog) Tail() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	if w.panicHead != "" && (len(w.tail) == 0 || w.tail[0] != w.panicHead) && !contains(w.tail, w.panicHead) {
		out = append(out, w.panicHead, "...")
	}
	return append(out, w.tail...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// sanitize makes a line safe for any log sink: valid UTF-8, no control bytes
// other than tab.
func sanitize(b []byte) string {
	clean := true
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f || c >= utf8.RuneSelf {
			clean = false
			break
		}
	}
	if clean {
		return string(b)
	}
	var sb strings.Builder
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		switch {
		case r == utf8.RuneError && size == 1:
			sb.WriteRune(utf8.RuneError)
		case r < 0x20 && r != '\t' || r == 0x7f:
			fmt.Fprintf(&sb, "\\x%02x", r)
		default:
			sb.WriteRune(r)
		}
	}
	return sb.String()
}

var levelKeys = []string{"@level", "level"}
var messageKeys = []string{"@message", "msg", "message"}
var timeKeys = []string{"@timestamp", "time", "ts"}

// parseJSONLine reads a JSON object log line. Values of any type are
// accepted; well-known keys of the wrong type are kept as fields.
func parseJSONLine(b []byte) (logrus.Level, string, logrus.Fields, bool) {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return 0, "", nil, false
	}
	lvl := logrus.InfoLevel
	for _, k := range levelKeys {
		if s, ok := m[k].(string); ok {
			if l, err := logrus.ParseLevel(strings.ToLower(s)); err == nil {
				lvl = l
				if lvl < logrus.ErrorLevel {
					lvl = logrus.ErrorLevel // a worker cannot make the dispatcher exit
				}
				delete(m, k)
				break
			}
		}
	}
	msg := ""
	for _, k := range messageKeys {
		if s, ok := m[k].(string); ok {
			msg = sanitize([]byte(s))
			delete(m, k)
			break
		}
	}
	for _, k := range timeKeys {
		if _, ok := m[k].(string); ok {
			delete(m, k)
		}
	}
	f := make(logrus.Fields, len(m))
	n := 0
	for k, v := range m {
		if n == 32 {
			f["child.more_fields"] = len(m) - n
			break
		}
		if s, ok := v.(string); ok {
			v = sanitize([]byte(s))
		}
		if k == "request_id" {
			// The sdk's name for the dispatcher's req_id: keep them one.
			if s, ok := v.(string); ok {
				f["req_id"] = s
				continue
			}
		}
		f["child."+sanitize([]byte(k))] = v
		n++
	}
	return lvl, msg, f, true
}
