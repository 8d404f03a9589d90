// Package kubernetes_test builds every kustomization of deploy/kubernetes
// with kustomize itself (the library kubectl kustomize uses). It is a
// module of its own so that kustomize's dependencies stay out of the
// dispatcher's module; run it with `go test ./...` in this directory
// (.ci/run does).
package kubernetes_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kustomizations lists the directories holding a kustomization.yaml.
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.Dir(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

func TestEveryKustomizationBuilds(t *testing.T) {
	dirs := kustomizations(t)
	if !slices.Contains(dirs, "base") || !slices.Contains(dirs, "sandbox") {
		t.Fatalf("kustomizations %v, want base and sandbox among them", dirs)
	}
	for _, dir := range dirs {
		t.Run(dir, func(t *testing.T) {
			abs, err := filepath.Abs(dir)
			if err != nil {
				t.Fatal(err)
			}
			k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
			res, err := k.Run(filesys.MakeFsOnDisk(), abs)
			if err != nil {
				t.Fatalf("kustomize build %s: %v", dir, err)
			}
			kinds := map[string]int{}
			for _, r := range res.Resources() {
				kinds[r.GetKind()]++
			}
			for _, kind := range []string{"Deployment", "Service", "PodDisruptionBudget"} {
				if kinds[kind] != 1 {
					t.Errorf("%s: %d %s, want 1 (all: %v)", dir, kinds[kind], kind, kinds)
				}
			}
			out, err := res.AsYaml()
			if err != nil {
				t.Fatal(err)
			}
			if sandboxed := strings.Contains(string(out), "- --sandbox\n"); sandboxed != (dir == "sandbox") {
				t.Errorf("%s: --sandbox in the Deployment's args: %v", dir, sandboxed)
			}
		})
	}
}
