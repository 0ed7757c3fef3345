package router

import (
	"sync/atomic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// roundRobin rotates strictly over the usable backends. The rotation is one
// atomic counter: a pick takes no lock. An unusable backend is skipped
// without disturbing the order of the rest.
type roundRobin struct {
	backends []*backend.Backend
	next     atomic.Uint64
}

var _ Router = (*roundRobin)(nil)

func init() {
	Register("round_robin", func(_ *Params, backends []*backend.Backend) (Router, error) {
		return &roundRobin{backends: backends}, nil
	})
}

func (r *roundRobin) Pick(req *Request) (*backend.Backend, error) {
	n := uint64(len(r.backends))
	if n == 0 {
		return nil, NoBackend(0)
	}
	start := r.next.Add(1) - 1
	for i := uint64(0); i < n; i++ {
		b := r.backends[(start+i)%n]
		if req.Usable(b) {
			if i > 0 {
				// Keep the rotation strict over the usable set: the next pick
				// starts after the backend we chose, not after the skipped one.
				r.next.CompareAndSwap(start+1, start+i+1)
			}
			return b, nil
		}
	}
	return nil, NoBackend(len(r.backends))
}
