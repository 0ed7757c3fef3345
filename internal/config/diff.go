package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// Change summarises what a new config changes relative to the running one.
type Change struct {
	RulesAdded, RulesRemoved, RulesChanged []string
	BackendsAdded, BackendsRemoved         []string // "rule/id"
	ListenersOpened, ListenersClosed       []string // "tcp 127.0.0.1:8000"
	// RestartNeeded lists keys whose new value only applies at the next restart.
	RestartNeeded []string
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool {
	return len(c.RulesAdded)+len(c.RulesRemoved)+len(c.RulesChanged)+len(c.BackendsAdded)+
		len(c.BackendsRemoved)+len(c.ListenersOpened)+len(c.ListenersClosed)+len(c.RestartNeeded) == 0
}

// String is a one-line summary, e.g. "rules +1 -0 ~2; backends +1 -1; listeners +0 -0".
func (c Change) String() string {
	s := fmt.Sprintf("rules +%d -%d ~%d; backends +%d -%d; listeners +%d -%d",
		len(c.RulesAdded), len(c.RulesRemoved), len(c.RulesChanged),
		len(c.BackendsAdded), len(c.BackendsRemoved),
		len(c.ListenersOpened), len(c.ListenersClosed))
	if len(c.RestartNeeded) > 0 {
		s += "; needs restart: " + strings.Join(c.RestartNeeded, ", ")
	}
	return s
}

// Diff compares the running config old (nil at start-up) with next.
func Diff(old, next *Config) Change {
	var ch Change
	if old == nil {
		old = &Config{}
	}
	oldSpecs, newSpecs := routerSpecs{c: old}, routerSpecs{c: next}
	oldRules := make(map[string]*Rule, len(old.Rules))
	for i := range old.Rules {
		oldRules[old.Rules[i].Name] = &old.Rules[i]
	}
	newRules := make(map[string]*Rule, len(next.Rules))
	for i := range next.Rules {
		r := &next.Rules[i]
		newRules[r.Name] = r
		o, ok := oldRules[r.Name]
		if !ok {
			ch.RulesAdded = append(ch.RulesAdded, r.Name)
			for _, b := range r.Backends {
				ch.BackendsAdded = append(ch.BackendsAdded, r.Name+"/"+b.ID)
			}
			continue
		}
		same := reflect.DeepEqual(o, r)
		if !same || oldSpecs.of(o.Router) != newSpecs.of(r.Router) {
			ch.RulesChanged = append(ch.RulesChanged, r.Name)
		}
		if same {
			continue // the same backends
		}
		ob, nb := map[string]bool{}, map[string]bool{}
		for _, b := range o.Backends {
			ob[b.ID+"@"+b.Address] = true
		}
		for _, b := range r.Backends {
			nb[b.ID+"@"+b.Address] = true
			if !ob[b.ID+"@"+b.Address] {
				ch.BackendsAdded = append(ch.BackendsAdded, r.Name+"/"+b.ID)
			}
		}
		for _, b := range o.Backends {
			if !nb[b.ID+"@"+b.Address] {
				ch.BackendsRemoved = append(ch.BackendsRemoved, r.Name+"/"+b.ID)
			}
		}
	}
	for _, r := range old.Rules {
		if _, ok := newRules[r.Name]; !ok {
			ch.RulesRemoved = append(ch.RulesRemoved, r.Name)
			for _, b := range r.Backends {
				ch.BackendsRemoved = append(ch.BackendsRemoved, r.Name+"/"+b.ID)
			}
		}
	}
	ol, nl := old.listeners(), next.listeners()
	for l := range nl {
		if !ol[l] {
			ch.ListenersOpened = append(ch.ListenersOpened, l)
		}
	}
	for l := range ol {
		if !nl[l] {
			ch.ListenersClosed = append(ch.ListenersClosed, l)
		}
	}
	sort.Strings(ch.ListenersOpened)
	sort.Strings(ch.ListenersClosed)
	if len(old.Rules) > 0 || old.File != "" {
		if old.Server.WorkerThreads != next.Server.WorkerThreads {
			ch.RestartNeeded = append(ch.RestartNeeded, "server.worker_threads")
		}
		if old.Server.AdaptiveThreads != next.Server.AdaptiveThreads {
			ch.RestartNeeded = append(ch.RestartNeeded, "server.adaptive_threads")
		}
		if old.Logging.Format != next.Logging.Format {
			ch.RestartNeeded = append(ch.RestartNeeded, "logging.format")
		}
		if old.Server.WatchConfig != next.Server.WatchConfig {
			ch.RestartNeeded = append(ch.RestartNeeded, "server.watch_config")
		}
		if !reflect.DeepEqual(old.Redis, next.Redis) { // the fleet connection is made at start-up
			ch.RestartNeeded = append(ch.RestartNeeded, "[redis]")
		}
		for _, k := range []struct {
			key        string
			oldV, newV any
		}{
			{"metrics.enabled", old.Metrics.Enabled, next.Metrics.Enabled},
			{"metrics.bind", old.Metrics.Bind, next.Metrics.Bind},
			{"metrics.path", old.Metrics.Path, next.Metrics.Path},
			{"admin.bind", old.Admin.Bind, next.Admin.Bind},
			{"admin.pprof", old.Admin.Pprof, next.Admin.Pprof},
		} {
			if k.oldV != k.newV {
				ch.RestartNeeded = append(ch.RestartNeeded, k.key)
			}
		}
	}
	return ch
}

// listeners is the set of "protocol address" keys the enabled rules need.
func (c *Config) listeners() map[string]bool {
	out := map[string]bool{}
	for i := range c.Rules {
		if c.Rules[i].Enabled {
			out[c.Rules[i].Protocol+" "+c.Listener(&c.Rules[i])] = true
		}
	}
	return out
}

// routerSpecs describes the router specs of a config by name, each
// formatted once.
type routerSpecs struct {
	c    *Config
	seen map[string]string
}

func (r *routerSpecs) of(name string) string {
	if s, ok := r.seen[name]; ok {
		return s
	}
	if r.seen == nil {
		r.seen = map[string]string{}
	}
	spec, _ := r.c.RouterSpecFor(name)
	s := fmt.Sprintf("%s %v", spec.Plugin, spec.Config)
	r.seen[name] = s
	return s
}
