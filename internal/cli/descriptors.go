package cli

import (
	"fmt"
	"io"
	"runtime"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
)

// descriptorWarning prints, for --validate, the warning start-up logs
// when server.max_connections cannot be reached under this process's
// descriptor limit (engine.DescriptorPlan).
func descriptorWarning(cfg *config.Config, stderr io.Writer) {
	workers := cfg.Server.WorkerThreads
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if w := engine.DescriptorPlan(cfg, workers).Warning(); w != "" {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
}
