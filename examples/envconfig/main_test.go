package main

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/childproc/dispatcher/sdk/sdktest"
)

func greet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// Options.Env passes values as the dispatcher's --env and --pass-env do.
func TestConfigFromEnvironment(t *testing.T) {
	bin := sdktest.Build(t, ".")
	t.Run("configured", func(t *testing.T) {
		srv := sdktest.Start(t, bin, sdktest.Options{Env: []string{"GREETING=Bonjour", "MAX_NAME_LEN=5", "API_TOKEN=s3cret"}})
		tests := []struct {
			name, query, token string
			status             int
			body               string
		}{
			{"greets", "?name=Ada", "s3cret", 200, "Bonjour, Ada!\n"},
			{"name limit", "?name=Grace", "s3cret", 200, "Bonjour, Grace!\n"},
			{"name too long", "?name=Hopper", "s3cret", 400, "name: want 1-5 characters\n"},
			{"wrong token", "?name=Ada", "guess", 401, "unauthorized\n"},
			{"no token", "?name=Ada", "", 401, "unauthorized\n"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if status, body := greet(t, srv.URL+"/greet"+tc.query, tc.token); status != tc.status || body != tc.body {
					t.Errorf("%d %q, want %d %q", status, body, tc.status, tc.body)
				}
			})
		}
	})
	t.Run("defaults", func(t *testing.T) {
		srv := sdktest.Start(t, bin, sdktest.Options{Env: []string{"API_TOKEN=t"}})
		if status, body := greet(t, srv.URL+"/greet?name=Ada", "t"); status != 200 || body != "Hello, Ada!\n" {
			t.Errorf("%d %q", status, body)
		}
	})
}

// A bad configuration stops the worker before it serves; the start error
// carries its explanation.
func TestBadConfigStopsTheStart(t *testing.T) {
	bin := sdktest.Build(t, ".")
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"token missing", nil, "API_TOKEN is required"},
		{"bad number", []string{"API_TOKEN=t", "MAX_NAME_LEN=lots"}, `MAX_NAME_LEN="lots": want a positive number`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := sdktest.NewServer(bin, sdktest.Options{Env: tc.env})
			if err == nil {
				srv.Close()
				t.Fatal("the worker started")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "exited with status 1") {
				t.Errorf("start error %q lacks %q and the exit status", err, tc.want)
			}
		})
	}
}
