package router

import (
	"fmt"
	"slices"
	"strings"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// Explainer is implemented by a router that can say which backend it would
// pick for a request, and why, without picking: Explain must not change
// anything a later Pick sees (a round robin's rotation, a smooth weighted
// cycle, a least_connections rotation, a cached table). The admin API's
// dry run ("why this backend?") asks it; a router that is not an Explainer
// is described by its backends' availability only (Explain).
type Explainer interface {
	Explain(req *Request) Explanation
}

// Explanation is a router's account of one pick it would make.
type Explanation struct {
	// Backend is the backend the pick would return (nil: none usable, or
	// a random draw that is only an example: see Reason).
	Backend *backend.Backend `json:"-"`
	Chosen  string           `json:"chosen,omitempty"` // Backend's ID
	Reason  string           `json:"reason"`           // one line, for people
	// Hash routers: the key, its hash, the first table slot, the table's
	// size and the slots visited, in probe order, until the pick.
	HashKey   string   `json:"hash_key,omitempty"`
	Hash      uint64   `json:"hash,omitempty,string"` // a string in JSON: 64 bits are more than a JavaScript number holds
	Slot      *uint64  `json:"slot,omitempty"`
	TableSize uint64   `json:"table_size,omitempty"`
	Probes    []uint64 `json:"probes,omitempty"`
	// Tier is the priority tier the pick comes from (tiered routers).
	Tier *int `json:"tier,omitempty"`
	// Candidates are every backend the router has, in its order, with the
	// weights and counts it considered and, for those it would not take,
	// why (Skip*).
	Candidates []Candidate `json:"candidates"`
}

// Candidate is one backend as a pick considers it.
type Candidate struct {
	ID             string `json:"id"`
	Address        string `json:"address"`
	Weight         int    `json:"weight"` // effective (a slow start ramps it)
	Active         int64  `json:"active"`
	MaxConnections int    `json:"max_connections,omitempty"`
	Tier           int    `json:"tier"`
	// Current is the smooth weighted round robin's current weight of the
	// backend at this pick (weighted plugin only).
	Current *int64 `json:"current_weight,omitempty"`
	// Skipped says why the pick would not take the backend ("" : it is
	// usable): one of the Skip* values.
	Skipped string `json:"skipped,omitempty"`
}

// Why a candidate is skipped.
const (
	SkipDisabled = "disabled"
	SkipDraining = "draining"
	SkipDown     = "down (health check)"
	SkipCap      = "at max_connections"
	SkipTried    = "already tried for this connection"
	SkipBound    = "over bounded_load"
	SkipTier     = "in a lower priority tier than the one that takes the connection"
)

// SkipReason says why req.Usable(b) is false ("" when it is true), in the
// order Available checks: disabled, draining, down, at its cap, tried.
func SkipReason(req *Request, b *backend.Backend) string {
	switch {
	case !b.Enabled():
		return SkipDisabled
	case b.Draining():
		return SkipDraining
	case !b.Health().Up():
		return SkipDown
	case b.MaxConnections() > 0 && b.Active() >= int64(b.MaxConnections()):
		return SkipCap
	case !req.Usable(b):
		if b.Available() {
			return SkipTried
		}
		return SkipCap // it reached its cap between the two reads
	}
	return ""
}

// Explain asks r for its explanation of a pick for req, changing nothing.
// A router that is not an Explainer gets the candidates and their
// availability, and no choice.
func Explain(r Router, req *Request) Explanation {
	if x, ok := r.(Explainer); ok {
		return x.Explain(req)
	}
	return Explanation{Reason: fmt.Sprintf("the router (%T) does not explain its picks; the backends it may choose from are listed", r)}
}

// candidates describes backends for req, each with why it is skipped.
func candidates(req *Request, backends []*backend.Backend) []Candidate {
	out := make([]Candidate, len(backends))
	for i, b := range backends {
		out[i] = Candidate{ID: b.ID, Address: b.Address, Weight: b.Weight(), Active: b.Active(),
			MaxConnections: b.MaxConnections(), Tier: b.Tier(), Skipped: SkipReason(req, b)}
	}
	return out
}

// chose fills the chosen backend, or the reason there is none.
func (x *Explanation) chose(b *backend.Backend, n int) {
	x.Backend = b
	if b != nil {
		x.Chosen = b.ID
		return
	}
	x.Reason += "; " + NoBackend(n).Error()
}

// Explain: the rotation's next position, read and not advanced.
func (r *roundRobin) Explain(req *Request) Explanation {
	x := Explanation{Candidates: candidates(req, r.backends)}
	n := uint64(len(r.backends))
	if n == 0 {
		x.Reason = "round robin over no backends"
		x.chose(nil, 0)
		return x
	}
	start := r.next.Load()
	x.Reason = fmt.Sprintf("round robin: the rotation is at position %d of %d", start%n, n)
	for i := uint64(0); i < n; i++ {
		b := r.backends[(start+i)%n]
		if req.Usable(b) {
			if i > 0 {
				x.Reason += fmt.Sprintf("; %d unusable backend(s) after it skipped", i)
			}
			x.chose(b, len(r.backends))
			return x
		}
	}
	x.chose(nil, len(r.backends))
	return x
}

// Explain: the key's hash, its slot and the probe sequence Pick follows,
// with bounded_load computed as Pick does but without caching anything.
func (r *hashRouter) Explain(req *Request) Explanation {
	x := Explanation{Candidates: candidates(req, r.backends), HashKey: r.keyName}
	t := r.tables.table.Load()
	m := uint64(len(t.slots))
	if m == 0 {
		x.Reason = "hash over no backends"
		x.chose(nil, 0)
		return x
	}
	h := r.key(req)
	slot := h % m
	x.Hash, x.Slot, x.TableSize = h, &slot, m
	step := fmix64(h^0x9e3779b97f4a7c15)%(m-1) + 1
	mark := func(b *backend.Backend, why string) {
		for i := range x.Candidates {
			if r.backends[i] == b && x.Candidates[i].Skipped == "" {
				x.Candidates[i].Skipped = why
			}
		}
	}
	var fallback *backend.Backend
	s := slot
	for k := range hashProbes {
		x.Probes = append(x.Probes, s)
		b := r.backends[t.slots[s]]
		if req.Usable(b) {
			if r.underBound(t, b) {
				x.Reason = fmt.Sprintf("hash of %s → slot %d of %d", r.keyName, slot, m)
				if k > 0 {
					x.Reason += fmt.Sprintf("; probe %d of its sequence (the slots before hold unusable backends)", k+1)
				}
				x.chose(b, len(r.backends))
				return x
			}
			mark(b, SkipBound)
			if fallback == nil {
				fallback = b
			}
		}
		if s += step; s >= m {
			s -= m
		}
	}
	order := r.tables.order
	n := uint64(len(order))
	start := h % n
	for k := uint64(0); k < n; k++ {
		b := r.backends[order[(start+k)%n]]
		if req.Usable(b) {
			if r.underBound(t, b) {
				x.Reason = fmt.Sprintf("hash of %s → slot %d of %d; all %d probes unusable, so the fixed-order scan from %d", r.keyName, slot, m, hashProbes, start)
				x.chose(b, len(r.backends))
				return x
			}
			mark(b, SkipBound)
			if fallback == nil {
				fallback = b
			}
		}
	}
	x.Reason = fmt.Sprintf("hash of %s → slot %d of %d", r.keyName, slot, m)
	if fallback != nil {
		x.Reason += "; every usable backend is over bounded_load, so the first one found"
	}
	x.chose(fallback, len(r.backends))
	return x
}

// Explain runs the pick on a copy of the cycle's state.
func (r *smoothWeighted) Explain(req *Request) Explanation {
	r.mu.Lock()
	c := &smoothWeighted{backends: r.backends, set: r.set, version: r.version,
		weights: slices.Clone(r.weights), groups: slices.Clone(r.groups), total: r.total, step: r.step}
	r.mu.Unlock()
	x := Explanation{Candidates: candidates(req, r.backends)}
	c.mu.Lock()
	if v := c.set.Version(); v != c.version {
		c.refresh(v) // on the copy: a new cycle, as the next Pick would start
	}
	k := c.step + 1
	for gi := range c.groups {
		g := &c.groups[gi]
		for p, idx := range g.members {
			n := g.n
			if p < g.next {
				n++
			}
			cur := k*g.weight - c.total*n
			x.Candidates[idx].Current = &cur
		}
	}
	x.Reason = fmt.Sprintf("smooth weighted round robin: pick %d of a cycle of %d (Σ usable weight); the highest current weight wins, the first in config order on a tie", k, c.total)
	c.mu.Unlock()
	b, _ := c.Pick(req)
	x.chose(b, len(r.backends))
	return x
}

// Explain runs the pick on a copy of the tree.
func (r *leastConn) Explain(req *Request) Explanation {
	t := r.t
	t.mu.Lock()
	c := &lcTree{backends: t.backends, set: t.set, version: t.version, size: t.size, next: t.next,
		active: slices.Clone(t.active), weight: slices.Clone(t.weight), node: slices.Clone(t.node)}
	t.mu.Unlock()
	x := Explanation{Candidates: candidates(req, t.backends)}
	b, _ := (&leastConn{t: c}).Pick(req)
	x.Reason = fmt.Sprintf("least connections: the fewest active per unit of weight; among equals the next after position %d", c.next)
	if b != nil {
		x.Reason = fmt.Sprintf("least connections: %d active at weight %d is the fewest per unit of weight; among equals the next in rotation", b.Active(), b.Weight())
	}
	x.chose(b, len(t.backends))
	return x
}

// Explain draws once from the current weights (a table built here if the
// cached one is stale, and not kept): a random pick can only be an example.
func (r *random) Explain(req *Request) Explanation {
	x := Explanation{Candidates: candidates(req, r.backends)}
	t := r.table.Load()
	if t.version.Load() != r.set.Version() {
		weights := make([]int64, len(r.backends))
		for i, b := range r.backends {
			if b.Available() {
				weights[i] = weightOf(b)
			}
		}
		t = newRandTable(weights)
	}
	var sum int64
	for _, w := range t.weights {
		sum += w
	}
	x.Reason = fmt.Sprintf("weighted random: each usable backend with probability weight ÷ %d; the choice shown is one example draw", sum)
	if r.choices == 2 {
		x.Reason = fmt.Sprintf("power of two choices: two weighted draws (weight ÷ %d), the one with fewer active connections per unit of weight wins; the choice shown is one example", sum)
	}
	if len(t.idx) == 0 {
		x.chose(nil, len(r.backends))
		return x
	}
	first := r.pickOne(req, t, -1)
	if first < 0 {
		x.chose(nil, len(r.backends))
		return x
	}
	pick := first
	if r.choices == 2 {
		if second := r.pickOne(req, t, first); second >= 0 {
			a, b := r.backends[first], r.backends[second]
			if a.Active()*t.weights[second] > b.Active()*t.weights[first] {
				pick = second
			}
		}
	}
	x.chose(r.backends[pick], len(r.backends))
	return x
}

// Explain asks the tiers in order, as Pick does, and marks the backends of
// the tiers after the one that takes the connection.
func (t *tiered) Explain(req *Request) Explanation {
	var x Explanation
	var all []Candidate
	chosen := -1
	var notes []string
	for ti, tr := range t.tiers {
		if chosen >= 0 {
			for _, c := range candidates(req, tr.backends) {
				if c.Skipped == "" {
					c.Skipped = SkipTier
				}
				all = append(all, c)
			}
			continue
		}
		up := false
		for _, b := range tr.backends {
			if b.Available() {
				up = true
				break
			}
		}
		if !up {
			all = append(all, candidates(req, tr.backends)...)
			notes = append(notes, fmt.Sprintf("tier %d: no backend available", tr.level))
			continue
		}
		tx := Explain(tr.router, req)
		all = append(all, tx.Candidates...)
		if tx.Backend == nil {
			notes = append(notes, fmt.Sprintf("tier %d: %s", tr.level, tx.Reason))
			continue
		}
		chosen = ti
		x = tx
		lv := tr.level
		x.Tier = &lv
	}
	x.Candidates = all
	prefix := ""
	if len(notes) > 0 {
		prefix = strings.Join(notes, "; ") + "; "
	}
	if chosen < 0 {
		x.Reason = prefix + "no tier has a usable backend"
		x.chose(nil, t.n)
		return x
	}
	x.Reason = prefix + fmt.Sprintf("tier %d takes it: %s", *x.Tier, x.Reason)
	return x
}
