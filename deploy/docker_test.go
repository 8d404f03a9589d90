package deploy_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dockerStages returns each FROM line of a Dockerfile: the image and the
// stage's name, and each stage's COPY lines.
type dockerStage struct {
	from, name string
	copies     []string
}

func dockerStages(t *testing.T, path string) []dockerStage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	from := regexp.MustCompile(`^FROM (\S+)(?: AS (\S+))?$`)
	var stages []dockerStage
	for _, l := range strings.Split(string(b), "\n") {
		if m := from.FindStringSubmatch(l); m != nil {
			stages = append(stages, dockerStage{from: m[1], name: m[2]})
		} else if strings.HasPrefix(l, "COPY ") && len(stages) > 0 {
			stages[len(stages)-1].copies = append(stages[len(stages)-1].copies, l)
		}
	}
	return stages
}

// The image recipes: the dispatcher alone is a target to build a handler
// built elsewhere on (handler.Dockerfile), the default target adds a
// handler of this repository, and both put the worker where the CMD
// expects it. They name no image but the Go toolchain's, the distroless
// base and their own stages.
func TestDockerfiles(t *testing.T) {
	stages := dockerStages(t, "Dockerfile")
	byName := map[string]dockerStage{}
	for _, s := range stages {
		byName[s.name] = s
	}
	base, ok := byName["dispatcher"]
	if !ok {
		t.Fatalf("Dockerfile: no stage \"dispatcher\" (the base for handlers built elsewhere): %v", stages)
	}
	for _, c := range base.copies {
		if strings.Contains(c, "handler") {
			t.Errorf("Dockerfile: the dispatcher stage copies a handler: %s", c)
		}
	}
	last := stages[len(stages)-1]
	if last.from != "dispatcher" || !slices.ContainsFunc(last.copies, func(c string) bool { return strings.HasSuffix(c, " /app/bin/handler") }) {
		t.Errorf("Dockerfile: the default (last) stage must add /app/bin/handler to the dispatcher stage: %+v", last)
	}
	cmd := deployedCmdlines(t)["Dockerfile CMD"]
	if i := slices.Index(cmd, "--workers"); i < 0 || cmd[i+1] != "/app/bin/handler" {
		t.Errorf("Dockerfile CMD %q does not run /app/bin/handler", cmd)
	}

	handler := dockerStages(t, "handler.Dockerfile")
	if len(handler) != 1 || handler[0].from != "${DISPATCHER_IMAGE}" ||
		len(handler[0].copies) != 1 || !strings.HasSuffix(handler[0].copies[0], "${HANDLER_BINARY} /app/bin/handler") {
		t.Errorf("handler.Dockerfile: want one stage from ${DISPATCHER_IMAGE} copying ${HANDLER_BINARY} to /app/bin/handler: %+v", handler)
	}
	b, err := os.ReadFile("handler.Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	d, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "ARG DISPATCHER_IMAGE=dispatcher\n") || !strings.Contains(string(d), "--target dispatcher -t dispatcher .") {
		t.Error("handler.Dockerfile's default base must be the image deploy/Dockerfile's comment builds from its dispatcher target (-t dispatcher)")
	}

	known := map[string]bool{"golang:${GO_VERSION}-bookworm": true, "gcr.io/distroless/static-debian12:nonroot": true, "${DISPATCHER_IMAGE}": true}
	for _, s := range append(stages, handler...) {
		if !known[s.from] && byName[s.from].name == "" {
			t.Errorf("a Dockerfile builds on %q, neither a stage nor a known base image", s.from)
		}
	}
}
