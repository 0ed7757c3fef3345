package engine

import (
	"fmt"
	"strconv"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/discovery"
)

// Backends from DNS. Each [[rules.discovery]] entry of an enabled rule has
// a watcher (internal/discovery) that refreshes its name off the data path.
// When the answer in effect changes, the watcher calls rediscover, which
// applies the running config again with reload = false: the plan merges
// every name's endpoints into its rule as backends (mergeDiscovered), so a
// backend that stays is kept by identity (rule, id, address) with its
// counters, health and connections, a new one is built (and held down until
// its first health check passes), and a gone one drains, exactly as a
// reload would do it.

// discoverySpecs are the discovery entries of cfg's enabled rules.
func discoverySpecs(cfg *config.Config) []discovery.Spec {
	var out []discovery.Spec
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if !r.Enabled {
			continue
		}
		for _, d := range r.Discovery {
			if d.Resolver == "" {
				d.Resolver = cfg.Server.Resolver // server.resolver is the default
			}
			out = append(out, discovery.Spec{Rule: r.Name, D: d})
		}
	}
	return out
}

// mergeDiscovered returns cfg with the endpoints in effect of every
// discovered name appended to its rule as backends, and the problems of
// those left out (an id that a backend of the file or the fleet already
// has).
func (e *Engine) mergeDiscovered(cfg *config.Config) (*config.Config, []string) {
	var problems []string
	var eff *config.Config
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if !r.Enabled || len(r.Discovery) == 0 {
			continue
		}
		var add []config.Backend
		ids := make(map[string]bool, len(r.Backends))
		for _, b := range r.Backends {
			ids[b.ID] = true
		}
		for _, d := range r.Discovery {
			eps, _ := e.disc.Endpoints(r.Name, d)
			for _, ep := range eps {
				bc := DiscoveredBackend(d, ep)
				if ids[bc.ID] {
					problems = append(problems, fmt.Sprintf("rule %q: discovered backend %q (%s from %s) has the id of another backend of the rule; left out", r.Name, bc.ID, bc.Address, d.Name))
					continue
				}
				ids[bc.ID] = true
				add = append(add, bc)
			}
		}
		if len(add) == 0 {
			continue
		}
		if eff == nil {
			c := *cfg
			c.Rules = append([]config.Rule(nil), cfg.Rules...)
			eff = &c
		}
		er := &eff.Rules[i]
		er.Backends = append(append([]config.Backend(nil), r.Backends...), add...)
	}
	if eff == nil {
		return cfg, problems
	}
	return eff, problems
}

// DiscoveredBackend is the backend entry endpoint ep of name d becomes:
// id "ID:ip:port", the name's weight (type a) or the record's (srv), the
// name's tier plus the record's priority.
func DiscoveredBackend(d config.Discovery, ep discovery.Endpoint) config.Backend {
	weight, tier := d.Weight, d.Tier()
	if d.Type == "srv" {
		weight = min(ep.Weight, config.MaxWeight)
		if !d.Backup {
			tier = min(tier+ep.Priority, 65535)
		}
	}
	return config.Backend{
		ID:             d.IDPrefix() + ":" + ep.Addr.Addr().String() + ":" + strconv.Itoa(int(ep.Addr.Port())),
		Address:        ep.Addr.String(),
		Weight:         weight,
		Enabled:        true,
		MaxConnections: d.MaxConnections,
		Priority:       min(tier, 65535),
		Backup:         tier == config.BackupTier,
		Source:         d.Name,
	}
}

// rediscover applies the discovered names' answers in effect (a watcher
// saw one change). It runs on the watcher's goroutine.
func (e *Engine) rediscover() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg == nil {
		return // the first Apply merges them
	}
	ch, err := e.apply(e.cfg, e.fleet.dyn, false)
	if err != nil {
		e.log.Error("discovery: cannot apply the new answer; the running backends stay", "err", err.Error())
		return
	}
	if len(ch.BackendsAdded)+len(ch.BackendsRemoved) > 0 {
		attrs := []any{}
		if len(ch.BackendsAdded) > 0 {
			attrs = append(attrs, "backends_added", sorted(ch.BackendsAdded))
		}
		if len(ch.BackendsRemoved) > 0 {
			attrs = append(attrs, "backends_removed", sorted(ch.BackendsRemoved), "draining_connections", ch.DrainingConnections)
		}
		e.log.Info("discovery: backends changed", attrs...)
	}
}

func (e *Engine) logDiscoveryProblems(ps []string) {
	seen := make(map[string]bool, len(ps))
	for _, p := range ps {
		seen[p] = true
		if !e.discLog[p] {
			e.log.Error("discovery: " + p)
		}
	}
	e.discLog = seen
}

// Discovery returns every watched DNS name and its state.
func (e *Engine) Discovery() []discovery.Status { return e.disc.Statuses() }
