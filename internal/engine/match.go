package engine

import (
	"math"
	"net/netip"
	"reflect"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// compileMatcher turns a validated config matcher into the data path's.
// nil (no matcher) and port-only matchers match every connection of their
// listener: the port chose the listener already.
func compileMatcher(m *config.Matcher) proxy.Matcher {
	if m == nil {
		return nil
	}
	switch m.Type {
	case "port", "any":
		return nil
	case "sni":
		return proxy.MatchSNI{Names: proxy.NewNameSet(m.Names)}
	case "http_host":
		return proxy.MatchHost{Names: proxy.NewNameSet(m.Names)}
	case "alpn":
		return proxy.MatchALPN{Protocols: m.Protocols}
	case "source":
		return proxy.MatchSource{Prefixes: prefixes(m.CIDRs)}
	}
	var list []proxy.Matcher
	for _, sub := range append(append([]config.Matcher{}, m.All...), m.Any...) {
		sub := sub
		if c := compileMatcher(&sub); c != nil {
			list = append(list, c)
		} else if len(m.Any) > 0 {
			return nil // one alternative matches everything
		}
	}
	switch {
	case len(list) == 0:
		return nil
	case len(m.All) > 0:
		return proxy.MatchAll(list)
	default:
		return proxy.MatchOneOf(list)
	}
}

func prefixes(cidrs []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, s := range cidrs {
		if p, err := config.ParseCIDR(s); err == nil { // validated already
			out = append(out, p)
		}
	}
	return out
}

// accessFor returns the rule's access control, reusing the previous one (and
// its per-address counters) when the settings did not change.
func (e *Engine) accessFor(cfg *config.Config, r *config.Rule) (*proxy.Access, config.Access) {
	a := cfg.EffectiveAccess(r)
	if len(a.Allow) == 0 && len(a.Deny) == 0 && a.MaxConnectionsPerIP == 0 && a.ConnectionRatePerIP == 0 && !a.HasFleetLimits() {
		return nil, a
	}
	if prev, ok := e.access[r.Name]; ok && reflect.DeepEqual(prev.settings, a) {
		return prev.acl, a
	}
	return &proxy.Access{
		Allow:          prefixes(a.Allow),
		Deny:           prefixes(a.Deny),
		MaxPerIP:       a.MaxConnectionsPerIP,
		Rate:           a.ConnectionRatePerIP,
		Burst:          burstOf(a.ConnectionBurstPerIP, a.ConnectionRatePerIP),
		FleetMaxPerIP:  a.FleetMaxConnectionsPerIP,
		FleetRate:      a.FleetConnectionRatePerIP,
		FleetBurst:     burstOf(a.FleetConnectionBurstPerIP, a.FleetConnectionRatePerIP),
		FleetRuleRate:  a.FleetConnectionRate,
		FleetRuleBurst: burstOf(a.FleetConnectionBurst, a.FleetConnectionRate),
		Fleet:          e.fleetLim,
	}, a
}

// burstOf is a token bucket's size: burst, or 0 for the rate rounded up
// (at least 1).
func burstOf(burst int, rate float64) int {
	if burst == 0 {
		return max(1, int(math.Ceil(rate)))
	}
	return burst
}

// SetFleetLimits makes the rules' fleet-wide access limits count through
// f (internal/fleet syncs it); before the first Apply. Without it they
// hold on this instance alone.
func (e *Engine) SetFleetLimits(f *proxy.FleetLimits) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fleetLim = f
	if fm, ok := e.metrics.(interface{ SetFleetLimits(*proxy.FleetLimits) }); ok {
		fm.SetFleetLimits(f)
	}
}

// commitFleetLimits hands the fleet limits the rules that have some.
func (e *Engine) commitFleetLimits() {
	if e.fleetLim == nil {
		return
	}
	rules := map[string]*proxy.Access{}
	for name, s := range e.access {
		if s.settings.HasFleetLimits() {
			rules[name] = s.acl
		}
	}
	e.fleetLim.SetRules(rules)
}

type accessState struct {
	settings config.Access
	acl      *proxy.Access
}

// listenOptions are the settings of r's listener, r being its first
// enabled rule.
func listenOptions(cfg *config.Config, r *config.Rule) proxy.ListenOptions {
	o := proxy.ListenOptions{
		AcceptProxy: r.AcceptProxyProtocol,
		Trusted:     prefixes(r.TrustedProxies),
		PeekTimeout: cfg.Server.PeekTimeout.D(),
	}
	if r.Protocol == "udp" {
		o.SessionTimeout = r.SessionTimeout.D()
		o.DNS = r.DNS
	}
	return o
}

func proxyVersion(s string) int {
	switch s {
	case "v1":
		return 1
	case "v2":
		return 2
	}
	return 0
}
