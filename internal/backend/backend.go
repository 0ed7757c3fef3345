// Package backend holds the runtime state of upstream servers. Everything a
// router reads on the pick path is an atomic, so picking takes no lock.
package backend

import (
	"sync/atomic"
)

// Health is the up/down state of one address. All backends that name the same
// address share one *Health, so a check of that address serves every rule.
type Health struct {
	Address string
	down    atomic.Bool
}

// Up reports whether the address is considered healthy. A new Health is up.
func (h *Health) Up() bool { return !h.down.Load() }

// SetUp records the address's health and reports whether it changed.
func (h *Health) SetUp(up bool) (changed bool) { return h.down.Swap(!up) != !up }

// Backend is one upstream server of one rule. Its identity is (rule, ID,
// Address); the engine keeps the same *Backend across reloads while that
// identity is unchanged, so its counters and flags survive.
type Backend struct {
	Rule    string
	ID      string
	Address string
	Health  *Health

	weight   atomic.Int32
	disabled atomic.Bool
	draining atomic.Bool

	active atomic.Int64 // connections (or UDP sessions) open now
	total  atomic.Int64 // connections (or UDP sessions) ever opened
}

// New returns an enabled backend with the given weight. health may be nil,
// in which case the backend has a Health of its own.
func New(rule, id, address string, weight int, health *Health) *Backend {
	if health == nil {
		health = &Health{Address: address}
	}
	b := &Backend{Rule: rule, ID: id, Address: address, Health: health}
	b.weight.Store(int32(weight))
	return b
}

// Available reports whether routers may pick b for a new connection:
// enabled, healthy and not draining.
func (b *Backend) Available() bool {
	return !b.disabled.Load() && !b.draining.Load() && b.Health.Up()
}

// Weight is the backend's current weight (≥ 1).
func (b *Backend) Weight() int { return int(b.weight.Load()) }

// SetWeight changes the weight; routers apply it from their next pick.
func (b *Backend) SetWeight(w int) { b.weight.Store(int32(w)) }

// Enabled reports whether the backend is enabled.
func (b *Backend) Enabled() bool { return !b.disabled.Load() }

// SetEnabled enables or disables the backend.
func (b *Backend) SetEnabled(on bool) { b.disabled.Store(!on) }

// Draining reports whether the backend takes no new connections while its
// open ones run on.
func (b *Backend) Draining() bool { return b.draining.Load() }

// SetDraining starts or stops draining.
func (b *Backend) SetDraining(on bool) { b.draining.Store(on) }

// Active is the number of connections open to the backend now.
func (b *Backend) Active() int64 { return b.active.Load() }

// Total is the number of connections ever opened to the backend.
func (b *Backend) Total() int64 { return b.total.Load() }

// Acquire counts a new connection to the backend; call Release when it ends.
func (b *Backend) Acquire() {
	b.active.Add(1)
	b.total.Add(1)
}

// Release counts the end of a connection counted by Acquire.
func (b *Backend) Release() { b.active.Add(-1) }
