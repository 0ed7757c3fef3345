package cli

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine running, but
// tableflip's: one upgrader per process (internal/upgrade), made by the
// first serve and kept for the process's life by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/cloudflare/tableflip.(*Upgrader).run"))
}
