package sandbox_test

import (
	"os"
	"testing"

	"github.com/childproc/dispatcher/internal/testbin"
	"github.com/childproc/dispatcher/workers/sandbox"
)

// bins maps a test worker's name to its binary.
var bins map[string]string

func TestMain(m *testing.M) {
	sandbox.Main() // this test binary is the shim of the sandboxes it makes
	waitForParent()
	os.Exit(testbin.Run(m, &bins, "testdata/workers/hostile", "testdata/workers/hello"))
}
