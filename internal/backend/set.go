package backend

import (
	"slices"
	"sync/atomic"
)

// Set is the backends one router was built for, with a routing-state
// version of their own: it moves whenever a member's weight, enabled or
// draining flag, connection cap or health changes, and only then. A router
// caches what it derives from that state (a weighted schedule, a hash
// table) and notices a change with one atomic load per pick; a change to
// another rule's backends leaves it alone.
//
// A Set is registered with its members (and their Health) from NewSet until
// Close; a router closes its Set when it is garbage collected. Close only
// marks it: the members drop closed sets when a new set registers with them,
// so that Close, which runs as a GC cleanup at any moment, never allocates
// or takes a lock under a measured hot path.
type Set struct {
	version  atomic.Uint64
	backends []*Backend
	closed   atomic.Bool
}

// NewSet registers a set of backends (nil or empty: a set that never moves).
func NewSet(backends []*Backend) *Set {
	s := &Set{backends: backends}
	watchMu.Lock()
	defer watchMu.Unlock()
	for _, b := range backends {
		addSet(&b.sets, s)
		addSet(&b.health.Load().sets, s)
	}
	return s
}

// Version returns the set's routing-state version. Read it before the state
// it guards: a setter stores the state first and then moves the version.
func (s *Set) Version() uint64 { return s.version.Load() }

// Close unregisters the set from its backends (lazily, see Set); its
// version stops moving.
func (s *Set) Close() { s.closed.Store(true) }

// sets is a list of sets, replaced whole under watchMu and read with one
// atomic load. A set appears once per member (or per member's Health) that
// registered it.
type sets = atomic.Pointer[[]*Set]

func addSet(p *sets, s *Set) {
	var l []*Set
	if old := p.Load(); old != nil {
		for _, o := range *old {
			if !o.closed.Load() {
				l = append(l, o)
			}
		}
	}
	l = append(l, s)
	p.Store(&l)
}

func removeSet(p *sets, s *Set) {
	old := p.Load()
	if old == nil {
		return
	}
	i := slices.Index(*old, s)
	if i < 0 {
		return
	}
	l := slices.Delete(slices.Clone(*old), i, i+1)
	if len(l) == 0 {
		p.Store(nil)
		return
	}
	p.Store(&l)
}

// bump moves the version of every set in p.
func bump(p *sets) {
	if l := p.Load(); l != nil {
		for _, s := range *l {
			if !s.closed.Load() {
				s.version.Add(1)
			}
		}
	}
}
