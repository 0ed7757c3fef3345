package router

import (
	"slices"
	"sync/atomic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// NewTiered builds plugin's router for backends in priority tiers: tiers[i]
// is backends[i]'s tier, lower first (a backend's priority, or the backup
// tier). Every tier gets a router of its own, built by plugin from the
// tier's backends, and a pick goes to the best tier that has a usable
// backend: when all of a tier's backends are down, disabled, draining, at
// their cap or already tried for this connection, the next tier takes the
// connection, and the better tier takes it back from the first pick after
// one of its backends is usable again. A dial that fails is retried in the
// same way, so passive detection's retries fail over too.
//
// With one tier (every backend the same, the common case) it is plugin's
// router itself, at no cost. Each tier's router is built from that tier's
// backends only, so a hash table is the same on every instance that has
// the same backends and tiers.
func NewTiered(plugin string, config map[string]any, backends []*backend.Backend, tiers []int) (Router, error) {
	if len(tiers) != len(backends) {
		panic("router: NewTiered: one tier per backend")
	}
	levels := slices.Clone(tiers)
	slices.Sort(levels)
	levels = slices.Compact(levels)
	if len(levels) <= 1 {
		return New(plugin, config, backends)
	}
	t := &tiered{n: len(backends)}
	for _, lv := range levels {
		var bs []*backend.Backend
		for i, b := range backends {
			if tiers[i] == lv {
				bs = append(bs, b)
			}
		}
		r, err := New(plugin, config, bs)
		if err != nil {
			return nil, err
		}
		tr := &tier{level: lv, router: r, backends: bs}
		tr.set = watchSet(t, bs)
		tr.state.Store(stale)
		t.tiers = append(t.tiers, tr)
	}
	for _, tr := range t.tiers {
		t.needs |= NeedsOf(tr.router)
	}
	return t, nil
}

// tiered is a router over priority tiers (NewTiered).
type tiered struct {
	tiers []*tier // best first
	n     int     // backends in all tiers
	needs Needs
}

// tier is one priority level: its backends, their router, and whether any
// of them was available at the set version seen last, so that a pick skips
// a tier that is down with two atomic loads instead of a scan.
type tier struct {
	level    int
	router   Router
	backends []*backend.Backend
	set      *backend.Set
	// state is the set version the availability was computed at, shifted
	// left by one, with the availability in bit 0: one word, so that a
	// reader never pairs a version with another version's answer.
	state atomic.Uint64
}

const stale = ^uint64(0) // matches no version: compute on the first pick

var _ Router = (*tiered)(nil)

// Needs is what any tier's router needs.
func (t *tiered) Needs() Needs { return t.needs }

func (t *tiered) Pick(req *Request) (*backend.Backend, error) {
	for _, tr := range t.tiers {
		if !tr.maybeUsable() {
			continue
		}
		if b, err := tr.router.Pick(req); err == nil {
			return b, nil
		}
	}
	return nil, NoBackend(t.n)
}

// maybeUsable reports whether some backend of the tier was available at
// the tier's current set version. It may be true when none is usable for
// this request (tried, or at its connection cap: neither moves the
// version); the tier's router then says so and the next tier is asked.
func (tr *tier) maybeUsable() bool {
	v := tr.set.Version() << 1
	if s := tr.state.Load(); s&^1 == v && s != stale {
		return s&1 == 1
	}
	var up uint64
	for _, b := range tr.backends {
		if b.Available() {
			up = 1
			break
		}
	}
	tr.state.Store(v | up)
	return up == 1
}

// Tiers returns the tier levels of a router built by NewTiered, best first
// (nil when it has one tier).
func Tiers(r Router) []int {
	t, ok := r.(*tiered)
	if !ok {
		return nil
	}
	out := make([]int, len(t.tiers))
	for i, tr := range t.tiers {
		out[i] = tr.level
	}
	return out
}
