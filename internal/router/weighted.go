package router

import (
	"sync"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// The weighted plugin. config = { smooth_weighted = true } (the default) is
// nginx's smooth weighted round robin; smooth_weighted = false is weighted
// random (the random plugin with choices = 1).
func init() {
	Register("weighted", func(p *Params, backends []*backend.Backend) (Router, error) {
		if p.Bool("smooth_weighted", true) {
			return newSmoothWeighted(backends), nil
		}
		return newRandom(backends, 1), nil
	})
}

// smoothWeighted is nginx's smooth weighted round robin
// (ngx_http_upstream_get_peer): every pick adds each usable backend's weight
// to its current weight, takes the backend with the highest current weight
// (the first in config order on a tie) and subtracts the total weight from
// it. Over every Σweight picks each backend is picked exactly weight times,
// spread out: weights 5,1,1 give a a b a c a a.
//
// nginx does that in O(backends) per pick. This does the same in O(distinct
// weights): backends of equal weight gain equally, so among them the one
// picked least often this cycle (the first in config order on a tie) has the
// highest current weight, and they take their turns in config order. Each
// such group is a rotation; a pick compares the groups' heads only. The
// result is the nginx sequence exactly (the tests compare the two).
//
// The groups are rebuilt when the backends' Set version shows that a weight or an
// availability changed (a weight change applies from the next pick); the
// state is a few fields under one mutex held for the few compares of a pick.
type smoothWeighted struct {
	backends []*backend.Backend
	set      *backend.Set

	mu      sync.Mutex
	version uint64      // set version the groups were checked at
	weights []int64     // weight of each backend the groups hold; 0 = unavailable then
	groups  []swrrGroup // the available backends by weight
	total   int64       // Σ weight of the available backends: one cycle
	step    int64       // picks made in the current cycle
}

// swrrGroup is the available backends of one weight, a rotation in config
// order. Members before next were picked n+1 times this cycle, the others n.
type swrrGroup struct {
	weight  int64
	members []int32 // indices into backends, ascending
	next    int     // the member whose turn it is
	n       int64
}

var _ Router = (*smoothWeighted)(nil)

func newSmoothWeighted(backends []*backend.Backend) *smoothWeighted {
	r := &smoothWeighted{
		backends: backends,
		weights:  make([]int64, len(backends)),
	}
	r.set = watchSet(r, backends)
	r.mu.Lock()
	r.refresh(r.set.Version())
	r.mu.Unlock()
	return r
}

// refresh re-reads weights and availability as of version v, and rebuilds
// the groups (starting a new cycle) only if they changed. r.mu is held.
func (r *smoothWeighted) refresh(v uint64) {
	r.version = v
	changed := false
	for i, b := range r.backends {
		var w int64
		if b.Available() {
			w = weightOf(b)
		}
		if r.weights[i] != w {
			r.weights[i] = w
			changed = true
		}
	}
	if !changed && r.groups != nil {
		return
	}
	// (Re)build: a new cycle starts from all current weights at zero.
	var groups []swrrGroup
	byW := map[int64]int{}
	r.total = 0
	for i, w := range r.weights {
		if w == 0 {
			continue
		}
		g, ok := byW[w]
		if !ok {
			g = len(groups)
			byW[w] = g
			groups = append(groups, swrrGroup{weight: w})
		}
		groups[g].members = append(groups[g].members, int32(i))
		r.total += w
	}
	r.groups = groups
	r.step = 0
}

func (r *smoothWeighted) Pick(req *Request) (*backend.Backend, error) {
	r.mu.Lock()
	if v := r.set.Version(); v != r.version {
		r.refresh(v)
	}
	if r.total == 0 {
		r.mu.Unlock()
		return nil, NoBackend(len(r.backends))
	}
	k := r.step + 1
	best, bestIdx := -1, int32(0)
	var bestCur int64
	for gi := range r.groups {
		g := &r.groups[gi]
		cur := k*g.weight - r.total*g.n // the head's current weight
		idx := g.members[g.next]
		if best < 0 || cur > bestCur || (cur == bestCur && idx < bestIdx) {
			best, bestIdx, bestCur = gi, idx, cur
		}
	}
	b := r.backends[bestIdx]
	if !req.Usable(b) {
		// Already tried for this request, or it went down since the groups
		// were built: answer with the best usable one, leaving the rotation
		// as it is (nginx's retry also skips tried peers).
		b = r.bestUsable(req, k)
		r.mu.Unlock()
		if b == nil {
			return nil, NoBackend(len(r.backends))
		}
		return b, nil
	}
	g := &r.groups[best]
	if g.next++; g.next == len(g.members) {
		g.next = 0
		g.n++
	}
	if r.step = k; r.step == r.total {
		// A cycle ends with every current weight back at zero.
		r.step = 0
		for gi := range r.groups {
			r.groups[gi].next, r.groups[gi].n = 0, 0
		}
	}
	r.mu.Unlock()
	return b, nil
}

// bestUsable returns the usable backend with the highest current weight at
// pick k (the first in config order on a tie), without changing the state.
// r.mu is held.
func (r *smoothWeighted) bestUsable(req *Request, k int64) *backend.Backend {
	var best *backend.Backend
	var bestIdx int32
	var bestCur int64
	for gi := range r.groups {
		g := &r.groups[gi]
		for p, idx := range g.members {
			n := g.n
			if p < g.next {
				n++
			}
			cur := k*g.weight - r.total*n
			b := r.backends[idx]
			if !req.Usable(b) {
				continue
			}
			if best == nil || cur > bestCur || (cur == bestCur && idx < bestIdx) {
				best, bestIdx, bestCur = b, idx, cur
			}
		}
	}
	return best
}
