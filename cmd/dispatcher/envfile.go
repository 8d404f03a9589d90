package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/childproc/dispatcher/workers"
)

// maxEnvFile bounds an --env-file: it holds variables, not data.
const maxEnvFile = 1 << 20

// readEnvFile reads an --env-file: one KEY=VALUE per line, the value
// verbatim after the first = (no quoting, no expansion; a CR before the
// line's end is dropped); blank lines and lines whose first non-blank
// character is # are skipped. Errors name the file and line, never a
// value. A file that cannot be read is a usage error too (exit status 2).
func readEnvFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usageErrorf("--env-file %q: %v", path, errors.Unwrap(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxEnvFile+1))
	if err != nil {
		return nil, usageErrorf("--env-file %q: %v", path, err)
	}
	if len(data) > maxEnvFile {
		return nil, usageErrorf("--env-file %q: larger than 1M", path)
	}
	var env []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxEnvFile)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		trimmed := strings.TrimLeft(line, " \t")
		if trimmed == "" || trimmed[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(trimmed, "=")
		if !ok {
			return nil, usageErrorf("--env-file %s:%d: want KEY=VALUE (no = on the line)", path, n)
		}
		if err := workers.CheckEnvKey(k); err != nil {
			return nil, usageErrorf("--env-file %s:%d: %v", path, n, err)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, usageErrorf("--env-file %s:%d: the value of %s contains NUL", path, n, k)
		}
		env = append(env, k+"="+v)
	}
	if err := sc.Err(); err != nil {
		return nil, usageErrorf("--env-file %q: %v", path, err)
	}
	return env, nil
}

// envDigest identifies the variables read from env files in workersKey,
// without keeping their values there.
func envDigest(env []string) string {
	h := sha256.New()
	for _, kv := range env {
		fmt.Fprintf(h, "%d:%s", len(kv), kv)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
