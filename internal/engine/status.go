package engine

import (
	"errors"
	"fmt"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/discovery"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// Metrics is what the engine needs from a metrics collector
// (internal/metrics implements it).
type Metrics interface {
	// Observer returns the data-path observer of a route about to be
	// published.
	Observer(rt *proxy.Route) proxy.Observer
	// Retain is told the routes published after every Apply, successful or
	// not, so that series of rules and backends that are gone are dropped.
	Retain(routes []*proxy.Route)
}

// ListenerMetrics is what the engine uses, when its Metrics has it, to
// count per listener what no rule takes (internal/metrics implements it).
type ListenerMetrics interface {
	// ListenerObserver returns the observer of a listener ("tcp" or "udp",
	// its configured address), the same one for the same listener.
	ListenerObserver(protocol, address string) proxy.ListenerObserver
	// RetainListeners is told the listeners (listen keys: "tcp
	// 127.0.0.1:8000") in use after every Apply; the series of others are
	// dropped.
	RetainListeners(keys []string)
}

// SetMetrics makes every route built from now on count into m. Call it
// before the first Apply; nil (the default) leaves metrics off.
func (e *Engine) SetMetrics(m Metrics) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.metrics = m
	e.observed = false // the published routes hold another collector's observers
	if m != nil {
		e.srv.SetUnroutedObserver(asUnrouted(m))
	}
	if ss, ok := m.(interface{ SetServer(*proxy.Server) }); ok {
		ss.SetServer(e.srv) // the descriptor budget's metrics
	}
	if fm, ok := m.(interface{ SetFleetLimits(*proxy.FleetLimits) }); ok && e.fleetLim != nil {
		fm.SetFleetLimits(e.fleetLim)
	}
	if do, ok := m.(discovery.Observer); ok {
		e.disc.SetObserver(do)
	}
	if hc, ok := m.(interface {
		HealthChecked(h *backend.Health, ok bool)
	}); ok {
		e.checks.SetCheckObserver(hc.HealthChecked)
	}
}

func asUnrouted(m Metrics) proxy.UnroutedObserver {
	if u, ok := m.(proxy.UnroutedObserver); ok {
		return u
	}
	return nil
}

// RuleStatus is one rule of the running config as the admin API shows it.
type RuleStatus struct {
	Name     string
	Protocol string
	Enabled  bool
	Listener string // the bound address ("" for a disabled rule)
	Router   string // the rule's router key
	Plugin   string // the router's plugin
	// Backends are the live backends, in config order: their weight,
	// flags and counters are atomics to read at will. Empty for a disabled
	// rule.
	Backends []*backend.Backend
}

// Rules returns every rule of the running config, in file order.
func (e *Engine) Rules() []RuleStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg == nil {
		return nil
	}
	live := map[string]*proxy.Route{}
	for _, rt := range e.routes {
		live[rt.Name] = rt
	}
	out := make([]RuleStatus, 0, len(e.cfg.Rules))
	for i := range e.cfg.Rules {
		r := &e.cfg.Rules[i]
		spec, _ := e.cfg.RouterSpecFor(r.Router)
		rs := RuleStatus{Name: r.Name, Protocol: r.Protocol, Enabled: r.Enabled, Router: r.Router, Plugin: spec.Plugin}
		if rt, ok := live[r.Name]; ok && r.Enabled {
			rs.Backends = rt.Backends
			if l, ok := e.lns[listenKey(r.Protocol, e.cfg.Listener(r))]; ok {
				rs.Listener = l.Addr().String()
			}
		}
		out = append(out, rs)
	}
	return out
}

// Errors of Backend, for errors.Is.
var (
	ErrUnknownRule    = errors.New("no such rule")
	ErrUnknownBackend = errors.New("no such backend")
)

// Backend returns the live backend id of rule, for runtime changes (drain,
// enable, disable, weight). Such a change lasts until a reload changes that
// backend's entry in the config.
func (e *Engine) Backend(rule, id string) (*backend.Backend, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg == nil {
		return nil, fmt.Errorf("rule %q: %w", rule, ErrUnknownRule)
	}
	for i := range e.cfg.Rules {
		r := &e.cfg.Rules[i]
		if r.Name != rule {
			continue
		}
		if !r.Enabled {
			return nil, fmt.Errorf("rule %q is disabled in the config: %w", rule, ErrUnknownBackend)
		}
		for _, rt := range e.routes {
			if rt.Name != rule {
				continue
			}
			for _, b := range rt.Backends {
				if b.ID == id {
					return b, nil
				}
			}
		}
		return nil, fmt.Errorf("rule %q has no backend %q: %w", rule, id, ErrUnknownBackend)
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownRule, rule)
}
