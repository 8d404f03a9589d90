package sandbox_test

import (
	"context"
	"io"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/childproc/dispatcher/ipc"
	"github.com/childproc/dispatcher/workers"
	"github.com/childproc/dispatcher/workers/sandbox"
	"github.com/sirupsen/logrus"
)

// layers are the confinements whose cost the benchmarks compare, each
// adding to the one before.
var layers = []struct {
	name string
	opts *sandbox.Options // nil: no sandbox at all
}{
	{"none", nil},
	{"default", &sandbox.Options{}},
	// The dispatcher's default where the machine allows it (--sandbox=on).
	{"sandbox", &sandbox.Options{Namespaces: true, PidsLimit: sandbox.DefaultPidsLimit}},
	{"user", &sandbox.Options{User: "65534:65534"}},
	{"limits", &sandbox.Options{User: "65534:65534", MemoryLimit: 256 << 20, PidsLimit: 256, CPULimit: 1, NoFile: 1024}},
	{"namespaces", &sandbox.Options{User: "65534:65534", MemoryLimit: 256 << 20, PidsLimit: 256, CPULimit: 1, NoFile: 1024, Namespaces: true}},
	{"checksum", &sandbox.Options{User: "65534:65534", MemoryLimit: 256 << 20, PidsLimit: 256, CPULimit: 1, NoFile: 1024, Namespaces: true, Checksum: "sha256:"}},
}

// benchSandbox returns the sandbox of a layer (nil for none).
func benchSandbox(b *testing.B, opts *sandbox.Options) *sandbox.Sandbox {
	b.Helper()
	if opts == nil {
		return nil
	}
	if opts.User != "" && os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	o := *opts
	if o.Checksum == "sha256:" {
		data, err := os.ReadFile(bins["hello"])
		if err != nil {
			b.Fatal(err)
		}
		o.Checksum += sha256Hex(data)
	}
	sb, err := sandbox.New(bins["hello"], o)
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { sb.Close() })
	return sb
}

// startTimes collects the start_ms of "worker started" log entries.
type startTimes struct {
	mu sync.Mutex
	ms []float64
}

func (s *startTimes) Levels() []logrus.Level { return logrus.AllLevels }
func (s *startTimes) Fire(e *logrus.Entry) error {
	if v, ok := e.Data["start_ms"].(float64); ok && e.Message == "worker started" {
		s.mu.Lock()
		s.ms = append(s.ms, v)
		s.mu.Unlock()
	}
	return nil
}

func (s *startTimes) median() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ms) == 0 {
		return 0
	}
	v := slices.Clone(s.ms)
	slices.Sort(v)
	return v[len(v)/2]
}

func benchPool(b *testing.B, sb *sandbox.Sandbox, size int, hook logrus.Hook) (*workers.Pool, func()) {
	b.Helper()
	sock, err := os.MkdirTemp("", "sbb")
	if err != nil {
		b.Fatal(err)
	}
	os.Chmod(sock, 0o711)
	logger := logrus.New()
	logger.Out = io.Discard
	logger.SetLevel(logrus.DebugLevel)
	if hook != nil {
		logger.AddHook(hook)
	}
	cfg := workers.Config{Path: bins["hello"], Size: size, SocketDir: sock, Logger: logrus.NewEntry(logger)}
	if sb != nil {
		cfg.Sandbox = sb
	}
	p, err := workers.NewPool(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	return p, func() {
		p.Close(context.Background())
		os.RemoveAll(sock)
	}
}

// BenchmarkSpawn measures a worker's start (shim, confinement, exec,
// handshake, first pings): the start-ms metric is the median of the pool's
// own measure of it; ns/op includes the pool's setup and graceful stop.
func BenchmarkSpawn(b *testing.B) {
	for _, l := range layers {
		b.Run(l.name, func(b *testing.B) {
			sb := benchSandbox(b, l.opts)
			times := &startTimes{}
			for b.Loop() {
				_, stop := benchPool(b, sb, 1, times)
				stop()
			}
			b.ReportMetric(times.median(), "start-ms")
		})
	}
}

// BenchmarkRequest measures small requests through a pool of two confined
// workers, from two goroutines.
func BenchmarkRequest(b *testing.B) {
	for _, l := range layers {
		b.Run(l.name, func(b *testing.B) {
			p, stop := benchPool(b, benchSandbox(b, l.opts), 2, nil)
			defer stop()
			b.SetParallelism(1)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req := &ipc.Request{Method: "GET", URI: "/", Proto: "HTTP/1.1", Host: "bench", EOF: true}
				for pb.Next() {
					resp, err := p.RoundTrip(context.Background(), req, nil)
					if err != nil {
						b.Error(err)
						return
					}
					for {
						if _, err := resp.Next(); err != nil {
							break
						}
					}
					resp.Close()
				}
			})
		})
	}
}
