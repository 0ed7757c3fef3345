package router

// The second worked example of docs/routers.md "Writing a router": as a real
// plugin this would be internal/router/first_available.go, word for word.

import "github.com/dynamic-proxy/dynamic-proxy/internal/backend"

// firstAvailable sends every connection to the first usable backend in
// config order (with order = "reverse", the last).
type firstAvailable struct {
	backends []*backend.Backend
	reverse  bool
}

var _ Router = (*firstAvailable)(nil)

func init() {
	Register("first_available", func(p *Params, backends []*backend.Backend) (Router, error) {
		order := p.Enum("order", "config", "config", "reverse")
		return &firstAvailable{backends: backends, reverse: order == "reverse"}, nil
	})
}

func (f *firstAvailable) Pick(req *Request) (*backend.Backend, error) {
	n := len(f.backends)
	for i := range n {
		j := i
		if f.reverse {
			j = n - 1 - i
		}
		if b := f.backends[j]; req.Usable(b) {
			return b, nil
		}
	}
	return nil, NoBackend(n)
}
