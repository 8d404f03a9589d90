package launch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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
	return &lineSink{emit: func(line []byte) {
		if len(line) > 0 {
			h.Debug(string(line))
		}
	}}
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
// caps their length and hands each to emit (empty lines too). It never fails and never blocks
// on anything but emit.
//
// With a limit, each line is admitted or dropped as it starts: a dropped
// line is skipped to its end without being looked at, and once the budget
// is spent the rest of a write is counted in one pass, not line by line.
type lineSink struct {
	mu        sync.Mutex
	buf       []byte
	truncated bool
	emit      func(line []byte)

	limit    *outputLimit // nil: every line is emitted
	exempt   *atomic.Bool // if set and true, lines do not count against limit's lines
	inLine   bool         // the line being read was admitted
	dropping bool         // the line being read is dropped
}

func (s *lineSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(p)
	var now time.Time
	for len(p) > 0 {
		if s.dropping {
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				s.limit.drop(0, len(p))
				break
			}
			s.limit.drop(1, i+1)
			s.dropping = false
			p = p[i+1:]
			continue
		}
		if s.limit != nil && !s.inLine {
			if now.IsZero() {
				now = time.Now()
			}
			if !s.limit.admit(now, s.exempt != nil && s.exempt.Load()) {
				s.dropping = p[len(p)-1] != '\n'
				s.limit.drop(bytes.Count(p, []byte{'\n'}), len(p))
				break
			}
			s.inLine = true
		}
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
	if s.limit != nil {
		s.limit.charge(len(s.buf) + 1)
	}
	line := bytes.TrimRight(s.buf, "\r")
	if s.truncated {
		line = append(line, " [truncated]"...)
	}
	s.emit(line)
	s.buf = s.buf[:0]
	s.truncated = false
	s.inLine = false
}

// workerLog turns a worker's output lines into log entries. JSON lines from
// the sdk logger (keys @level, @message, @timestamp, or logrus's level/msg/time)
// keep their level and fields, prefixed with "child." so they cannot
// overwrite the dispatcher's own fields; other lines are logged as they are,
// at info level, except a stack trace: from the first line of a Go panic,
// fatal error, runtime error, signal or goroutine dump, the lines are
// gathered into one error entry (the first line its message, the whole
// trace its field "stack") until the stream ends, it falls quiet for
// traceGap, or the trace reaches maxTrace bytes.
type workerLog struct {
	e      *logrus.Entry
	stream string
	// requests, if set, names the requests the worker is serving, for the
	// entry of a trace (Config.Requests).
	requests func() []string

	gathering atomic.Bool // trace != nil: its lines are exempt from the line limit
	mu        sync.Mutex
	trace     *trace
	traces    int        // traces started, to tell a stale gap timer
	tail      []tailLine // ring of recent lines, oldest first
}

// tailLine is a line kept for crash reports.
type tailLine struct {
	at   time.Time
	text string
}

// trace is a stack trace being gathered.
type trace struct {
	head  string
	text  strings.Builder
	lines int
	cut   bool
	reqs  []string
	n     int // workerLog.traces when it started
	timer *time.Timer
}

const (
	// traceGap ends a trace whose worker stopped writing without exiting.
	traceGap = 250 * time.Millisecond
	// maxTrace caps the text of one trace entry.
	maxTrace = 64 << 10
)

func (w *workerLog) sink() *lineSink { return &lineSink{emit: w.line} }

func (w *workerLog) line(b []byte) {
	if len(b) > 0 && b[0] == '{' {
		if lvl, msg, fields, ok := parseJSONLine(b); ok {
			short := msg
			if short == "" {
				short = sanitize(b)
			}
			w.mu.Lock()
			w.keepLocked(short)
			w.mu.Unlock()
			w.e.WithField("stream", w.stream).WithFields(fields).Log(lvl, msg)
			return
		}
	}
	if len(b) == 0 && !w.gathering.Load() {
		return // blank lines count only inside a trace
	}
	text := sanitize(b)
	var reqs []string
	starts := traceStart(text)
	if starts && !w.gathering.Load() && w.requests != nil {
		reqs = w.requests() // before the lock: it takes the pool's
	}
	w.mu.Lock()
	if t := w.trace; t != nil {
		if t.text.Len()+1+len(text) > maxTrace {
			t.cut = true
			w.mu.Unlock()
			w.endTrace(t.n)
			return
		}
		t.text.WriteByte('\n')
		t.text.WriteString(text)
		t.lines++
		if strings.HasPrefix(text, "panic: ") || strings.HasPrefix(text, "fatal error: ") {
			w.keepLocked(text) // what the runtime's report came to
		}
		t.timer.Reset(traceGap)
		w.mu.Unlock()
		return
	}
	w.keepLocked(text)
	if starts {
		w.traces++
		t := &trace{head: w.tail[len(w.tail)-1].text, lines: 1, reqs: reqs, n: w.traces}
		t.text.WriteString(text)
		n := w.traces
		t.timer = time.AfterFunc(traceGap, func() { w.endTrace(n) })
		w.trace = t
		w.gathering.Store(true)
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	w.e.WithField("stream", w.stream).Log(prefixLevel(text), text)
}

// keepLocked adds a line to the tail, capped.
func (w *workerLog) keepLocked(text string) {
	if len(w.tail) == tailLines {
		copy(w.tail, w.tail[1:])
		w.tail = w.tail[:tailLines-1]
	}
	if len(text) > maxTailLine {
		cut := maxTailLine
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut-- // keep the line valid UTF-8, as sanitize made it
		}
		text = text[:cut] + "..."
	}
	w.tail = append(w.tail, tailLine{at: time.Now(), text: text})
}

// endTrace logs trace number n, if it is still being gathered.
func (w *workerLog) endTrace(n int) {
	w.mu.Lock()
	t := w.trace
	if t == nil || t.n != n {
		w.mu.Unlock()
		return
	}
	w.trace = nil
	w.gathering.Store(false)
	w.mu.Unlock()
	t.timer.Stop()
	if t.cut {
		t.text.WriteString("\n[truncated]")
	}
	f := logrus.Fields{"stream": w.stream, "stack": t.text.String()}
	switch len(t.reqs) {
	case 0:
	case 1:
		f["req_id"] = t.reqs[0]
	default:
		f["req_ids"] = strings.Join(t.reqs, ",")
	}
	w.e.WithFields(f).Error(t.head)
}

// finish logs the trace being gathered: the stream ended.
func (w *workerLog) finish() {
	w.mu.Lock()
	t := w.trace
	w.mu.Unlock()
	if t != nil {
		w.endTrace(t.n)
	}
}

// traceStart reports whether line starts a stack trace: a Go panic or
// fatal error, the runtime's own report, a signal's dump (SIGQUIT: quit),
// a goroutine's stack, or a Node.js uncaught exception's frames.
func traceStart(line string) bool {
	switch {
	case strings.HasPrefix(line, "panic: "), strings.HasPrefix(line, "fatal error: "), strings.HasPrefix(line, "runtime: "):
		return true
	case strings.HasPrefix(line, "SIG"):
		i := strings.IndexByte(line, ':')
		return i > 3 && i < 12 && isUpper(line[3:i])
	case strings.HasPrefix(line, "goroutine "):
		rest := line[len("goroutine "):]
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		return i > 0 && strings.HasPrefix(rest[i:], " [")
	}
	return nodeThrowSite(line)
}

// nodeThrowSite reports whether line is the first line of Node.js's report
// of an uncaught exception: the file and line that threw ("/app/x.js:12").
func nodeThrowSite(line string) bool {
	i := strings.LastIndexByte(line, ':')
	if i < 0 || i == len(line)-1 || strings.ContainsAny(line, " \t") {
		return false
	}
	for _, c := range []byte(line[i+1:]) {
		if c < '0' || c > '9' {
			return false
		}
	}
	file := line[:i]
	return strings.HasSuffix(file, ".js") || strings.HasSuffix(file, ".mjs") || strings.HasSuffix(file, ".cjs") || strings.HasPrefix(file, "node:")
}

func isUpper(s string) bool {
	for i := range len(s) {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
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

// Tail returns copies of the lines read at or after since (every line
// kept if since is zero). A trace is kept as its first line, and its
// panic or fatal error if another line led it.
func (w *workerLog) Tail(since time.Time) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, l := range w.tail {
		if !l.at.Before(since) {
			out = append(out, l.text)
		}
	}
	return out
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

// sanitizeBlock is sanitize for a text of several lines: it keeps their
// line feeds.
func sanitizeBlock(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = sanitize([]byte(l))
	}
	return strings.Join(lines, "\n")
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
			if k == "stack" {
				v = sanitizeBlock(s) // the sdk's stack trace of a handler panic
			} else {
				v = sanitize([]byte(s))
			}
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
