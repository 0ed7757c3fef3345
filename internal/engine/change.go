package engine

import (
	"fmt"
	"strings"
)

// Change is what an apply changes, as its plan found it: the one account
// of a reload that the reload log and the admin API report.
type Change struct {
	// Rules of the file, enabled or not, by name: new, gone, or with any
	// setting (or their router's) different.
	RulesAdded   []string `json:"rules_added,omitempty"`
	RulesRemoved []string `json:"rules_removed,omitempty"`
	RulesChanged []string `json:"rules_changed,omitempty"`
	// Backends built or dropped ("rule/id"), registered ones included; a
	// backend keeps its state while its rule, id and address do.
	BackendsAdded   []string `json:"backends_added,omitempty"`
	BackendsRemoved []string `json:"backends_removed,omitempty"`
	// Kept backends whose weight is set anew, and those whose health
	// check settings changed (they take the new check's state).
	BackendsReweighted []string `json:"backends_reweighted,omitempty"`
	BackendsRechecked  []string `json:"backends_rechecked,omitempty"`
	// Listeners bound and closed ("tcp 127.0.0.1:8000").
	ListenersOpened []string `json:"listeners_opened,omitempty"`
	ListenersClosed []string `json:"listeners_closed,omitempty"`
	// RestartNeeded lists keys whose new value applies at the next restart.
	RestartNeeded []string `json:"restart_needed,omitempty"`
	// DrainingConnections is how many connections were open on the removed
	// backends when the plan was made: they run on, draining.
	DrainingConnections int64 `json:"draining_connections,omitempty"`
	// Connections is how many connections (TCP) and sessions (UDP) were
	// open, when the plan was made, on what a change touches, by the
	// change's item: "rule web", "backend web/b1", "listener tcp
	// 127.0.0.1:8000". Items with none open are left out.
	Connections map[string]int64 `json:"connections,omitempty"`
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool {
	return len(c.RulesAdded)+len(c.RulesRemoved)+len(c.RulesChanged)+len(c.BackendsAdded)+
		len(c.BackendsRemoved)+len(c.BackendsReweighted)+len(c.BackendsRechecked)+
		len(c.ListenersOpened)+len(c.ListenersClosed)+len(c.RestartNeeded) == 0
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

// LogAttrs are the change as log attributes, each list only when not empty.
func (c Change) LogAttrs() []any {
	var attrs []any
	for _, kv := range []struct {
		k string
		v []string
	}{
		{"rules_added", c.RulesAdded}, {"rules_removed", c.RulesRemoved}, {"rules_changed", c.RulesChanged},
		{"backends_added", c.BackendsAdded}, {"backends_removed", c.BackendsRemoved},
		{"backends_reweighted", c.BackendsReweighted}, {"backends_rechecked", c.BackendsRechecked},
		{"listeners_opened", c.ListenersOpened}, {"listeners_closed", c.ListenersClosed},
	} {
		if len(kv.v) > 0 {
			attrs = append(attrs, kv.k, kv.v)
		}
	}
	if c.DrainingConnections > 0 {
		attrs = append(attrs, "draining_connections", c.DrainingConnections)
	}
	return attrs
}
