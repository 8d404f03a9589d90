package dispatcher

import (
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"
)

// accessLog writes the access log: one info entry "request" per request,
// through the Server's Logger.
//
// When that Logger writes to a LogWriter, has no hooks and formats with
// logrus's TextFormatter or JSONFormatter in their plain forms, the line is
// built here, in exactly the bytes that formatter would produce, without
// the fields map and the formatting logrus does per entry, and handed to
// the LogWriter's buffer. Otherwise the entry goes through logrus.
type accessLog struct {
	log   *logrus.Entry
	query bool // log the query string

	out     *LogWriter // nil: through logrus
	json    bool       // JSONFormatter, else TextFormatter
	noHTML  bool       // JSONFormatter.DisableHTMLEscape
	noTime  bool       // DisableTimestamp
	timeFmt string
	extra   []field // the Logger entry's own fields, sorted by key
}

// field is one key and value of an access-log entry. Strings are left out
// of the entry when empty.
type field struct {
	key  string
	kind byte // 's' string, 'i' integer, 'f' float
	s    string
	i    int64
	f    float64
}

// Keys of the access log, sorted, as both formatters order them.
const (
	keyBytes      = "bytes"
	keyClient     = "client"
	keyDuration   = "duration_ms"
	keyHost       = "host"
	keyMethod     = "method"
	keyPath       = "path"
	keyPID        = "pid"
	keyQuery      = "query"
	keyRequestID  = "req_id"
	keyStatus     = "status"
	keyUserAgent  = "user_agent"
	accessMessage = "request"
)

var accessKeys = [...]string{keyBytes, keyClient, keyDuration, keyHost, keyMethod, keyPath, keyPID, keyQuery, keyRequestID, keyStatus, keyUserAgent}

func newAccessLog(log *logrus.Entry, query bool) *accessLog {
	a := &accessLog{log: log, query: query}
	out, ok := log.Logger.Out.(*LogWriter)
	if !ok || len(log.Logger.Hooks) > 0 || log.Logger.ReportCaller || !log.Time.IsZero() {
		return a
	}
	for k, v := range log.Data {
		s, ok := v.(string)
		if !ok || slices.Contains(accessKeys[:], k) || k == logrus.FieldKeyTime || k == logrus.FieldKeyMsg ||
			k == logrus.FieldKeyLevel || k == logrus.FieldKeyLogrusError || strings.HasPrefix(k, "fields.") {
			return a
		}
		a.extra = append(a.extra, field{key: k, kind: 's', s: s})
	}
	slices.SortFunc(a.extra, func(x, y field) int { return strings.Compare(x.key, y.key) })
	formatter := log.Logger.Formatter
	if f, ok := formatter.(*TextFormatter); ok {
		formatter = &f.TextFormatter // the same for an access line
	}
	switch f := formatter.(type) {
	case *logrus.TextFormatter:
		if f.ForceColors || f.EnvironmentOverrideColors || f.DisableSorting || f.SortingFunc != nil ||
			f.ForceQuote || f.DisableQuote || f.QuoteEmptyFields || len(f.FieldMap) > 0 {
			return a
		}
		a.noTime, a.timeFmt = f.DisableTimestamp, f.TimestampFormat
	case *logrus.JSONFormatter:
		if f.DataKey != "" || f.PrettyPrint || len(f.FieldMap) > 0 {
			return a
		}
		a.json, a.noHTML, a.noTime, a.timeFmt = true, f.DisableHTMLEscape, f.DisableTimestamp, f.TimestampFormat
	default:
		return a
	}
	if a.timeFmt == "" {
		a.timeFmt = time.RFC3339 // logrus's default
	}
	a.out = out
	return a
}

// fields returns the entry's fields, sorted by key, in buf.
func (a *accessLog) fields(buf *[len(accessKeys)]field, r *http.Request, in *info, client string, d time.Duration) []field {
	query := ""
	if a.query {
		query = r.URL.RawQuery
	}
	*buf = [...]field{
		{key: keyBytes, kind: 'i', i: in.bytes},
		{key: keyClient, kind: 's', s: client},
		{key: keyDuration, kind: 'f', f: float64(d.Microseconds()) / 1000},
		{key: keyHost, kind: 's', s: r.Host},
		{key: keyMethod, kind: 's', s: r.Method},
		{key: keyPath, kind: 's', s: r.URL.Path},
		{key: keyPID, kind: 'i', i: int64(in.pid)},
		{key: keyQuery, kind: 's', s: query},
		{key: keyRequestID, kind: 's', s: in.id},
		{key: keyStatus, kind: 'i', i: int64(in.status)},
		{key: keyUserAgent, kind: 's', s: r.Header.Get("User-Agent")},
	}
	return buf[:]
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// write logs one request, served to client in d.
func (a *accessLog) write(r *http.Request, in *info, client string, d time.Duration) {
	var buf [len(accessKeys)]field
	fs := a.fields(&buf, r, in, client, d)
	if a.out == nil {
		a.log.WithFields(logrusFields(fs)).Info(accessMessage)
		return
	}
	bp := linePool.Get().(*[]byte)
	line := a.appendLine((*bp)[:0], time.Now(), fs)
	a.out.buffered(line)
	*bp = line
	linePool.Put(bp)
}

// logrusFields returns fs as logrus fields, with the types the access log
// always had: ints, and bytes as an int64.
func logrusFields(fs []field) logrus.Fields {
	data := make(logrus.Fields, len(fs))
	for _, f := range fs {
		switch {
		case f.kind == 's' && f.s != "":
			data[f.key] = f.s
		case f.kind == 'f':
			data[f.key] = f.f
		case f.key == keyBytes:
			data[f.key] = f.i
		case f.kind == 'i':
			data[f.key] = int(f.i)
		}
	}
	return data
}

// appendLine appends the entry's line, as the Logger's formatter writes it.
func (a *accessLog) appendLine(b []byte, now time.Time, fs []field) []byte {
	var ts [64]byte
	var t []byte
	if !a.noTime {
		t = now.AppendFormat(ts[:0], a.timeFmt)
	}
	if a.json {
		return a.appendJSON(b, t, fs)
	}
	if t != nil {
		b = append(b, "time="...)
		b = appendText(b, t)
		b = append(b, ' ')
	}
	b = append(b, "level=info msg="...)
	b = append(b, accessMessage...)
	a.each(fs, func(f field) {
		b = append(b, ' ')
		b = append(b, f.key...)
		b = append(b, '=')
		switch f.kind {
		case 's':
			b = appendText(b, f.s)
		case 'i':
			b = strconv.AppendInt(b, f.i, 10)
		case 'f':
			b = strconv.AppendFloat(b, f.f, 'g', -1, 64)
		}
	})
	return append(b, '\n')
}

// appendJSON appends the line of logrus's JSONFormatter: one object, keys
// sorted (encoding/json sorts a map's keys), with "level", "msg" and
// "time" among them.
func (a *accessLog) appendJSON(b, t []byte, fs []field) []byte {
	b = append(b, '{')
	first := true
	key := func(k string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, k, !a.noHTML)
		b = append(b, ':')
	}
	// The fixed keys, in their sorted places: "level" and "msg" fall
	// between the fields' keys, "time" after them unless a field sorts
	// later.
	fixed := [...]string{logrus.FieldKeyLevel, logrus.FieldKeyMsg, logrus.FieldKeyTime}
	nfixed := len(fixed)
	if t == nil {
		nfixed--
	}
	next := 0
	flushFixed := func(before string) {
		for ; next < nfixed && (before == "" || fixed[next] < before); next++ {
			key(fixed[next])
			switch fixed[next] {
			case logrus.FieldKeyLevel:
				b = append(b, `"info"`...)
			case logrus.FieldKeyMsg:
				b = appendJSONString(b, accessMessage, !a.noHTML)
			default:
				b = appendJSONString(b, t, !a.noHTML)
			}
		}
	}
	a.each(fs, func(f field) {
		flushFixed(f.key)
		key(f.key)
		switch f.kind {
		case 's':
			b = appendJSONString(b, f.s, !a.noHTML)
		case 'i':
			b = strconv.AppendInt(b, f.i, 10)
		case 'f':
			b = appendJSONFloat(b, f.f)
		}
	})
	flushFixed("")
	return append(b, '}', '\n')
}

// each calls fn for the entry's fields and the Logger entry's own, merged
// in key order, leaving out empty strings.
func (a *accessLog) each(fs []field, fn func(field)) {
	i, j := 0, 0
	for i < len(fs) || j < len(a.extra) {
		var f field
		if j == len(a.extra) || (i < len(fs) && fs[i].key < a.extra[j].key) {
			f = fs[i]
			i++
		} else {
			f = a.extra[j]
			j++
		}
		if f.kind == 's' && f.s == "" {
			continue
		}
		fn(f)
	}
}

// appendText appends a value as logrus's TextFormatter does: as is if every
// byte is safe, else quoted.
func appendText[T string | []byte](b []byte, s T) []byte {
	for i := 0; i < len(s); i++ {
		if !textSafe(s[i]) {
			return strconv.AppendQuote(b, string(s))
		}
	}
	return append(b, s...)
}

func textSafe(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '/' || c == '@' || c == '^' || c == '+'
}

// appendJSONString appends s as encoding/json encodes a string.
func appendJSONString[T string | []byte](b []byte, s T, escapeHTML bool) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && (!escapeHTML || c != '<' && c != '>' && c != '&') {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendJSONFloat appends f as encoding/json encodes a float64.
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 to e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// clientAddr returns the client's IP: the peer's, or, when the peer is a
// trusted proxy, the last address in X-Forwarded-For that is not one (the
// leftmost if all are).
func (s *Server) clientAddr(r *http.Request) string {
	peer, text := peerAddr(r.RemoteAddr)
	if !s.trusted(peer) {
		return text
	}
	vs := r.Header[headerXFF]
	for i := len(vs) - 1; i >= 0; i-- {
		v := vs[i]
		for v != "" {
			k := strings.LastIndexByte(v, ',')
			a := strings.TrimSpace(v[k+1:])
			v = v[:max(k, 0)]
			if a == "" {
				continue
			}
			text = a
			if ip, err := netip.ParseAddr(a); err != nil || !s.trusted(ip.Unmap()) {
				return text
			}
		}
	}
	return text
}
