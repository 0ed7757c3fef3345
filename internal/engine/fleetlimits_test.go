package engine

import (
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// TestFleetLimitsHandedOver: the rules with fleet-wide limits are the
// ones the FleetLimits sync, with their settings; a reload that keeps a
// rule's settings keeps its Access (and its counts); one that drops them
// takes the rule out.
func TestFleetLimitsHandedOver(t *testing.T) {
	e, _ := newEngine(t)
	f := proxy.NewFleetLimits()
	e.SetFleetLimits(f)
	const redis = "[redis]\nurl = \"redis://127.0.0.1:1\"\n"
	web := webConfig(echo(t, "a"))
	base := web + redis
	limited := web + "[rules.access]\nfleet_connection_rate_per_ip = 5\nfleet_max_connections_per_ip = 2\nfleet_connection_rate = 50\n" + redis
	if _, err := e.Apply(parse(t, limited)); err != nil {
		t.Fatal(err)
	}
	stats := f.Stats()
	if len(stats) != 1 || stats[0].Rule != "web" || !stats[0].ConnLimited || !stats[0].RateLimited {
		t.Fatalf("stats %+v", stats)
	}
	first := e.access["web"].acl
	if first.FleetRate != 5 || first.FleetBurst != 5 || first.FleetMaxPerIP != 2 || first.FleetRuleRate != 50 || first.FleetRuleBurst != 50 || first.Fleet != f {
		t.Fatalf("access %+v", first)
	}
	if _, err := e.Apply(parse(t, limited)); err != nil {
		t.Fatal(err)
	}
	if e.access["web"].acl != first {
		t.Error("an unchanged rule got a new Access (its counts lost)")
	}
	if _, err := e.Apply(parse(t, base)); err != nil {
		t.Fatal(err)
	}
	if stats := f.Stats(); len(stats) != 0 || f.Active() {
		t.Errorf("a rule without fleet limits is still synced: %+v", stats)
	}
}
