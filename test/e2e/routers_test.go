package e2e

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// End-to-end tests of the five router plugins through the binary: one test
// per plugin, each with several backends.

// rtGreetFrom connects to addr from the local address ip (a 127.0.0.0/8
// address; "" for the default) and returns the open connection and the
// greeting of the backend it reached. The connection is closed when the
// test ends.
func rtGreetFrom(t *testing.T, ip, addr string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{Timeout: harness.Deadline}
	if ip != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ip, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(harness.Deadline))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("greeting from %s via %s: %v", ip, addr, err)
	}
	c.SetDeadline(time.Time{})
	return c, strings.TrimSuffix(line, "\n")
}

// rtGreet connects from ip, reads the greeting and closes.
func rtGreet(t *testing.T, ip, addr string) string {
	t.Helper()
	c, name := rtGreetFrom(t, ip, addr)
	c.Close()
	return name
}

// rtBackends renders [[rules.backends]] entries for echo servers, each
// with the weight given (1 when weights is shorter).
func rtBackends(es []*EchoServer, weights ...int) string {
	var b strings.Builder
	for i, e := range es {
		w := 1
		if i < len(weights) {
			w = weights[i]
		}
		fmt.Fprintf(&b, "[[rules.backends]]\nid = %q\naddress = %q\nweight = %d\n", e.Name, e.Addr, w)
	}
	return b.String()
}

// rtObserve puts the metrics and admin servers on free ports, as
// WriteConfig does, in configs that a test also rewrites for a reload.
const rtObserve = `
[metrics]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
`

func rtEchoes(t *testing.T, names ...string) []*EchoServer {
	es := make([]*EchoServer, len(names))
	for i, n := range names {
		es[i] = StartEcho(t, n)
	}
	return es
}

func TestRouterRoundRobinE2E(t *testing.T) {
	es := rtEchoes(t, "a", "b", "c")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[routers.rr]
plugin = "round_robin"
[[rules]]
name = "rr"
router = "rr"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
enabled = false
[[rules.backends]]
id = "c"
address = %q
`, port, es[0].Addr, es[1].Addr, es[2].Addr))
	Start(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	seq := ""
	for range 9 {
		seq += rtGreet(t, "", addr)
	}
	// Strict rotation over the enabled backends; b is skipped without a
	// second turn for anyone.
	if seq != "acacacaca" {
		t.Fatalf("sequence %q, want acacacaca", seq)
	}
}

func TestRouterWeightedE2E(t *testing.T) {
	es := rtEchoes(t, "a", "b", "c")
	smooth, random := harness.FreePort(t), harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
[routers.smooth]
plugin = "weighted"
config = { smooth_weighted = true }
[routers.wrandom]
plugin = "weighted"
config = { smooth_weighted = false }
[[rules]]
name = "smooth"
router = "smooth"
[rules.matcher]
type = "port"
port = %d
%s
[[rules]]
name = "random"
router = "wrandom"
[rules.matcher]
type = "port"
port = %d
%s`, smooth, rtBackends(es, 5, 1, 1), random, rtBackends(es[:2], 3, 1)))
	Start(t, cfg)

	// nginx's smooth weighted round robin: 5,1,1 spread out, cycle after cycle.
	seq := ""
	for range 14 {
		seq += rtGreet(t, "", fmt.Sprintf("127.0.0.1:%d", smooth))
	}
	if seq != "aabacaaaabacaa" {
		t.Fatalf("smooth weighted sequence %q, want aabacaa twice", seq)
	}

	// Weighted random, 3:1 over 400 connections: a's count within five
	// standard deviations of 300.
	count := map[string]int{}
	for range 400 {
		count[rtGreet(t, "", fmt.Sprintf("127.0.0.1:%d", random))]++
	}
	if sd := math.Sqrt(400 * 0.75 * 0.25); math.Abs(float64(count["a"])-300) > 5*sd || count["a"]+count["b"] != 400 {
		t.Fatalf("weighted random 3:1 over 400 connections: %v", count)
	}
}

// rtHashConfig is a config with a hash rule on portIP (client_ip) and one on
// portIPPort (client_ip_port) over the same backends; disabled names a
// backend to disable.
func rtHashConfig(es []*EchoServer, portIP, portIPPort int, disabled string) string {
	backends := rtBackends(es)
	if disabled != "" {
		backends = strings.Replace(backends, fmt.Sprintf("id = %q\n", disabled), fmt.Sprintf("id = %q\nenabled = false\n", disabled), 1)
	}
	return rtObserve + fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
watch_config = false
[routers.by_ip]
plugin = "hash"
config = { hash_key = "client_ip" }
[routers.by_ip_port]
plugin = "hash"
config = { hash_key = "client_ip_port" }
[[rules]]
name = "by_ip"
router = "by_ip"
[rules.matcher]
type = "port"
port = %d
%s
[[rules]]
name = "by_ip_port"
router = "by_ip_port"
[rules.matcher]
type = "port"
port = %d
%s`, portIP, backends, portIPPort, backends)
}

func TestRouterHashE2E(t *testing.T) {
	es := rtEchoes(t, "a", "b", "c", "d")
	portIP, portIPPort := harness.FreePort(t), harness.FreePort(t)
	cfgPath := harness.WriteConfig(t, rtHashConfig(es, portIP, portIPPort, ""))
	p := Start(t, cfgPath)
	byIP := fmt.Sprintf("127.0.0.1:%d", portIP)

	// 120 client addresses across 127.0.0.0/8, each connecting twice.
	clients := make([]string, 120)
	for i := range clients {
		clients[i] = fmt.Sprintf("127.0.%d.%d", i%3, 2+i)
	}
	where := map[string]string{}
	per := map[string]int{}
	for _, ip := range clients {
		first, second := rtGreet(t, ip, byIP), rtGreet(t, ip, byIP)
		if first != second {
			t.Fatalf("client %s went to %s, then to %s", ip, first, second)
		}
		where[ip] = first
		per[first]++
	}
	for _, e := range es {
		// 30 expected each; under 10 is over four standard deviations off.
		if per[e.Name] < 10 {
			t.Fatalf("120 clients spread %v over 4 backends", per)
		}
	}

	// client_ip_port: one address, many source ports, several backends.
	ports := map[string]bool{}
	for range 40 {
		ports[rtGreet(t, "127.0.0.200", fmt.Sprintf("127.0.0.1:%d", portIPPort))] = true
	}
	if len(ports) < 3 {
		t.Fatalf("client_ip_port: 40 connections from one address reached only %v", ports)
	}

	// A second proxy process with the same backends (a fleet member) sends
	// every client to the same backend: no per-process seed.
	portIP2, portIPPort2 := harness.FreePort(t), harness.FreePort(t)
	Start(t, harness.WriteConfig(t, rtHashConfig(es, portIP2, portIPPort2, "")))
	for _, ip := range clients {
		if got := rtGreet(t, ip, fmt.Sprintf("127.0.0.1:%d", portIP2)); got != where[ip] {
			t.Fatalf("client %s: %s in one process, %s in another", ip, where[ip], got)
		}
	}

	// Disable c by a reload: only c's clients move; back on, they return.
	reloadWith := func(disabled string, version int) {
		t.Helper()
		if err := rtWriteFile(cfgPath, rtHashConfig(es, portIP, portIPPort, disabled)); err != nil {
			t.Fatal(err)
		}
		p.Signal(syscall.SIGHUP)
		p.WaitLog("config reloaded", fmt.Sprintf("version=%d", version))
	}
	reloadWith("c", 2)
	movedTo := map[string]int{}
	for _, ip := range clients {
		got := rtGreet(t, ip, byIP)
		switch {
		case where[ip] == "c" && got == "c":
			t.Fatalf("client %s still reaches disabled c", ip)
		case where[ip] == "c":
			movedTo[got]++
		case got != where[ip]:
			t.Fatalf("client %s moved from %s to %s though only c was disabled", ip, where[ip], got)
		}
	}
	t.Logf("c's %d clients moved to %v", per["c"], movedTo)
	reloadWith("", 3)
	for _, ip := range clients {
		if got := rtGreet(t, ip, byIP); got != where[ip] {
			t.Fatalf("c back: client %s reaches %s, before %s", ip, got, where[ip])
		}
	}
}

func TestRouterLeastConnectionsE2E(t *testing.T) {
	es := rtEchoes(t, "a", "b", "c")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[[rules]]
name = "lc"
router = "least_connections"
%s`, port, rtBackends(es, 1, 2, 1)))
	Start(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// Connections held open: each goes to the fewest open per unit of
	// weight, equals in turn. Round robin would give 3/3/2, random anything.
	seq := ""
	for range 8 {
		_, name := rtGreetFrom(t, "", addr)
		seq += name
	}
	if seq != "abcbcabb" {
		t.Fatalf("sequence %q with connections held, want abcbcabb (2/4/2 for weights 1/2/1)", seq)
	}
}

func TestRouterRandomE2E(t *testing.T) {
	es := rtEchoes(t, "a", "b", "c")
	uniform, p2c := harness.FreePort(t), harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
[routers.p2c]
plugin = "random"
config = { choices = 2 }
[[rules]]
name = "random"
router = "random"
[rules.matcher]
type = "port"
port = %d
%s
[[rules]]
name = "p2c"
router = "p2c"
[rules.matcher]
type = "port"
port = %d
%s`, uniform, rtBackends(es), p2c, rtBackends(es[:2])))
	Start(t, cfg)

	count := map[string]int{}
	for range 300 {
		count[rtGreet(t, "", fmt.Sprintf("127.0.0.1:%d", uniform))]++
	}
	sd := math.Sqrt(300 * (1.0 / 3) * (2.0 / 3))
	for _, e := range es {
		if math.Abs(float64(count[e.Name])-100) > 5*sd {
			t.Fatalf("random over 300 connections: %v", count)
		}
	}

	// Power of two choices over two backends draws both every time, so
	// held connections stay within one of each other.
	held := map[string]int{}
	for i := range 20 {
		_, name := rtGreetFrom(t, "", fmt.Sprintf("127.0.0.1:%d", p2c))
		held[name]++
		if d := held["a"] - held["b"]; d > 1 || d < -1 {
			t.Fatalf("after %d held connections: %v", i+1, held)
		}
	}
}

// rtWriteFile replaces the config at path in one step (write a temporary
// file beside it, rename it over), so that a reader never sees half of it.
func rtWriteFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Bad plugin settings are validation errors naming the file, line, router,
// key and what is allowed; every one is reported.
func TestRouterConfigErrorsE2E(t *testing.T) {
	cfg := harness.WriteConfig(t, `
[server]
tcp_bind = "127.0.0.1:0"
[routers.w]
plugin = "weighted"
config = { smooth_weighted = "yes" }
[routers.h]
plugin = "hash"
config = { hash_key = "cookie", bounded_load = 0.5 }
[routers.r]
plugin = "random"
config = { choices = 3 }
[routers.lc]
plugin = "least_connections"
config = { weighted = true }
[[rules]]
name = "r"
router = "h"
[[rules.backends]]
id = "a"
address = "127.0.0.1:9"
`)
	_, stderr, code := Run(t, "--validate", "-c", cfg)
	if code != 1 {
		t.Fatalf("--validate exit code %d, want 1; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		`config.toml:6: routers.w.config.smooth_weighted: router "w" (plugin weighted): want true or false, got "yes"`,
		`config.toml:9: routers.h.config.hash_key: router "h" (plugin hash): want one of ["client_ip" "client_ip_port" "sni"], got "cookie"`,
		`config.toml:9: routers.h.config.bounded_load: router "h" (plugin hash): want 0 (off) or a factor from 1 to 100`,
		`config.toml:12: routers.r.config.choices: router "r" (plugin random): want an integer from 1 to 2, got 3`,
		`config.toml:15: routers.lc.config.weighted: router "lc" (plugin least_connections): unknown key (this plugin takes: none)`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("--validate output lacks %q; got:\n%s", want, stderr)
		}
	}
}
