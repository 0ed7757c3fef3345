package router

import (
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// watchActive has every backend tell watcher(i) (i its index in backends)
// of each change of its active count, until owner is garbage collected:
// a router that a reload replaced stops costing Acquire and Release
// anything once the last connection using it is gone. The watchers must not
// reach owner, or it would never be collected.
func watchActive[T any](owner *T, backends []*backend.Backend, watcher func(i int) backend.ActiveWatcher) {
	watchFor(owner, backends, func(i int, b *backend.Backend) func() { return b.WatchActive(watcher(i)) })
}

// watchFor calls watch for every backend and the stop functions it returns
// when owner is garbage collected.
func watchFor[T any](owner *T, backends []*backend.Backend, watch func(i int, b *backend.Backend) (stop func())) {
	if len(backends) == 0 {
		return
	}
	stops := make([]func(), len(backends))
	for i, b := range backends {
		stops[i] = watch(i, b)
	}
	runtime.AddCleanup(owner, func(stops []func()) {
		for _, stop := range stops {
			stop()
		}
	}, stops)
}

// activeTotal keeps Σ Active of a set of backends, so that a pick reads it
// with one atomic load instead of visiting every backend.
type activeTotal struct {
	mu  sync.Mutex
	sum atomic.Int64
}

// totalLeaf is one backend's part of an activeTotal.
type totalLeaf struct {
	t    *activeTotal
	seen int64 // this backend's count as last added to sum; under t.mu
}

func (l *totalLeaf) ActiveChanged(b *backend.Backend) {
	l.t.mu.Lock()
	a := b.Active()
	l.t.sum.Add(a - l.seen)
	l.seen = a
	l.t.mu.Unlock()
}

// newActiveTotal watches backends for owner's lifetime.
func newActiveTotal[T any](owner *T, backends []*backend.Backend) *activeTotal {
	t := &activeTotal{}
	leaves := make([]totalLeaf, len(backends))
	watchActive(owner, backends, func(i int) backend.ActiveWatcher {
		leaves[i].t = t
		return &leaves[i]
	})
	// Count what was open before the watchers were in place; a change since
	// is counted once either way, since a leaf adds the difference from what
	// it last saw.
	for i, b := range backends {
		leaves[i].ActiveChanged(b)
	}
	return t
}

// watchSet returns the routing-state version of backends (backend.Set) for
// owner's lifetime: the set is closed when owner is garbage collected, so a
// router a reload replaced stops costing the backends' setters anything.
// The caller keeps the set where the backends' watchers cannot reach owner.
func watchSet[T any](owner *T, backends []*backend.Backend) *backend.Set {
	s := backend.NewSet(backends)
	if len(backends) > 0 {
		runtime.AddCleanup(owner, func(s *backend.Set) { s.Close() }, s)
	}
	return s
}
