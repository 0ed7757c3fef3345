package router

import "github.com/dynamic-proxy/dynamic-proxy/internal/backend"

// hostHash sends every connection for one HTTP Host to the same backend,
// whatever the client: rendezvous hashing, where each usable backend scores
// hash(Host, backend id) and the highest score wins. When a backend goes
// away only its hosts move, and they come back with it. A connection
// without a Host (not HTTP/1.x, or none within peek_timeout) hashes by
// the client's IP address instead. Weights are not used.
type hostHash struct {
	backends []*backend.Backend
}

var _ Router = (*hostHash)(nil)
var _ Needer = (*hostHash)(nil)

func init() {
	Register("host_hash", func(p *Params, backends []*backend.Backend) (Router, error) {
		return &hostHash{backends: backends}, nil
	})
}

// Needs tells the proxy to peek at the HTTP request head for Request.Host.
func (h *hostHash) Needs() Needs { return NeedHost }

func (h *hostHash) Pick(req *Request) (*backend.Backend, error) {
	key := fnv1a(fnv1aInit, req.Host)
	if req.Host == "" {
		ip := req.Client.Addr().Unmap().As16()
		key = fnv1a(fnv1aInit, string(ip[:])) // the string does not escape: no allocation
	}
	var best *backend.Backend
	var bestScore uint64
	for _, b := range h.backends {
		if !req.Usable(b) {
			continue
		}
		if s := mix(fnv1a(key, b.ID)); best == nil || s > bestScore {
			best, bestScore = b, s
		}
	}
	if best == nil {
		return nil, NoBackend(len(h.backends))
	}
	return best, nil
}

// fnv1a is 64-bit FNV-1a over s, from h; mix (MurmurHash3's finaliser)
// spreads keys that differ in one byte. No seed: every process agrees.
const fnv1aInit = 14695981039346656037

func fnv1a(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
