package engine

import (
	"fmt"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// namingMetrics is countingMetrics (plan_test.go) handing out an observer
// of its own to each route, so that a test can tell them apart. No traffic
// may pass: the observer counts nothing.
type namingMetrics struct{ countingMetrics }

func (m *namingMetrics) Observer(rt *proxy.Route) proxy.Observer {
	m.countingMetrics.Observer(rt)
	return &nopObserver{rule: rt.Name}
}

type nopObserver struct {
	proxy.Observer // nil: the test never counts through it
	rule           string
}

// TestReloadReusesObserversOfUnchangedRoutes: a reload asks the metrics for
// the observers of the routes whose series changed only; the others keep
// theirs.
func TestReloadReusesObserversOfUnchangedRoutes(t *testing.T) {
	e, _ := newEngine(t)
	m := &namingMetrics{}
	e.SetMetrics(m)
	cfg := func(bAddr, router string) string {
		return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
[health_check]
enabled = false
[[rules]]
name = "a"
matcher = { type = "sni", names = ["a.example"] }
[[rules.backends]]
id = "a1"
address = "127.0.0.1:9"
[[rules]]
name = "b"
router = %q
matcher = { type = "sni", names = ["b.example"] }
[[rules.backends]]
id = "b1"
address = %q
[[rules]]
name = "c"
[[rules.backends]]
id = "c1"
address = "127.0.0.1:9"
`, router, bAddr)
	}
	observers := func() map[string]proxy.Observer {
		out := map[string]proxy.Observer{}
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, rt := range e.routes {
			out[rt.Name] = rt.Observer
		}
		return out
	}
	if _, err := e.Apply(parse(t, cfg("127.0.0.1:9", "round_robin"))); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(m.observers) != "[a b c]" {
		t.Fatalf("first apply observed %v, want every route", m.observers)
	}
	before := observers()
	for _, step := range []struct {
		addr, router string
		want         string
	}{
		{"127.0.0.1:10", "round_robin", "[b]"}, // b's backend changed
		{"127.0.0.1:10", "round_robin", "[]"},  // nothing changed
		{"127.0.0.1:10", "random", "[b]"},      // b's router changed
	} {
		m.observers = nil
		if _, err := e.Apply(parse(t, cfg(step.addr, step.router))); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(m.observers); got != step.want {
			t.Errorf("reload to %s %s observed %s, want %s", step.addr, step.router, got, step.want)
		}
		after := observers()
		for _, r := range []string{"a", "c"} {
			if after[r] != before[r] {
				t.Errorf("rule %s got a new observer though its series did not change", r)
			}
		}
		if step.want == "[b]" && after["b"] == before["b"] {
			t.Error("rule b kept its observer though its series changed")
		}
		before = after
	}
}
