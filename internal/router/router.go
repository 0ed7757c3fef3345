// Package router chooses a backend for each new connection.
//
// A Router is built by a plugin's Factory for one rule's backends. Plugins
// register themselves in init() — one file per plugin — and the registry is
// the package's only global. See roundrobin.go for the smallest example and
// example_test.go for a plugin written from outside the package.
//
// The builtin plugins: round_robin (roundrobin.go), weighted (weighted.go:
// nginx's smooth weighted round robin, or weighted random), hash (hash.go:
// Maglev consistent hashing), least_connections (leastconn.go) and random
// (random.go: weighted random, or power of two choices).
//
// A pick does not visit every backend (only fallbacks do: a retry, or most
// backends down). What a router derives from weights and
// availability (a schedule, an alias table, a Maglev table) it caches and
// rebuilds when the version of its backends' backend.Set moves — one atomic
// load per pick tells it, and a change to another rule's backends does not —
// and what it needs to know about load (least_connections, bounded_load) the
// backends tell it on Acquire and Release (backend.WatchActive).
package router

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// ErrNoBackend is returned (wrapped) by Pick when no backend is available.
var ErrNoBackend = errors.New("no backend available")

// Router picks a backend for a new connection. Pick must be safe for
// concurrent use, must only return a backend for which req.Usable is true,
// and should not allocate.
type Router interface {
	Pick(req *Request) (*backend.Backend, error)
}

// Request describes the connection being routed: what the proxy knows of it.
// SNI, ALPN and Host are filled only when the proxy peeked at the client's
// first bytes, which it does when a matcher of the listener or the router
// asks for them (see Needer); they are empty otherwise, and when the client
// sent no such thing. A router must not keep ALPN past Pick.
type Request struct {
	// Client is the client's address (the real one when a PROXY header gave it).
	Client netip.AddrPort
	// Local is the address the client connected to: the listener's address,
	// and the connection's own local address (getsockname) when the listener
	// is bound to a wildcard address and the router needs NeedLocal. For UDP
	// it is always the listener's address.
	Local netip.AddrPort
	// SNI is the TLS server name of the ClientHello, lower case (NeedSNI).
	SNI string
	// ALPN is the protocols the ClientHello offers, in its order (NeedALPN).
	ALPN []string
	// Host is the HTTP/1.x Host header, lower case, without the port
	// (NeedHost).
	Host string

	tried []*backend.Backend // backends already dialled for this connection
}

// Needs says what a router needs the proxy to find out about a connection
// before it picks; the zero value is nothing beyond Client and Local.
type Needs uint8

const (
	NeedSNI   Needs = 1 << iota // Request.SNI: peek at the TLS ClientHello
	NeedALPN                    // Request.ALPN: peek at the TLS ClientHello
	NeedHost                    // Request.Host: peek at the HTTP request head
	NeedLocal                   // Request.Local exact on a wildcard TCP listener
)

// Needer is implemented by a router that needs more than the client's
// address. The proxy asks once per route table, when the router is
// published, and peeks (bounded by peek_timeout) only for listeners where a
// matcher or a router needs it. Peeking costs a goroutine and a read per
// connection, so a router should need only what its settings use.
type Needer interface {
	Needs() Needs
}

// NeedsOf returns what r needs (0 when r is not a Needer).
func NeedsOf(r Router) Needs {
	if n, ok := r.(Needer); ok {
		return n.Needs()
	}
	return 0
}

// Usable reports whether b is available and was not already tried for this
// request. Routers consider only usable backends.
func (r *Request) Usable(b *backend.Backend) bool {
	if !b.Available() {
		return false
	}
	for _, t := range r.tried {
		if t == b {
			return false
		}
	}
	return true
}

// Tried records that b was dialled and failed, so that the next Pick for this
// request returns another backend (retry elsewhere, at most once per backend).
func (r *Request) Tried(b *backend.Backend) { r.tried = append(r.tried, b) }

// Reset clears the request for reuse.
func (r *Request) Reset() {
	r.Client, r.Local = netip.AddrPort{}, netip.AddrPort{}
	r.SNI, r.ALPN, r.Host = "", nil, ""
	r.tried = r.tried[:0]
}

// Factory builds a router for a rule's backends from the plugin's settings.
// It is also called with no backends to validate the settings, so it must
// report every bad setting through params (see Params) and must accept an
// empty backend list.
type Factory func(params *Params, backends []*backend.Backend) (Router, error)

var (
	mu       sync.RWMutex
	registry = map[string]Factory{}
)

// Register makes a plugin available by name. It is meant to be called from
// init(); registering the same name twice is a programming error and panics.
func Register(plugin string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[plugin]; dup {
		panic(fmt.Sprintf("router: plugin %q registered twice", plugin))
	}
	registry[plugin] = f
}

// Plugins lists the registered plugin names, sorted.
func Plugins() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Known reports whether a plugin is registered.
func Known(plugin string) bool {
	mu.RLock()
	defer mu.RUnlock()
	_, ok := registry[plugin]
	return ok
}

// New builds a router with plugin for backends. config is the plugin's
// settings table; an unknown key or a bad value is an error naming the key
// and what is allowed.
func New(plugin string, config map[string]any, backends []*backend.Backend) (Router, error) {
	mu.RLock()
	f, ok := registry[plugin]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown router plugin %q (known: %s)", plugin, strings.Join(Plugins(), ", "))
	}
	p := &Params{m: config, used: map[string]bool{}}
	r, err := f(p, backends)
	if perr := p.err(); perr != nil {
		return nil, perr
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Validate checks a plugin name and its settings without building a router
// for real backends.
func Validate(plugin string, config map[string]any) error {
	_, err := New(plugin, config, nil)
	return err
}

// weightOf is b's weight as routers use it: its current effective weight,
// never below 1 (the config allows 1–10000; a lower value set at run time
// counts as 1 rather than starving or dividing by zero).
func weightOf(b *backend.Backend) int64 { return int64(max(b.Weight(), 1)) }

// NoBackend returns the error a router gives when nothing is usable.
func NoBackend(n int) error {
	return fmt.Errorf("%w (%d configured, none enabled, healthy and untried)", ErrNoBackend, n)
}
