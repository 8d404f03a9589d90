package sandbox_test

import (
	"os"
	"testing"

	"github.com/childproc/dispatcher/internal/testbin"
	_ "github.com/childproc/dispatcher/workers/sandbox/shim" // the shim of the sandboxes the tests make
)

// bins maps a test worker's name to its binary.
var bins map[string]string

func TestMain(m *testing.M) {
	waitForParent()
	os.Exit(testbin.Run(m, &bins, "testdata/workers/hostile", "testdata/workers/hello"))
}
