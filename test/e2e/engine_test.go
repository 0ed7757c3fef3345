package e2e

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestEngineChosen: [server] engine picks the connection engine, the log
// says which at start-up, traffic flows through it, and a reload that
// changes it says it needs a restart (the running engine stays).
func TestEngineChosen(t *testing.T) {
	a := StartEcho(t, "a")
	port := harness.FreePort(t)
	conf := func(engine string) string { return proxyConfig(port, a.Addr, fmt.Sprintf("engine = %q", engine)) }
	cfg := harness.WriteConfig(t, conf("goroutine"))
	p := Start(t, cfg)
	p.WaitLog("connection engine", "engine=goroutine")
	if name, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port)); err != nil || name != "a" {
		t.Fatalf("greeting through the goroutine engine: %q %v", name, err)
	}
	other := "auto"
	if runtime.GOOS == "linux" {
		other = "epoll"
	}
	from := p.NumLines()
	writeAtomic(t, cfg, conf(other))
	p.WaitLogFrom(from, "needs restart: server.engine")
	if name, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port)); err != nil || name != "a" {
		t.Fatalf("greeting after the reload: %q %v", name, err)
	}
}

// TestEngineInvalid: an unknown engine is a --validate error with the
// file and line.
func TestEngineInvalid(t *testing.T) {
	cfg := harness.WriteConfig(t, proxyConfig(harness.FreePort(t), "127.0.0.1:9", `engine = "threads"`))
	_, stderr, code := Run(t, "--validate", "-c", cfg)
	if code != 1 || !strings.Contains(stderr, "config.toml:4") || !strings.Contains(stderr, "server.engine") {
		t.Errorf("--validate of engine = \"threads\": exit %d, stderr:\n%s", code, stderr)
	}
}
