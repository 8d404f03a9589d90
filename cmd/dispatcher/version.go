package main

import (
	"runtime"
	"runtime/debug"

	"github.com/childproc/dispatcher/admin"
)

// version, if set at build time (-ldflags "-X main.version=v1.2.0"), is
// the version --version, /status and dispatcher_build_info show. Unset,
// they show the module's version from the binary's build information: the
// release's for `go install ...@v1.2.0`, a pseudo-version from the
// checkout's VCS revision for a `go build` in a clone.
var version string

// readBuild describes this binary.
func readBuild() admin.BuildInfo {
	b := admin.BuildInfo{Version: version, GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return withDevel(b)
	}
	if b.Version == "" {
		b.Version = bi.Main.Version
	}
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if len(b.Revision) > 12 {
		b.Revision = b.Revision[:12]
	}
	if modified && b.Revision != "" {
		b.Revision += "+dirty"
	}
	return withDevel(b)
}

// withDevel names a build with no version: go build without VCS
// information says "(devel)".
func withDevel(b admin.BuildInfo) admin.BuildInfo {
	if b.Version == "" || b.Version == "(devel)" {
		b.Version = "devel"
	}
	return b
}
