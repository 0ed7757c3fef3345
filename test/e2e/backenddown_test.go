package e2e

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// bdConfig has rule "pg" (backends a and b, on_backend_down = "close"
// over window) and rule "kept" (backend k at a's address, so one health
// check and one down for both, on_backend_down left at keep); withB false
// leaves b out.
func bdConfig(pgPort, keptPort int, a, b string, window time.Duration, withB bool) string {
	bBlock := ""
	if withB {
		bBlock = fmt.Sprintf("[[rules.backends]]\nid = \"b\"\naddress = %q\n", b)
	}
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[logging]
access_log = true
[health_check]
interval = "200ms"
timeout = "100ms"
retries = 1
passive_failures = 0

[[rules]]
name = "pg"
router = "round_robin"
on_backend_down = "close"
on_backend_down_window = %q
[[rules.backends]]
id = "a"
address = %q
%s
[[rules]]
name = "kept"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "k"
address = %q
`, pgPort, window.String(), a, bBlock, keptPort, a)
}

// bdWaitEOF reads each client until the proxy closes it, in goroutines.
func bdWaitEOF(t *testing.T, cs []*cnClient) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.c.SetReadDeadline(time.Now().Add(2 * harness.Deadline))
			buf := make([]byte, 64)
			for {
				if _, err := c.r.Read(buf); err != nil {
					if isTimeout(err) {
						t.Errorf("connection to %s: not closed", c.backend)
					}
					return
				}
			}
		}()
	}
	return &wg
}

// bdSpan returns the times of the access log lines of rule's backend's
// connections that ended backend_down, sorted.
func bdTimes(t *testing.T, p *harness.Proxy, backend string) []time.Time {
	var ts []time.Time
	for _, l := range p.Lines() {
		if harness.ContainsAll(l, []string{"connection closed", "rule=pg", "backend=" + backend + " ", "end=backend_down"}) {
			ts = append(ts, lineTime(t, l))
		}
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	return ts
}

// TestOnBackendDownClose: with on_backend_down = "close", a backend
// marked down by its health check has its 100 open connections closed,
// spread over the window rather than at one instant, while the 100 on
// the other backend and those of a "keep" rule on the same address stay
// open; a reload that removes the other backend closes its 100 the same
// way. The closes are counted as end="backend_down".
func TestOnBackendDownClose(t *testing.T) {
	const n, window = 100, 3 * time.Second
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	pgPort, keptPort := harness.FreePort(t), harness.FreePort(t)
	cfg := harness.WriteConfig(t, bdConfig(pgPort, keptPort, ea.Addr, eb.Addr, window, true))
	p := Start(t, cfg)
	pg, kept := fmt.Sprintf("127.0.0.1:%d", pgPort), fmt.Sprintf("127.0.0.1:%d", keptPort)

	var onA, onB, onK []*cnClient
	for len(onA) < n || len(onB) < n {
		c := cnDial(t, pg, nil)
		switch c.backend {
		case "a":
			onA = append(onA, c)
		case "b":
			onB = append(onB, c)
		}
	}
	for range 5 {
		onK = append(onK, cnDial(t, kept, nil))
	}
	aDone := bdWaitEOF(t, onA)

	// a stops accepting: its check fails and marks it down.
	ea.Close()
	down := p.WaitLog("backend down", "address="+ea.Addr)
	p.WaitLog("on_backend_down: closing the backend's connections", "backend=a", "why=\"marked down\"", fmt.Sprintf("connections=%d", n))
	aDone.Wait()
	harness.Eventually(t, "the access log lines of a's closes", func() bool { return len(bdTimes(t, p, "a")) >= n })
	ts := bdTimes(t, p, "a")
	if len(ts) != n {
		t.Fatalf("%d connections to a ended backend_down, want %d", len(ts), n)
	}
	downAt := lineTime(t, down)
	first, last := ts[0].Sub(downAt), ts[n-1].Sub(downAt)
	t.Logf("closed from %v to %v after the down (window %v)", first.Round(time.Millisecond), last.Round(time.Millisecond), window)
	// The last slot starts at (n-1)/n of the window: never earlier.
	if last < window*(n-1)/n {
		t.Errorf("the last close came %v after the down, before the window's last slot", last)
	}
	if last-first < window/3 {
		t.Errorf("closes spread over %v only, want a good part of the %v window", last-first, window)
	}
	for _, c := range onB {
		c.echo(t, "b stays")
	}
	for _, c := range onK {
		c.echo(t, "keep stays")
	}
	harness.WaitMetrics(t, p.MetricsURL(), "the closes counted", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_connections_ended_total", harness.Labels{"rule": "pg", "backend": "a", "end": "backend_down"}) == n
	})

	// A reload that removes b closes its connections the same way.
	bDone := bdWaitEOF(t, onB)
	if err := os.WriteFile(cfg, []byte(bdConfig(pgPort, keptPort, ea.Addr, eb.Addr, window, false)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.WaitLog("on_backend_down: closing the backend's connections", "backend=b", "why=removed", fmt.Sprintf("connections=%d", n))
	bDone.Wait()
	harness.Eventually(t, "the access log lines of b's closes", func() bool { return len(bdTimes(t, p, "b")) >= n })
	if ts := bdTimes(t, p, "b"); len(ts) != n || ts[n-1].Sub(ts[0]) < window/3 {
		t.Errorf("b's connections: %d ended backend_down, spread over %v", len(ts), ts[len(ts)-1].Sub(ts[0]))
	}
	for _, c := range onK {
		c.echo(t, "keep still stays")
	}
	if n := p.Count("rule=kept", "end=backend_down"); n != 0 {
		t.Errorf("%d connections of the keep rule closed", n)
	}
}

// TestOnBackendDownKeep: by default (keep) a backend marked down keeps its
// open connections.
func TestOnBackendDownKeep(t *testing.T) {
	ea := StartEcho(t, "a")
	port := harness.FreePort(t)
	conf := strings.Replace(bdConfig(port, harness.FreePort(t), ea.Addr, "", time.Second, false), "on_backend_down = \"close\"\n", "", 1)
	p := Start(t, harness.WriteConfig(t, conf))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var cs []*cnClient
	for range 20 {
		cs = append(cs, cnDial(t, addr, nil))
	}
	ea.Close()
	p.WaitLog("backend down", "address="+ea.Addr)
	adm := mxAdminOf(t, p, "")
	harness.Eventually(t, "a reported down", func() bool { return adm.backend("pg", "a")["healthy"] == false })
	for _, c := range cs {
		c.echo(t, "still here")
	}
	if n, _, _ := cnList(adm, "rule=pg&backend=a"); n != 20 {
		t.Errorf("%d connections listed on the down backend, want 20", n)
	}
	if p.Count("on_backend_down") != 0 || p.Count("end=backend_down") != 0 {
		t.Error("keep closed connections")
	}
}

// TestOnBackendDownCloseUDP: a UDP backend marked down by its check has its
// sessions ended (end=backend_down) while the other backend's carry on.
func TestOnBackendDownCloseUDP(t *testing.T) {
	u1, u2 := StartUDPEcho(t, "u1"), StartUDPEcho(t, "u2")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
[logging]
access_log = true
[health_check]
interval = "200ms"
timeout = "100ms"
retries = 1
send = "check"
expect = "u"
passive_failures = 0
[[rules]]
name = "game"
protocol = "udp"
router = "round_robin"
on_backend_down = "close"
on_backend_down_window = "500ms"
[[rules.backends]]
id = "u1"
address = %q
[[rules.backends]]
id = "u2"
address = %q
`, port, u1.Addr, u2.Addr)))
	p.WaitLog("listening", "protocol=udp")
	adm := mxAdminOf(t, p, "")
	var on1, on2 []string
	for i := range 4 {
		c := dialUDP(t, port)
		got, err := UDPExchange(c, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(got, "u1:") {
			on1 = append(on1, c.LocalAddr().String())
		} else {
			on2 = append(on2, c.LocalAddr().String())
			defer func() { mustExchange(t, c, "after", "u2:after") }()
		}
	}
	if len(on1) != 2 || len(on2) != 2 {
		t.Fatalf("sessions on u1 %v, on u2 %v", on1, on2)
	}
	u1.c.Close()
	p.WaitLog("backend down", "address="+u1.Addr)
	harness.Eventually(t, "u1's two sessions ended backend_down", func() bool {
		return p.Count("udp session closed", "backend=u1", "end=backend_down") == 2
	})
	if n, _, _ := cnList(adm, "protocol=udp&backend=u2"); n != 2 {
		t.Errorf("%d sessions on u2, want 2", n)
	}
	if n, _, _ := cnList(adm, "protocol=udp&backend=u1"); n != 0 {
		t.Errorf("%d sessions on u1, want 0", n)
	}
}

// TestOnBackendDownPassive: with active checks off, passive detection
// (dials of real traffic refused) marking a backend down closes its open
// connections too.
func TestOnBackendDownPassive(t *testing.T) {
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
passive_failures = 2
passive_cooldown = "1h"
[[rules]]
name = "pg"
router = "round_robin"
on_backend_down = "close"
on_backend_down_window = "500ms"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
`, port, ea.Addr, eb.Addr)))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var onA, onB []*cnClient
	for len(onA) < 5 || len(onB) < 5 {
		c := cnDial(t, addr, nil)
		if c.backend == "a" {
			onA = append(onA, c)
		} else {
			onB = append(onB, c)
		}
	}
	aDone := bdWaitEOF(t, onA)
	ea.Close()
	// New connections: those sent to a are refused and retried on b,
	// until the second refusal marks a down.
	for p.Count("backend down", "detection=passive") == 0 {
		if c := cnDial(t, addr, nil); c.backend != "b" {
			t.Fatalf("a new connection reached %s", c.backend)
		}
	}
	p.WaitLog("on_backend_down: closing the backend's connections", "backend=a", "connections=5")
	aDone.Wait()
	for _, c := range onB {
		c.echo(t, "b stays")
	}
}
