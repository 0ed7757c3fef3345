package engine

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// countingMetrics counts what the engine asks of a metrics collector.
type countingMetrics struct {
	mu        sync.Mutex
	observers []string // route names
	retains   [][]string
}

func (m *countingMetrics) Observer(rt *proxy.Route) proxy.Observer {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.observers = append(m.observers, rt.Name)
	return nil
}

func (m *countingMetrics) Retain(routes []*proxy.Route) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retains = append(m.retains, routeNames(routes))
}

func (m *countingMetrics) counts() (int, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.observers), len(m.retains)
}

// planConfig is webConfig with a's weight 3, a new backend b, an active
// health check, and a UDP rule on a listener of its own.
func planConfig(a, b string) string {
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
udp_bind = "127.0.0.1:0"
[health_check]
enabled = true
interval = "1h"
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = %q
weight = 3
[[rules.backends]]
id = "b"
address = %q
[[rules]]
name = "dns"
protocol = "udp"
[[rules.backends]]
id = "d"
address = "127.0.0.1:53"
`, a, b)
}

// TestPlanChangesNothing: Plan reports what Apply would change and
// changes nothing: no listener bound, no health check started, no metrics
// series made, the old config still serving; Apply then makes that change.
func TestPlanChangesNothing(t *testing.T) {
	a, b := echo(t, "a"), echo(t, "b")
	e, _ := newEngine(t)
	m := &countingMetrics{}
	e.SetMetrics(m)
	if _, err := e.Apply(parse(t, webConfig(a))); err != nil {
		t.Fatal(err)
	}
	obs, ret := m.counts()
	mons := len(e.Checks().Monitors())
	next := parse(t, planConfig(a, b))
	ch, err := e.Plan(next)
	if err != nil {
		t.Fatal(err)
	}
	want := Change{
		RulesAdded: []string{"dns"}, RulesChanged: []string{"web"},
		BackendsAdded: []string{"web/b", "dns/d"}, BackendsReweighted: []string{"web/a"}, BackendsRechecked: []string{"web/a"},
		ListenersOpened: []string{"udp 127.0.0.1:0"},
	}
	if fmt.Sprint(ch) != fmt.Sprint(want) {
		t.Errorf("plan:\n got %+v\nwant %+v", ch, want)
	}
	if o, r := m.counts(); o != obs || r != ret {
		t.Errorf("Plan asked metrics for %d observers and %d retains", o-obs, r-ret)
	}
	if n := len(e.Listeners()); n != 1 {
		t.Errorf("%d listeners after Plan, want the 1 running", n)
	}
	if n := len(e.Checks().Monitors()); n != mons {
		t.Errorf("%d health monitors after Plan, want the %d running", n, mons)
	}
	if _, v := e.Config(); v != 1 {
		t.Errorf("Plan changed the config version to %d", v)
	}
	if got := greetings(t, proxyAddr(t, e), 4); got["a"] != 4 {
		t.Errorf("after Plan: greetings %v, want 4 from a alone", got)
	}
	applied, err := e.Apply(next)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(applied) != fmt.Sprint(want) {
		t.Errorf("apply:\n got %+v\nwant %+v", applied, want)
	}
	if o, _ := m.counts(); o != obs+2 {
		t.Errorf("Apply asked for %d observers, want 2 (one per route)", o-obs)
	}
	if n := len(e.Listeners()); n != 2 {
		t.Errorf("%d listeners after Apply, want 2", n)
	}
	if again, _ := e.Plan(next); !again.Empty() {
		t.Errorf("planning the running config again: %+v, want no change", again)
	}
}

// TestChangeCountsDrainingConnections: a removed backend's open
// connections are counted in the change, and run on.
func TestChangeCountsDrainingConnections(t *testing.T) {
	a, b := echo(t, "a"), echo(t, "b")
	e, _ := newEngine(t)
	if _, err := e.Apply(parse(t, webConfig(a))); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", proxyAddr(t, e), deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	r := bufio.NewReader(c)
	if line, _ := r.ReadString('\n'); strings.TrimSpace(line) != "a" {
		t.Fatalf("greeting %q, want a", line)
	}
	ch, err := e.Apply(parse(t, strings.Replace(webConfig(b), `id = "a"`, `id = "b"`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ch.BackendsAdded, ch.BackendsRemoved, ch.DrainingConnections) != "[web/b] [web/a] 1" {
		t.Errorf("change %+v, want web/b added, web/a removed with 1 connection draining", ch)
	}
	if _, err := c.Write([]byte("still here\n")); err != nil {
		t.Errorf("the draining connection was closed: %v", err)
	}
}

// TestFailedBindChangesNothing: a listener that cannot bind leaves the
// running listeners and config, and the series of the routes built for it
// are dropped.
func TestFailedBindChangesNothing(t *testing.T) {
	a := echo(t, "a")
	e, _ := newEngine(t)
	m := &countingMetrics{}
	e.SetMetrics(m)
	if _, err := e.Apply(parse(t, webConfig(a))); err != nil {
		t.Fatal(err)
	}
	held, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	cfg := strings.Replace(planConfig(a, a), `udp_bind = "127.0.0.1:0"`, fmt.Sprintf("udp_bind = %q", held.LocalAddr().String()), 1)
	if _, err := e.Apply(parse(t, cfg)); err == nil || !strings.Contains(err.Error(), "listen udp") {
		t.Fatalf("apply with a held UDP port: %v, want a listen error", err)
	}
	m.mu.Lock()
	last := fmt.Sprint(m.retains[len(m.retains)-1])
	m.mu.Unlock()
	if last != "[web]" {
		t.Errorf("after a failed bind metrics retain %s, want the running [web]", last)
	}
	if n := len(e.Listeners()); n != 1 {
		t.Errorf("%d listeners after a failed apply, want 1", n)
	}
	if _, v := e.Config(); v != 1 {
		t.Errorf("a failed apply changed the version to %d", v)
	}
}
