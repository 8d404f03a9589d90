package admin_test

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/childproc/dispatcher/workers"
)

// chromium returns the path of a headless-capable Chromium, or skips.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium on this machine (.ci/run installs Debian's chromium package)")
	return ""
}

// headless runs Chromium on url with the given extra flags and returns its
// standard output.
func headless(t *testing.T, browser, url string, flags ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--hide-scrollbars", "--user-data-dir=" + t.TempDir(), "--window-size=1200,800",
	}, flags...)
	cmd := exec.CommandContext(ctx, browser, append(args, url)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(flags, " "), err, stderr.String())
	}
	return out
}

// TestStatusPageInBrowser renders the HTML status page in headless
// Chromium: the DOM it builds lists the worker, and the screenshot shows
// the table (its header row's background spans the table's width).
func TestStatusPageInBrowser(t *testing.T) {
	browser := chromium(t)
	f := newFixture(t, "crash", workers.Config{Size: 2})
	if code := f.get(t, "/ok"); code != 200 {
		t.Fatalf("GET /ok: %d", code)
	}
	srv := httptest.NewServer(f.admin)
	defer srv.Close()
	pids := f.pool.Workers()

	dom := string(headless(t, browser, srv.URL+"/status?format=html", "--dump-dom"))
	for _, want := range append([]string{`<table class="workers" data-function="fn">`, "<th>pid</th>", "idle"}, itoas(pids)...) {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM lacks %q:\n%s", want, dom)
		}
	}

	shot := filepath.Join(t.TempDir(), "status.png")
	headless(t, browser, srv.URL+"/status?format=html", "--screenshot="+shot)
	b, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	// The header cells are #eef1f5 (status.html); the table is at least
	// 40em wide, so a row of the screenshot holds a long run of that
	// colour, broken only by the 1px cell borders.
	header := color.RGBA{0xee, 0xf1, 0xf5, 0xff}
	if run := longestRun(img, header); run < 400 {
		t.Errorf("screenshot: the table header spans %d px, want >= 400 (screenshot %s)", run, shot)
		if dst := os.Getenv("STATUS_SCREENSHOT"); dst != "" {
			_ = os.WriteFile(dst, b, 0o644)
		}
	}
}

func itoas(ns []int) []string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = ">" + strconv.Itoa(n) + "<"
	}
	return s
}

// longestRun returns the widest span, in any row, of pixels of colour c,
// allowing gaps of up to 2 pixels (cell borders).
func longestRun(img image.Image, c color.RGBA) int {
	b := img.Bounds()
	best := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		start, gap := -1, 0
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if uint8(r>>8) == c.R && uint8(g>>8) == c.G && uint8(bl>>8) == c.B {
				if start < 0 {
					start = x
				}
				gap = 0
				best = max(best, x-start+1)
				continue
			}
			if start >= 0 {
				if gap++; gap > 2 {
					start, gap = -1, 0
				}
			}
		}
	}
	return best
}
