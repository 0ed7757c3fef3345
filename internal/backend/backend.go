// Package backend holds the runtime state of upstream servers. Everything a
// router reads on the pick path is an atomic, so picking takes no lock.
package backend

import (
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
)

// Backend is one upstream server of one rule. Its identity is (rule, ID,
// Address); the engine keeps the same *Backend across reloads while that
// identity is unchanged, so its counters and flags survive.
type Backend struct {
	Rule    string
	ID      string
	Address string
	// Source is the DNS name (a rule's [[rules.discovery]]) the backend
	// came from; "" for one from the file, the admin API or the fleet.
	Source string

	target Target // Address parsed once, for the data path

	health   atomic.Pointer[Health] // shared with every backend of the same address and check
	weight   atomic.Int32
	disabled atomic.Bool
	draining atomic.Bool
	tier     atomic.Int32 // priority tier, lower first (shown; routers take theirs when built)

	maxConns atomic.Int64 // 0: no limit

	loops []loopCounts // connections and bytes, split by event loop (Acquire, AddBytesIn)

	sets           sets                            // the Sets b is in: their versions move with b's routing state
	watchers       atomic.Pointer[[]ActiveWatcher] // told of every change of active
	weightWatchers atomic.Pointer[[]WeightWatcher] // told of every change of the configured weight
}

// New returns an enabled backend with the given weight. health may be nil,
// in which case the backend has a Health of its own.
func New(rule, id, address string, weight int, health *Health) *Backend {
	if health == nil {
		health = &Health{Address: address}
	}
	b := &Backend{Rule: rule, ID: id, Address: address, loops: make([]loopCounts, byteShards), target: parseTarget(address)}
	b.health.Store(health)
	b.weight.Store(int32(weight))
	return b
}

// Target is a backend's address as the data path dials it.
type Target struct {
	// Addr is the address when Address is an IP literal (an IPv6 zone given
	// as its interface index, looked up once here rather than on every
	// connect); invalid when Address names a host.
	Addr netip.AddrPort
	Host string // the host name to resolve, when Addr is invalid
	Port uint16
}

// Target returns the backend's parsed address.
func (b *Backend) Target() *Target { return &b.target }

func parseTarget(address string) Target {
	if ap, err := netip.ParseAddrPort(address); err == nil {
		return Target{Addr: netip.AddrPortFrom(resolve.NumericZone(ap.Addr()), ap.Port()), Port: ap.Port()}
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return Target{Host: address}
	}
	p, _ := strconv.ParseUint(port, 10, 16) // the config allows numeric ports only
	return Target{Host: host, Port: uint16(p)}
}

// Health is the backend's health, shared by every backend (of any rule)
// with the same address and health check.
func (b *Backend) Health() *Health { return b.health.Load() }

// SetHealth points the backend at another Health (its rule's health check
// changed on a reload).
func (b *Backend) SetHealth(h *Health) {
	watchMu.Lock()
	old := b.health.Swap(h)
	if old != h {
		// b's sets now hear of h's transitions instead of old's.
		if l := b.sets.Load(); l != nil {
			for _, s := range *l {
				removeSet(&old.sets, s)
				addSet(&h.sets, s)
			}
		}
	}
	watchMu.Unlock()
	if old != h {
		bump(&b.sets)
	}
}

// Available reports whether routers may pick b for a new connection:
// enabled, healthy and not draining.
func (b *Backend) Available() bool {
	if m := b.maxConns.Load(); m > 0 && b.Active() >= m {
		return false
	}
	return !b.disabled.Load() && !b.draining.Load() && b.health.Load().Up()
}

// MaxConnections is the cap on concurrent connections (0: none).
func (b *Backend) MaxConnections() int { return int(b.maxConns.Load()) }

// SetMaxConnections sets the cap on concurrent connections; at the cap the
// backend is not Available, so every router skips it. 0 removes the cap.
func (b *Backend) SetMaxConnections(n int) {
	if b.maxConns.Swap(int64(n)) != int64(n) {
		bump(&b.sets)
	}
}

// Weight is the backend's effective weight (≥ 1): the configured weight,
// ramped up from 1 while a slow start is in progress (see Health).
func (b *Backend) Weight() int { return b.health.Load().scale(int(b.weight.Load())) }

// ConfiguredWeight is the weight set by the config or SetWeight.
func (b *Backend) ConfiguredWeight() int { return int(b.weight.Load()) }

// SetWeight changes the weight; routers apply it from their next pick.
// The weight watchers are told first, on the caller's goroutine, so that a
// router rebuilds what it derives from weights here rather than in a pick.
func (b *Backend) SetWeight(w int) {
	if b.weight.Swap(int32(w)) != int32(w) {
		if ws := b.weightWatchers.Load(); ws != nil {
			for _, x := range *ws {
				x.WeightChanged(b)
			}
		}
		bump(&b.sets)
	}
}

// WeightWatcher is told after each change of a backend's configured weight,
// on the goroutine that made it (the one calling SetWeight).
type WeightWatcher interface {
	WeightChanged(b *Backend)
}

// WatchWeight adds w to the watchers of b's configured weight and returns
// a function that removes it again.
func (b *Backend) WatchWeight(w WeightWatcher) (stop func()) {
	return addWatcher(&b.weightWatchers, w)
}

// Tier is the backend's priority tier (0 first) as last set.
func (b *Backend) Tier() int { return int(b.tier.Load()) }

// SetTier records the backend's priority tier. Routers group backends by
// tier when they are built (router.NewTiered), so a change reaches the
// picks through a rebuilt router.
func (b *Backend) SetTier(t int) { b.tier.Store(int32(t)) }

// Enabled reports whether the backend is enabled.
func (b *Backend) Enabled() bool { return !b.disabled.Load() }

// SetEnabled enables or disables the backend.
func (b *Backend) SetEnabled(on bool) {
	if b.disabled.Swap(!on) != !on {
		bump(&b.sets)
	}
}

// Draining reports whether the backend takes no new connections while its
// open ones run on.
func (b *Backend) Draining() bool { return b.draining.Load() }

// SetDraining starts or stops draining.
func (b *Backend) SetDraining(on bool) {
	if b.draining.Swap(on) != on {
		bump(&b.sets)
	}
}

// Active is the number of connections open to the backend now: the sum of
// the loops' shares (a loop's share can be negative, when a connection
// ends on another loop than the one that opened it).
func (b *Backend) Active() int64 {
	var n int64
	for i := range b.loops {
		n += b.loops[i].active.Load()
	}
	return n
}

// Total is the number of connections ever opened to the backend.
func (b *Backend) Total() int64 {
	var n int64
	for i := range b.loops {
		n += b.loops[i].total.Load()
	}
	return n
}

// Acquire counts a new connection (UDP: session; DNS: query in flight) to
// the backend, opened by event loop loop (any number: it picks the loop's
// share); call Release when it ends.
func (b *Backend) Acquire(loop int) {
	s := b.share(loop)
	s.active.Add(1)
	s.total.Add(1)
	b.notify()
}

// Release counts the end of a connection counted by Acquire, on event loop
// loop (not necessarily the one that opened it).
func (b *Backend) Release(loop int) {
	b.share(loop).active.Add(-1)
	b.notify()
}

func (b *Backend) share(loop int) *loopCounts { return &b.loops[loop&(len(b.loops)-1)] }

func (b *Backend) notify() {
	if ws := b.watchers.Load(); ws != nil {
		for _, w := range *ws {
			w.ActiveChanged(b)
		}
	}
}

// ActiveWatcher is told after each change of a backend's active count, on
// the goroutine that made it (the one calling Acquire or Release), so it must
// be quick and must not call Acquire or Release. It reads the new count with
// Active. The least_connections router keeps its index of backends by load
// up to date this way instead of scanning every backend on every pick.
type ActiveWatcher interface {
	ActiveChanged(b *Backend)
}

var watchMu sync.Mutex // serialises changes to any backend's watcher list

// WatchActive adds w to the watchers of b's active count and returns a
// function that removes it again. Watching costs Acquire and Release one
// call per watcher; a backend nobody watches pays one atomic load.
func (b *Backend) WatchActive(w ActiveWatcher) (stop func()) {
	return addWatcher(&b.watchers, w)
}

// addWatcher adds w to the watcher list at p (a new list, under watchMu:
// readers load it without a lock) and returns the function that removes it
// again, once.
func addWatcher[W comparable](p *atomic.Pointer[[]W], w W) (stop func()) {
	watchMu.Lock()
	defer watchMu.Unlock()
	var ws []W
	if old := p.Load(); old != nil {
		ws = append(ws, *old...)
	}
	ws = append(ws, w)
	p.Store(&ws)
	var once sync.Once
	return func() { once.Do(func() { removeWatcher(p, w) }) }
}

// removeWatcher takes the first w out of the watcher list at p.
func removeWatcher[W comparable](p *atomic.Pointer[[]W], w W) {
	watchMu.Lock()
	defer watchMu.Unlock()
	old := p.Load()
	if old == nil {
		return
	}
	ws := make([]W, 0, len(*old))
	removed := false
	for _, x := range *old {
		if !removed && x == w {
			removed = true
			continue
		}
		ws = append(ws, x)
	}
	if len(ws) == 0 {
		p.Store(nil)
		return
	}
	p.Store(&ws)
}

// Watchers is the number of active-count watchers of b.
func (b *Backend) Watchers() int {
	if ws := b.watchers.Load(); ws != nil {
		return len(*ws)
	}
	return 0
}

// loopCounts is one event loop's share of a backend's counters, a cache
// line of its own: loops running on different CPUs count the connections
// they open and the bytes they move without taking the line from one
// another (or from the fields the routers read on every pick).
type loopCounts struct {
	in, out       atomic.Int64 // bytes: client to backend, backend to client
	active, total atomic.Int64 // connections open (the loop's share: may be negative), ever opened
	_             [64 - 32]byte
}

// byteShards is how many ways the loops' counters are split: the CPUs,
// rounded up to a power of two, at most 64. The split is a slice of its own
// (never next to the fields the routers read), and a power-of-two number
// of 64-byte shares is allocated 64-byte aligned, one cache line each.
var byteShards = func() int {
	n := 1
	for n < min(runtime.NumCPU(), 64) {
		n *= 2
	}
	return n
}()

// Shards is how many ways counters split by event loop are split (a power
// of two: a loop's share is loop & (Shards()-1)).
func Shards() int { return byteShards }

// AddBytesIn counts n bytes proxied from a client to the backend by event
// loop loop (any number: it picks the loop's share of the counters).
func (b *Backend) AddBytesIn(loop int, n int64) { b.share(loop).in.Add(n) }

// AddBytesOut counts n bytes proxied from the backend to a client.
func (b *Backend) AddBytesOut(loop int, n int64) { b.share(loop).out.Add(n) }

// Bytes returns the bytes proxied to and from the backend so far.
func (b *Backend) Bytes() (in, out int64) {
	for i := range b.loops {
		in += b.loops[i].in.Load()
		out += b.loops[i].out.Load()
	}
	return in, out
}
