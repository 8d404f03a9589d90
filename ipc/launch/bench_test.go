package launch

import (
	"bytes"
	"io"
	"testing"

	"github.com/sirupsen/logrus"
)

// benchLines is a worker's ordinary output: plain lines and sdk records.
var benchLines = []string{
	"GET /api/items 200 1.234ms",
	`{"@level":"info","@message":"served","@timestamp":"2026-12-07T22:00:00.000000Z","request_id":"abc123","status":200}`,
	"[DEBUG] cache hit for key user:42",
}

// benchLog returns a worker log that formats its entries as the
// dispatcher's text log does and discards them.
func benchLog() *workerLog {
	l := logrus.New()
	l.Out = io.Discard
	l.Formatter = &logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02T15:04:05.000Z07:00"}
	return &workerLog{e: logrus.NewEntry(l).WithField("worker", "bench"), stream: "stderr"}
}

// BenchmarkWorkerLogLine is the cost of one ordinary line, from the bytes
// read off the worker's pipe to the formatted entry: written one line at a
// time (perline), or in the pipe-sized reads of a busy worker (buffered).
func BenchmarkWorkerLogLine(b *testing.B) {
	for _, line := range benchLines {
		name := line[:3]
		b.Run(name+"/perline", func(b *testing.B) {
			s := benchLog().sink()
			p := []byte(line + "\n")
			b.ReportAllocs()
			for b.Loop() {
				s.Write(p)
			}
		})
		b.Run(name+"/perline-limited", func(b *testing.B) {
			// As a worker's sink is: within a limit it never reaches.
			s := benchLog().limitedSink(newOutputLimit(-1, 1<<62, func(int, int) {}))
			p := []byte(line + "\n")
			b.ReportAllocs()
			for b.Loop() {
				s.Write(p)
			}
		})
		b.Run(name+"/buffered", func(b *testing.B) {
			s := benchLog().sink()
			per := 32 << 10 / (len(line) + 1)
			buf := bytes.Repeat([]byte(line+"\n"), per)
			b.ReportAllocs()
			for b.Loop() {
				s.Write(buf)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*per), "ns/line")
		})
	}
}
