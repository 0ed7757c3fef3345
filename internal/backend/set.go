package backend

import (
	"slices"
	"sync"
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
// Close; a router closes its Set when it is garbage collected.
type Set struct {
	version  atomic.Uint64
	backends []*Backend
	once     sync.Once
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

// Close unregisters the set from its backends; its version stops moving.
func (s *Set) Close() {
	s.once.Do(func() {
		watchMu.Lock()
		defer watchMu.Unlock()
		for _, b := range s.backends {
			removeSet(&b.sets, s)
			removeSet(&b.health.Load().sets, s)
		}
	})
}

// sets is a list of sets, replaced whole under watchMu and read with one
// atomic load. A set appears once per member (or per member's Health) that
// registered it.
type sets = atomic.Pointer[[]*Set]

func addSet(p *sets, s *Set) {
	var l []*Set
	if old := p.Load(); old != nil {
		l = append(l, *old...)
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
			s.version.Add(1)
		}
	}
}
