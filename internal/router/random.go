package router

import (
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// The random plugin: config = { choices = 1 } (the default) picks a usable
// backend at random, each with probability weight ÷ Σweight; choices = 2 is
// power-of-two-choices: two different backends drawn that way, and the one
// with fewer active connections per unit of weight wins.
func init() {
	Register("random", func(p *Params, backends []*backend.Backend) (Router, error) {
		return newRandom(backends, p.Int("choices", 1, 1, 2)), nil
	})
}

// random draws from an alias table (Walker's alias method, Vose's
// construction) of the available backends' weights, rebuilt when their
// Set's version moves: a draw is one call to math/rand/v2's per-thread
// generator and two array reads, O(1) however many backends, with no lock.
type random struct {
	backends []*backend.Backend
	set      *backend.Set
	choices  int

	mu    sync.Mutex // serialises rebuilds
	table atomic.Pointer[randTable]
}

// randTable is immutable once published, but for its version, which moves
// on when a check finds nothing of this router's changed.
type randTable struct {
	version atomic.Uint64
	weights []int64 // each backend's weight when built; 0 = unavailable
	// One bucket per available backend: a draw picks a bucket uniformly and
	// keeps it with probability thresh ÷ 2³², else takes its alias.
	idx    []int32  // the backend of each bucket
	thresh []uint64 // in [0, 2³²]
	alias  []int32  // bucket
}

var _ Router = (*random)(nil)

// rejections is how many draws a pick makes before falling back to an
// exact scan when the drawn backends are unusable for the request (tried
// already, or gone down since the table was built).
const rejections = 4

func newRandom(backends []*backend.Backend, choices int) *random {
	r := &random{backends: backends, choices: choices}
	t := &randTable{weights: make([]int64, len(backends))}
	r.set = watchSet(r, backends)
	t.version.Store(^r.set.Version()) // differs: the first pick builds
	r.table.Store(t)
	r.current()
	return r
}

// current returns the table as of the set's version.
func (r *random) current() *randTable {
	t := r.table.Load()
	v := r.set.Version()
	if t.version.Load() == v {
		return t
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t = r.table.Load()
	if t.version.Load() == v {
		return t
	}
	weights := make([]int64, len(r.backends))
	same := true
	for i, b := range r.backends {
		if b.Available() {
			weights[i] = weightOf(b)
		}
		same = same && weights[i] == t.weights[i]
	}
	if same && t.idx != nil {
		t.version.Store(v)
		return t
	}
	nt := newRandTable(weights)
	nt.version.Store(v)
	r.table.Store(nt)
	return nt
}

// newRandTable builds the alias table in exact integer arithmetic: bucket k
// holds n × weight units of a capacity of Σweight each.
func newRandTable(weights []int64) *randTable {
	t := &randTable{weights: weights, idx: []int32{}}
	var total uint64
	for i, w := range weights {
		if w > 0 {
			t.idx = append(t.idx, int32(i))
			total += uint64(w)
		}
	}
	n := len(t.idx)
	t.thresh = make([]uint64, n)
	t.alias = make([]int32, n)
	units := make([]uint64, n)
	var small, large []int32
	for k, i := range t.idx {
		units[k] = uint64(weights[i]) * uint64(n)
		t.alias[k] = int32(k)
		if units[k] < total {
			small = append(small, int32(k))
		} else {
			large = append(large, int32(k))
		}
	}
	for len(small) > 0 && len(large) > 0 {
		s, l := small[len(small)-1], large[len(large)-1]
		small = small[:len(small)-1]
		t.thresh[s] = scale32(units[s], total)
		t.alias[s] = l
		units[l] -= total - units[s]
		if units[l] < total {
			large = large[:len(large)-1]
			small = append(small, l)
		}
	}
	for _, k := range append(small, large...) {
		t.thresh[k] = 1 << 32 // keeps itself
	}
	return t
}

// scale32 is ⌊units × 2³² ÷ total⌋, for units ≤ total.
func scale32(units, total uint64) uint64 {
	hi, lo := bits.Mul64(units, 1<<32)
	q, _ := bits.Div64(hi, lo, total)
	return q
}

// draw returns a backend with probability weight ÷ Σweight.
func (t *randTable) draw() int32 {
	x := rand.Uint64()
	k := (x >> 32) * uint64(len(t.idx)) >> 32
	if x&(1<<32-1) >= t.thresh[k] {
		k = uint64(t.alias[k])
	}
	return t.idx[k]
}

func (r *random) Pick(req *Request) (*backend.Backend, error) {
	t := r.current()
	if len(t.idx) == 0 {
		return nil, NoBackend(len(r.backends))
	}
	first := r.pickOne(req, t, -1)
	if first < 0 {
		return nil, NoBackend(len(r.backends))
	}
	if r.choices == 1 {
		return r.backends[first], nil
	}
	second := r.pickOne(req, t, first)
	if second < 0 {
		return r.backends[first], nil
	}
	a, b := r.backends[first], r.backends[second]
	// Fewer active connections per unit of weight wins: a/wa <= b/wb.
	if a.Active()*t.weights[second] <= b.Active()*t.weights[first] {
		return a, nil
	}
	return b, nil
}

// pickOne draws a backend usable for req other than except (-1: none),
// or returns -1 when there is none.
func (r *random) pickOne(req *Request, t *randTable, except int32) int32 {
	for range rejections {
		i := t.draw()
		if i != except && req.Usable(r.backends[i]) {
			return i
		}
	}
	// Exact fallback: a weighted draw over the usable backends, by scanning.
	var sum uint64
	for i, b := range r.backends {
		if int32(i) != except && t.weights[i] > 0 && req.Usable(b) {
			sum += uint64(t.weights[i])
		}
	}
	if sum == 0 {
		return -1
	}
	x := rand.Uint64N(sum)
	for i, b := range r.backends {
		if int32(i) != except && t.weights[i] > 0 && req.Usable(b) {
			w := uint64(t.weights[i])
			if x < w {
				return int32(i)
			}
			x -= w
		}
	}
	return -1 // a backend went down during the scan
}
