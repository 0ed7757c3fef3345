package router

import (
	"sync"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// The least_connections plugin (no config): the usable backend with the
// fewest active connections per unit of weight (Active ÷ Weight); among
// equals, the next one in config order after the last pick, so equal
// backends take turns.
func init() {
	Register("least_connections", func(_ *Params, backends []*backend.Backend) (Router, error) {
		return newLeastConn(backends), nil
	})
}

// leastConn keeps the backends in a tournament tree (a segment tree whose
// every node holds the least loaded backend below it), as HAProxy's leastconn
// keeps a tree, instead of scanning every backend per pick as nginx does.
// Each backend tells the tree when its active count changes (Acquire and
// Release, via backend.WatchActive), which updates one leaf and its
// ancestors: O(log n). A pick reads the root and finds the first equally
// loaded backend after the last pick: O(log n). Weights and availability
// are re-read when the backends' Set version moves.
type leastConn struct {
	t *lcTree // all state lives here: the watchers must not reach leastConn itself
}

type lcTree struct {
	backends []*backend.Backend
	set      *backend.Set

	mu      sync.Mutex
	version uint64  // set version the weights were read at
	active  []int64 // per backend, as last told
	weight  []int64 // per backend; 0: unavailable
	size    int     // leaves: a power of two ≥ len(backends)
	node    []int32 // node[1] is the root; node[size+i] is leaf i; -1: no usable backend below
	next    int     // where the rotation among equals resumes
}

// lcLeaf is the watcher of one backend's active count.
type lcLeaf struct {
	t *lcTree
	i int
}

func (l *lcLeaf) ActiveChanged(b *backend.Backend) {
	t := l.t
	t.mu.Lock()
	t.active[l.i] = b.Active()
	t.fix(l.i)
	t.mu.Unlock()
}

var _ Router = (*leastConn)(nil)

func newLeastConn(backends []*backend.Backend) *leastConn {
	n := len(backends)
	size := 1
	for size < n {
		size *= 2
	}
	t := &lcTree{
		backends: backends,
		active:   make([]int64, n),
		weight:   make([]int64, n),
		size:     size,
		node:     make([]int32, 2*size),
	}
	r := &leastConn{t: t}
	leaves := make([]lcLeaf, n)
	watchActive(r, backends, func(i int) backend.ActiveWatcher {
		leaves[i] = lcLeaf{t: t, i: i}
		return &leaves[i]
	})
	t.set = watchSet(r, backends)
	t.mu.Lock()
	t.rebuild(t.set.Version())
	t.mu.Unlock()
	return r
}

// less reports whether backend i is less loaded than j (i < j on a tie, so
// that a node holds the first of its least loaded). -1 is worse than all.
func (t *lcTree) less(i, j int32) bool {
	if j < 0 || t.weight[j] == 0 {
		return i >= 0 && t.weight[i] != 0
	}
	if i < 0 || t.weight[i] == 0 {
		return false
	}
	// active[i]/weight[i] < active[j]/weight[j], without dividing.
	a, b := t.active[i]*t.weight[j], t.active[j]*t.weight[i]
	return a < b || (a == b && i < j)
}

// equal reports whether backends i and j are equally loaded.
func (t *lcTree) equal(i, j int32) bool {
	return t.active[i]*t.weight[j] == t.active[j]*t.weight[i]
}

func (t *lcTree) better(i, j int32) int32 {
	if t.less(j, i) {
		return j
	}
	return i
}

// rebuild re-reads every backend's weight, availability and count. t.mu is held.
func (t *lcTree) rebuild(v uint64) {
	t.version = v
	for i := range t.node[t.size:] {
		t.node[t.size+i] = -1
	}
	for i, b := range t.backends {
		t.weight[i] = 0
		if b.Available() {
			t.weight[i] = weightOf(b)
		}
		t.active[i] = b.Active()
		if t.weight[i] > 0 {
			t.node[t.size+i] = int32(i)
		}
	}
	for k := t.size - 1; k >= 1; k-- {
		t.node[k] = t.better(t.node[2*k], t.node[2*k+1])
	}
}

// fix recomputes leaf i's ancestors after its count changed. t.mu is held.
func (t *lcTree) fix(i int) {
	for k := (t.size + i) / 2; k >= 1; k /= 2 {
		old, now := t.node[k], t.better(t.node[2*k], t.node[2*k+1])
		t.node[k] = now
		if now == old && now != int32(i) {
			return // the same other backend wins here: nothing above changes
		}
	}
}

// firstFrom returns the first backend at index ≥ from that is as loaded as
// best (the least loaded), or -1.
func (t *lcTree) firstFrom(k, lo, hi, from int, best int32) int32 {
	j := t.node[k]
	if hi <= from || j < 0 || t.weight[j] == 0 || !t.equal(j, best) {
		return -1
	}
	if k >= t.size {
		return j
	}
	mid := (lo + hi) / 2
	if r := t.firstFrom(2*k, lo, mid, from, best); r >= 0 {
		return r
	}
	return t.firstFrom(2*k+1, mid, hi, from, best)
}

func (r *leastConn) Pick(req *Request) (*backend.Backend, error) {
	t := r.t
	t.mu.Lock()
	if v := t.set.Version(); v != t.version {
		t.rebuild(v)
	}
	best := int32(-1)
	if len(t.node) > 1 {
		best = t.node[1]
	}
	if best < 0 || t.weight[best] == 0 {
		t.mu.Unlock()
		return nil, NoBackend(len(t.backends))
	}
	// The root holds the first least loaded backend; take the first at or
	// after the rotation point instead, if there is one.
	i := best
	if t.next > 0 {
		if j := t.firstFrom(1, 0, t.size, t.next, best); j >= 0 {
			i = j
		}
	}
	b := t.backends[i]
	if !req.Usable(b) {
		i = t.scan(req)
		if i < 0 {
			t.mu.Unlock()
			return nil, NoBackend(len(t.backends))
		}
		b = t.backends[i]
	}
	t.next = int(i) + 1
	t.mu.Unlock()
	return b, nil
}

// scan is the exact answer by visiting every backend, for the rare pick
// whose best backend was already tried for the request (a retry) or went
// down since the weights were read. t.mu is held.
func (t *lcTree) scan(req *Request) int32 {
	n := len(t.backends)
	best := int32(-1)
	for k := 0; k < n; k++ {
		i := int32((t.next + k) % n)
		if t.weight[i] == 0 || !req.Usable(t.backends[i]) {
			continue
		}
		// Strictly less loaded only: among equals the first in rotation order stays.
		if best < 0 || t.active[i]*t.weight[best] < t.active[best]*t.weight[i] {
			best = i
		}
	}
	return best
}
