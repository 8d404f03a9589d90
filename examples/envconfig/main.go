// Command envconfig reads its configuration from environment variables once,
// at start, and refuses to start with a bad one. A dispatcher gives its
// workers a minimal environment (PATH, and LANG and TZ if set), never its
// own, so each value is passed explicitly: --env sets one, --pass-env copies
// one from the dispatcher's environment (for secrets kept out of the command
// line):
//
//	API_TOKEN=s3cret bin/dispatcher --workers bin/envconfig \
//		--env GREETING=Bonjour --env MAX_NAME_LEN=20 --pass-env API_TOKEN
//	curl -H 'Authorization: Bearer s3cret' '127.0.0.1:8080/greet?name=Ada'
//
// GREETING defaults to "Hello", MAX_NAME_LEN to 64; API_TOKEN is required.
// A missing or invalid value makes the worker print why on stderr and exit
// before serving: the dispatcher then fails to start and shows that line,
// rather than serving with a broken configuration.
package main

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/childproc/dispatcher/sdk"
)

// Config is the worker's configuration.
type Config struct {
	Greeting   string
	MaxNameLen int
	APIToken   string
}

// loadConfig reads the configuration through getenv (os.Getenv in main).
func loadConfig(getenv func(string) string) (Config, error) {
	c := Config{Greeting: "Hello", MaxNameLen: 64, APIToken: getenv("API_TOKEN")}
	if v := getenv("GREETING"); v != "" {
		c.Greeting = v
	}
	if v := getenv("MAX_NAME_LEN"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return c, fmt.Errorf("MAX_NAME_LEN=%q: want a positive number", v)
		}
		c.MaxNameLen = n
	}
	if c.APIToken == "" {
		return c, errors.New("API_TOKEN is required: pass it with dispatcher --pass-env API_TOKEN")
	}
	return c, nil
}

func main() {
	cfg, err := loadConfig(os.Getenv)
	if err != nil {
		// Stderr, not stdout: stdout's first line is the handshake.
		fmt.Fprintln(os.Stderr, "envconfig:", err)
		os.Exit(1)
	}
	sdk.Serve(handler(cfg))
}

func handler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /greet", func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(cfg.APIToken)) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		name := r.URL.Query().Get("name")
		if name == "" || utf8.RuneCountInString(name) > cfg.MaxNameLen {
			http.Error(w, fmt.Sprintf("name: want 1-%d characters", cfg.MaxNameLen), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s, %s!\n", cfg.Greeting, name)
	})
	return mux
}
