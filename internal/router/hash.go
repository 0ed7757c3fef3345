package router

import (
	"cmp"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// The hash plugin: consistent hashing of a key of the connection onto the
// backends, with a Maglev lookup table (Eisenbud et al., NSDI 2016, as in
// Envoy's maglev load balancer).
//
//	config = { hash_key = "client_ip" }   # or "client_ip_port" or "sni"; default "client_ip"
//	config = { bounded_load = 1.25 }      # optional; 0 (the default) is off
//
// The same key maps to the same backend in every process with the same
// backends (id and weight): the hash has no per-process seed and the table
// does not depend on the order of the backends in the file.
//
// A backend that is down, disabled or draining keeps its place in the table;
// its keys go on, each by its own probe sequence, to the next usable
// backends, so only its keys move and they come back when it does. Removing
// a backend from the config rebuilds the table, which moves about its share
// of the keys. Weights (the configured ones: a slow start does not move
// keys) set each backend's share of the table.
//
// bounded_load = c (HAProxy's hash-balance-factor, as c × 100; Mirrokni et
// al.'s consistent hashing with bounded loads) lets no backend take a new
// connection while it has c times its weighted share of the mean of active
// connections or more: the key goes on to the next backend of its probe
// sequence instead.
func init() {
	Register("hash", func(p *Params, backends []*backend.Backend) (Router, error) {
		key := p.Enum("hash_key", "client_ip", hashKeyNames()...)
		bound := p.Float("bounded_load", 0, 0, 100)
		if bound != 0 && bound < 1 {
			p.Errorf("bounded_load", "want 0 (off) or a factor from 1 to 100 (1.25: no backend above 1.25 × its share of the mean load), got %v", bound)
			bound = 0
		}
		r := newHash(backends, hashKeys[key], bound)
		r.needs = hashKeyNeeds[key]
		r.keyName = key
		return r, nil
	})
}

// hashKeys are the values hash_key takes: each hashes one property of the
// request. A key from another field of Request is one more entry here (and
// in hashKeyNeeds when the proxy must peek for it).
var hashKeys = map[string]func(*Request) uint64{
	"client_ip": func(r *Request) uint64 {
		return hashAddr(r.Client.Addr(), 0, false)
	},
	"client_ip_port": func(r *Request) uint64 {
		return hashAddr(r.Client.Addr(), r.Client.Port(), true)
	},
	// sni: the TLS server name (the proxy peeks at the ClientHello for it);
	// a connection without one hashes by client_ip.
	"sni": func(r *Request) uint64 {
		if r.SNI == "" {
			return hashAddr(r.Client.Addr(), 0, false)
		}
		h := uint64(fnvOffset)
		for i := 0; i < len(r.SNI); i++ {
			h = (h ^ uint64(r.SNI[i])) * fnvPrime
		}
		return fmix64(h)
	},
}

// hashKeyNeeds is what each hash_key needs the proxy to peek at.
var hashKeyNeeds = map[string]Needs{"sni": NeedSNI}

// Needs tells the proxy to peek at the ClientHello for hash_key = "sni".
func (r *hashRouter) Needs() Needs { return r.needs }

func hashKeyNames() []string {
	names := make([]string, 0, len(hashKeys))
	for k := range hashKeys {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// FNV-1a (64 bit) over the key's bytes, then MurmurHash3's 64-bit finaliser
// so that keys differing in one byte spread over the whole table. Fixed
// constants, no seed: every process computes the same value.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * fnvPrime
	}
	return h
}

func fnvBytes(h uint64, b []byte) uint64 {
	for _, c := range b {
		h = (h ^ uint64(c)) * fnvPrime
	}
	return h
}

func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// hashAddr hashes an IP address (an IPv4-mapped IPv6 address as the IPv4
// one), and its port when withPort.
func hashAddr(a netip.Addr, port uint16, withPort bool) uint64 {
	h := uint64(fnvOffset)
	a = a.Unmap()
	switch {
	case a.Is4():
		b := a.As4()
		h = fnvBytes(h, b[:])
	case a.Is6():
		b := a.As16()
		h = fnvBytes(h, b[:])
	}
	if withPort {
		h = (h ^ uint64(port>>8)) * fnvPrime
		h = (h ^ uint64(port&0xff)) * fnvPrime
	}
	return fmix64(h)
}

// maglevSizes are the table sizes: primes, the smallest at least 100 ×
// the number of backends is used (the Maglev paper's bound for a spread
// within about 1%).
var maglevSizes = []uint64{65537, 131071, 262147, 524287, 1048573, 2097143, 4194301}

func maglevSize(n int) uint64 {
	for _, m := range maglevSizes {
		if m >= 100*uint64(n) {
			return m
		}
	}
	return maglevSizes[len(maglevSizes)-1]
}

// hashProbes is how many table slots a pick tries before it falls back to
// an ordered scan of the backends (when nearly all are down).
const hashProbes = 32

type hashRouter struct {
	backends []*backend.Backend
	key      func(*Request) uint64
	keyName  string       // hash_key, for Explain
	needs    Needs        // what the key needs peeked
	bound    float64      // bounded_load; 0: off
	load     *activeTotal // Σ Active of backends, when bound > 0
	tables   *maglevTables
	set      *backend.Set             // the backends' routing-state version (bounded_load)
	usable   atomic.Pointer[usableAt] // Σ weight of the available backends (bounded_load)
}

// maglevTables holds a hash router's current table. The table is built by
// the goroutine that changes what it depends on — newHash for a new backend
// set (a reload), SetWeight's caller for a weight (backend.WatchWeight) —
// and published with an atomic pointer: a pick only reads it. The weight
// watchers reach this, never the router, so that a replaced router can be
// collected (watchActive).
type maglevTables struct {
	backends []*backend.Backend
	order    []int32 // backends by (ID, Address): the build's and the fallback scan's order

	mu    sync.Mutex // serialises rebuilds
	table atomic.Pointer[maglevTable]
}

// maglevTable is immutable once published.
type maglevTable struct {
	weights []int64  // each backend's weight the table was built with
	slots   []uint32 // slot → index into backends
}

// usableAt is the usable weight as of a version of the router's Set.
type usableAt struct {
	version uint64
	weight  int64
}

var _ Router = (*hashRouter)(nil)

func newHash(backends []*backend.Backend, key func(*Request) uint64, bound float64) *hashRouter {
	mt := &maglevTables{backends: backends}
	mt.order = make([]int32, len(backends))
	for i := range mt.order {
		mt.order[i] = int32(i)
	}
	slices.SortStableFunc(mt.order, func(a, b int32) int {
		x, y := backends[a], backends[b]
		return cmp.Or(cmp.Compare(x.ID, y.ID), cmp.Compare(x.Address, y.Address))
	})
	mt.rebuild()
	r := &hashRouter{backends: backends, key: key, bound: bound, tables: mt}
	if bound > 0 {
		r.set = watchSet(r, backends)
		r.load = newActiveTotal(r, backends)
	}
	watchFor(r, backends, func(_ int, b *backend.Backend) func() { return b.WatchWeight(mt) })
	return r
}

// WeightChanged rebuilds the table when a backend's weight changed
// (backend.WeightWatcher), on the goroutine that changed it.
func (mt *maglevTables) WeightChanged(*backend.Backend) { mt.rebuild() }

// rebuild builds and publishes the table for the backends' current
// weights, unless the published one has them.
func (mt *maglevTables) rebuild() {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	weights := make([]int64, len(mt.backends))
	for i, b := range mt.backends {
		weights[i] = hashWeight(b)
	}
	if t := mt.table.Load(); t != nil && slices.Equal(weights, t.weights) {
		return
	}
	mt.table.Store(&maglevTable{weights: weights, slots: mt.build(weights)})
}

// hashWeight is the weight a backend's share of the table is built with:
// the configured one, so that a slow start's ramp does not move keys.
func hashWeight(b *backend.Backend) int64 { return int64(max(b.ConfiguredWeight(), 1)) }

// usableWeight is Σ weight of the available backends, for bounded_load. It
// is summed again when the set's version moved (health, enabled, draining
// change without telling the routers), with one load per backend and no
// lock, and published for the picks that follow.
func (r *hashRouter) usableWeight(t *maglevTable) int64 {
	v := r.set.Version()
	if u := r.usable.Load(); u != nil && u.version == v {
		return u.weight
	}
	var w int64
	for i, b := range r.backends {
		if b.Available() {
			w += t.weights[i]
		}
	}
	r.usable.Store(&usableAt{version: v, weight: w})
	return w
}

// build fills a Maglev table: each backend walks its own permutation of the
// slots (offset and skip from the hash of its id) and takes the next free
// one in turn; a backend of weight w takes a turn in w ÷ max-weight of the
// rounds (Envoy's weighted Maglev), so its share of the slots follows its
// weight. Backends are visited in (ID, Address) order, so the file's order
// does not matter.
func (mt *maglevTables) build(weights []int64) []uint32 {
	n := len(mt.backends)
	if n == 0 {
		return nil
	}
	m := maglevSize(n)
	type entry struct {
		idx                uint32
		offset, skip, next uint64
		weight, credit     int64
	}
	entries := make([]entry, n)
	var maxW int64
	for k, i := range mt.order {
		b := mt.backends[i]
		h := fnvString(fnvOffset, b.ID)
		entries[k] = entry{
			idx:    uint32(i),
			offset: fmix64(h) % m,
			skip:   fmix64(h^0x9e3779b97f4a7c15)%(m-1) + 1,
			weight: weights[i],
		}
		maxW = max(maxW, weights[i])
	}
	const free = ^uint32(0)
	slots := make([]uint32, m)
	for i := range slots {
		slots[i] = free
	}
	for filled := uint64(0); ; {
		for k := range entries {
			e := &entries[k]
			if e.credit += e.weight; e.credit < maxW {
				continue
			}
			e.credit -= maxW
			c := (e.offset + e.next*e.skip) % m
			for slots[c] != free {
				e.next++
				c = (e.offset + e.next*e.skip) % m
			}
			slots[c] = e.idx
			e.next++
			if filled++; filled == m {
				return slots
			}
		}
	}
}

func (r *hashRouter) Pick(req *Request) (*backend.Backend, error) {
	t := r.tables.table.Load()
	m := uint64(len(t.slots))
	if m == 0 {
		return nil, NoBackend(len(r.backends))
	}
	h := r.key(req)
	slot := h % m
	step := fmix64(h^0x9e3779b97f4a7c15)%(m-1) + 1
	var fallback *backend.Backend // the first usable one, if all are over the bound
	for range hashProbes {
		b := r.backends[t.slots[slot]]
		if req.Usable(b) {
			if r.underBound(t, b) {
				return b, nil
			}
			if fallback == nil {
				fallback = b
			}
		}
		if slot += step; slot >= m {
			slot -= m
		}
	}
	// Nearly everything is down (or loaded): scan in a fixed order from a
	// place the key decides, so that this too is the same in every process.
	order := r.tables.order
	n := uint64(len(order))
	start := h % n
	for k := uint64(0); k < n; k++ {
		b := r.backends[order[(start+k)%n]]
		if req.Usable(b) {
			if r.underBound(t, b) {
				return b, nil
			}
			if fallback == nil {
				fallback = b
			}
		}
	}
	if fallback != nil {
		return fallback, nil
	}
	return nil, NoBackend(len(r.backends))
}

// underBound reports whether b may take one more connection under
// bounded_load: (its active + 1) ≤ ⌈c × (Σ active + 1) × its weight ÷ Σ usable weight⌉.
func (r *hashRouter) underBound(t *maglevTable, b *backend.Backend) bool {
	if r.bound == 0 {
		return true
	}
	usable := r.usableWeight(t)
	if usable <= 0 {
		return true
	}
	total := max(r.load.sum.Load(), 0)
	limit := math.Ceil(r.bound * float64(total+1) * float64(hashWeight(b)) / float64(usable))
	return float64(b.Active()+1) <= limit
}
