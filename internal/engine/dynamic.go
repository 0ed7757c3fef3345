package engine

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
)

// Dynamic is the state a fleet of instances shares through Redis
// (internal/store): backends registered at runtime, which join their rule's
// file-defined backends, and the runtime state (drain, enable, disable,
// weight) of backends. The engine applies it in memory; a pick never waits
// for Redis.
type Dynamic struct {
	Version  int64  // the fleet's version of this state, for logs
	Source   string // where it was read: "redis" or "cache", for logs
	Backends []DynamicBackend
	States   []BackendState
}

// DynamicBackend is a backend registered at runtime for a rule.
type DynamicBackend struct {
	Rule, ID, Address string
	Weight            int
	Expires           time.Time // zero: no TTL (informational)
}

// BackendState is the shared runtime state of one backend of a rule. A nil
// flag (or Weight 0) is not set: the backend keeps its config value.
type BackendState struct {
	Rule, ID string
	Draining *bool
	Enabled  *bool
	Weight   int
	Version  int64 // changes whenever the state does
}

type ruleID struct{ rule, id string }

// fleetState is the engine's part of the shared state (guarded by e.mu).
type fleetState struct {
	dyn      *Dynamic         // applied; nil: none
	accepted []string         // dyn's backends merged in: "rule/id@address"
	eff      *config.Config   // the running config with dyn's backends merged in
	stateVer map[ruleID]int64 // version of the shared state applied to each backend
	problems map[string]bool  // merge problems logged, so each is logged once
}

// SetDynamic applies a new dynamic state on top of the running config, all
// or nothing like Apply; before the first Apply it is only kept for it.
// Registrations for unknown rules, ids that a rule's file already uses and
// host names that do not resolve are left out, each logged once.
func (e *Engine) SetDynamic(d *Dynamic) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.fleet.dyn
	if e.cfg == nil {
		e.fleet.dyn = d
		return nil
	}
	ch, err := e.apply(e.cfg, d, false)
	if err != nil {
		return err
	}
	// The file did not change: the backends the plan added or removed are
	// registrations.
	attrs := []any{"source", d.Source, "version", d.Version, "backends", len(d.Backends), "states", len(d.States)}
	if len(ch.BackendsAdded) > 0 {
		attrs = append(attrs, "backends_added", sorted(ch.BackendsAdded))
	}
	if len(ch.BackendsRemoved) > 0 {
		attrs = append(attrs, "backends_removed", sorted(ch.BackendsRemoved))
	}
	if ch := changedStates(old, d); len(ch) > 0 {
		attrs = append(attrs, "states_changed", ch)
	}
	e.log.Info("fleet: dynamic state applied", attrs...)
	return nil
}

// Dynamic returns the applied dynamic state (nil: none).
func (e *Engine) Dynamic() *Dynamic {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fleet.dyn
}

// merge returns file with the registered backends of dyn appended to their
// rules (file's own backends first, then the registered ones by id), the
// registered backends it took ("rule/id@address") and the problems of
// those it left out (for logFleetProblems).
func (e *Engine) merge(file *config.Config, dyn *Dynamic) (_ *config.Config, accepted, problems []string) {
	if dyn == nil || len(dyn.Backends) == 0 {
		return file, nil, nil
	}
	eff := *file
	eff.Rules = append([]config.Rule(nil), file.Rules...)
	idx := make(map[string]int, len(eff.Rules))
	for i := range eff.Rules {
		idx[eff.Rules[i].Name] = i
	}
	cloned := map[int]bool{}
	for _, d := range dyn.Backends {
		name := d.Rule + "/" + d.ID
		i, ok := idx[d.Rule]
		if !ok {
			problems = append(problems, fmt.Sprintf("registered backend %s (%s): the config has no rule %q; ignored", name, d.Address, d.Rule))
			continue
		}
		r := &eff.Rules[i]
		if !r.Enabled {
			continue
		}
		clash := false
		for _, fb := range file.Rules[i].Backends {
			clash = clash || fb.ID == d.ID
		}
		if clash {
			problems = append(problems, fmt.Sprintf("registered backend %s (%s): rule %q defines backend %q in its config file, which wins; ignored", name, d.Address, d.Rule, d.ID))
			continue
		}
		if _, known := e.backends[backendKey{d.Rule, d.ID, d.Address}]; !known {
			if err := resolvable(d.Address); err != nil {
				problems = append(problems, fmt.Sprintf("registered backend %s: %v; ignored", name, err))
				continue
			}
		}
		if !cloned[i] {
			r.Backends = append([]config.Backend(nil), r.Backends...)
			cloned[i] = true
		}
		r.Backends = append(r.Backends, config.Backend{ID: d.ID, Address: d.Address, Weight: d.Weight, Enabled: true})
		accepted = append(accepted, name+"@"+d.Address)
	}
	return &eff, accepted, problems
}

func resolvable(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid address %q", addr)
	}
	if net.ParseIP(host) != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := resolve.System().LookupHost(ctx, host); err != nil {
		return fmt.Errorf("host %q does not resolve: %w", host, unwrapOp(err))
	}
	return nil
}

// logFleetProblems logs each problem once, when it first appears.
func (e *Engine) logFleetProblems(ps []string) {
	seen := make(map[string]bool, len(ps))
	for _, p := range ps {
		seen[p] = true
		if !e.fleet.problems[p] {
			e.log.Error("fleet: " + p)
		}
	}
	e.fleet.problems = seen
}

// flags are a backend's runtime settings.
type flags struct {
	weight            int
	enabled, draining bool
}

func (f flags) applyTo(b *backend.Backend) {
	b.SetWeight(f.weight)
	b.SetEnabled(f.enabled)
	b.SetDraining(f.draining)
}

// desired returns the flags backend bc of rule should get, and whether to
// set them: when it is new or its config entry changed (entryChanged), or
// its shared state changed or went away. Otherwise the backend keeps its
// runtime flags (a change made through the admin API lasts).
func (f *fleetState) desired(rule string, bc config.Backend, entryChanged bool, states map[ruleID]BackendState) (flags, bool) {
	k := ruleID{rule, bc.ID}
	st, has := states[k]
	prev, had := f.stateVer[k]
	if !entryChanged && has == had && (!has || st.Version == prev) {
		return flags{}, false
	}
	fl := flags{weight: bc.Weight, enabled: bc.Enabled}
	if has {
		if st.Weight > 0 {
			fl.weight = st.Weight
		}
		if st.Enabled != nil {
			fl.enabled = *st.Enabled
		}
		if st.Draining != nil {
			fl.draining = *st.Draining
		}
	}
	return fl, true
}

// states indexes dyn's states.
func (d *Dynamic) states() map[ruleID]BackendState {
	if d == nil {
		return nil
	}
	m := make(map[ruleID]BackendState, len(d.States))
	for _, s := range d.States {
		m[ruleID{s.Rule, s.ID}] = s
	}
	return m
}

// commit records what an apply made current.
func (f *fleetState) commit(dyn *Dynamic, eff *config.Config, accepted []string, backends map[backendKey]*backend.Backend) {
	states := dyn.states()
	ver := map[ruleID]int64{}
	for k := range backends {
		if st, ok := states[ruleID{k.rule, k.id}]; ok {
			ver[ruleID{k.rule, k.id}] = st.Version
		}
	}
	f.dyn, f.eff, f.accepted, f.stateVer = dyn, eff, accepted, ver
}

// effective is the running config with the dynamic backends merged in.
func (e *Engine) effective() *config.Config {
	if e.fleet.eff != nil {
		return e.fleet.eff
	}
	return e.cfg
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func changedStates(old, cur *Dynamic) []string {
	o, n := old.states(), cur.states()
	var out []string
	for k, s := range n {
		if p, ok := o[k]; !ok || !reflect.DeepEqual(p, s) {
			out = append(out, k.rule+"/"+k.id+" "+s.Describe())
		}
	}
	for k := range o {
		if _, ok := n[k]; !ok {
			out = append(out, k.rule+"/"+k.id+" reset")
		}
	}
	sort.Strings(out)
	return out
}

// Describe is a state in a few words: "draining,disabled,weight=3".
func (s BackendState) Describe() string {
	var parts []string
	if s.Draining != nil {
		if *s.Draining {
			parts = append(parts, "draining")
		} else {
			parts = append(parts, "not-draining")
		}
	}
	if s.Enabled != nil {
		if *s.Enabled {
			parts = append(parts, "enabled")
		} else {
			parts = append(parts, "disabled")
		}
	}
	if s.Weight > 0 {
		parts = append(parts, fmt.Sprintf("weight=%d", s.Weight))
	}
	return strings.Join(parts, ",")
}
