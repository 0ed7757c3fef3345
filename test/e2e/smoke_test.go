package e2e

import (
	"fmt"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

func TestSmokeRoundRobin(t *testing.T) {
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[[rules]]
name = "r"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
`, port, a.Addr, b.Addr))
	Start(t, cfg)
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		name, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		seen[name]++
	}
	if seen["a"] != 5 || seen["b"] != 5 {
		t.Fatalf("round robin split %v, want 5/5", seen)
	}
}
