//go:build unix

package engine

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/fdlimit"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func descriptorConfig(t *testing.T, backend string) string {
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
udp_bind = "127.0.0.1:0"
max_connections = 1000
watch_config = false
[health_check]
enabled = false
[metrics]
enabled = false
[admin]
bind = ""
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = %[1]q
[[rules]]
name = "port"
[rules.matcher]
type = "port"
port = %[2]d
[[rules.backends]]
id = "a"
address = %[1]q
[[rules]]
name = "off"
enabled = false
[rules.matcher]
type = "port"
port = %[3]d
[[rules.backends]]
id = "a"
address = %[1]q
[[rules]]
name = "dns"
protocol = "udp"
[[rules.backends]]
id = "a"
address = "127.0.0.1:53"
`, backend, freePort(t), freePort(t))
}

// TestDescriptorPlanIsALowerBound: the descriptors the plan counts for a
// config's listeners and event loops are what applying it opens, or fewer
// (so a capped max_connections is never below what the limit can hold);
// the disabled rule counts nothing.
func TestDescriptorPlanIsALowerBound(t *testing.T) {
	e, _ := newEngine(t)
	cfg := parse(t, descriptorConfig(t, echo(t, "a")))
	workers := e.Server().Workers()
	// 2 TCP listeners (the disabled rule binds nothing), 2 per TCP loop,
	// 3 per UDP loop; 5 for stdio and the runtime's poller.
	want := int64(5 + 2 + 2*workers + 3*min(workers, 16))
	if got := fixedDescriptors(cfg, workers); got != want {
		t.Fatalf("fixedDescriptors = %d with %d workers, want %d", got, workers, want)
	}
	before, err := fdlimit.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	after, err := fdlimit.Open()
	if err != nil {
		t.Fatal(err)
	}
	if opened := int64(after - before); opened < want-5 {
		t.Errorf("applying the config opened %d descriptors; the plan counts %d for it: not a lower bound", opened, want-5)
	}
	p := DescriptorPlan(cfg, workers)
	if p.Limit <= 0 || p.Fixed != want+fdlimit.Reserve(p.Limit) || p.Capped != 1000 {
		t.Errorf("DescriptorPlan = %+v; want the limit, fixed %d + the reserve, max_connections 1000 not capped", p, want)
	}
	if got := e.Server().MaxConnections(); got != 1000 {
		t.Errorf("the server runs with max_connections %d, want 1000", got)
	}
}

// TestMaxConnectionsCappedOnApply: under a descriptor limit that cannot
// give max_connections, Apply runs with the cap and logs both numbers.
func TestMaxConnectionsCappedOnApply(t *testing.T) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	low := rl
	low.Cur = 1024
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skip("cannot lower the descriptor limit: ", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	e, logs := newEngine(t)
	cfg := parse(t, descriptorConfig(t, echo(t, "a")))
	if _, err := e.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	p := DescriptorPlan(cfg, e.Server().Workers())
	if !p.IsCapped() || p.Limit != 1024 {
		t.Fatalf("plan under a limit of 1024: %+v", p)
	}
	if got := e.Server().MaxConnections(); got != int64(p.Capped) || got >= 512 {
		t.Errorf("the server runs with max_connections %d; want the cap %d", got, p.Capped)
	}
	for _, want := range []string{"server.max_connections capped", "max_connections=1000", "limit=1024", fmt.Sprintf("capped_at=%d", p.Capped)} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log does not say %q:\n%s", want, logs.String())
		}
	}
}
