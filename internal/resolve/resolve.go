// Package resolve is the proxy's one resolver of backend host names, for TCP
// and UDP alike: asynchronous, cached, bounded.
//
// An event loop never waits for it. Lookup answers at once from the cache
// when it can — a fresh answer, or a stale one while a refresh runs in the
// background — and otherwise starts the lookup on a goroutine and calls the
// caller's function when it is done; the loop posts that back to itself. A
// failed refresh keeps the last good answer (stale-while-error) and tries
// again after NegativeTTL; a name that never resolved is remembered as
// failed for NegativeTTL. Go's resolver does not report record TTLs, so the
// cache keeps an answer for a fixed TTL.
package resolve

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a Resolver's settings.
const (
	DefaultTTL         = 30 * time.Second
	DefaultNegativeTTL = 5 * time.Second
	DefaultTimeout     = 5 * time.Second
	DefaultMaxEntries  = 4096
)

// LookupFunc returns the addresses of host (A and AAAA records).
type LookupFunc func(ctx context.Context, host string) ([]netip.Addr, error)

// Result is a host's addresses, or why it has none.
type Result struct {
	Addrs []netip.Addr // every address, in the resolver's order; shared: do not modify
	Err   error
}

// Resolver caches host name lookups. Its methods are safe for concurrent use.
type Resolver struct {
	lookup      LookupFunc
	ttl, negTTL time.Duration
	timeout     time.Duration
	max         int
	now         func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
}

type entry struct {
	res      Result    // the last answer: good addresses are kept over a failed refresh
	expires  time.Time // zero: never answered yet
	inflight bool
	waiters  []func(Result)
}

// Options configure a Resolver; zero values take the defaults.
type Options struct {
	Lookup      LookupFunc // nil: the system resolver (net.DefaultResolver)
	TTL         time.Duration
	NegativeTTL time.Duration
	Timeout     time.Duration // per lookup
	MaxEntries  int
	Now         func() time.Time // nil: time.Now (tests move time by hand)
}

// New returns a resolver.
func New(o Options) *Resolver {
	r := &Resolver{lookup: o.Lookup, ttl: o.TTL, negTTL: o.NegativeTTL, timeout: o.Timeout, max: o.MaxEntries, now: o.Now,
		entries: map[string]*entry{}}
	if r.lookup == nil {
		r.lookup = SystemLookup
	}
	if r.ttl <= 0 {
		r.ttl = DefaultTTL
	}
	if r.negTTL <= 0 {
		r.negTTL = DefaultNegativeTTL
	}
	if r.timeout <= 0 {
		r.timeout = DefaultTimeout
	}
	if r.max <= 0 {
		r.max = DefaultMaxEntries
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

var defaultResolver = sync.OnceValue(func() *Resolver { return New(Options{}) })

// Default is the process's resolver, with the default settings.
func Default() *Resolver { return defaultResolver() }

// Lookup returns host's addresses at once when the cache has an answer to
// give (ok true): a fresh one, or the last good one while a refresh runs
// in the background. Otherwise it returns ok false and calls done (unless
// nil), on another goroutine, once the lookup has finished. A cache hit
// does not allocate.
func (r *Resolver) Lookup(host string, done func(Result)) (res Result, ok bool) {
	now := r.now()
	r.mu.Lock()
	e := r.entries[host]
	if e != nil && !e.expires.IsZero() {
		fresh := now.Before(e.expires)
		if fresh || len(e.res.Addrs) > 0 {
			if !fresh && !e.inflight {
				e.inflight = true
				go r.run(host, e)
			}
			res = e.res
			r.mu.Unlock()
			return res, true
		}
	}
	if e == nil {
		r.evict(now)
		e = &entry{}
		r.entries[host] = e
	}
	if done != nil {
		e.waiters = append(e.waiters, done)
	}
	if !e.inflight {
		e.inflight = true
		go r.run(host, e)
	}
	r.mu.Unlock()
	return Result{}, false
}

// evict makes room for one more entry: expired answers go first, then any
// answer not being looked up. Called with r.mu held.
func (r *Resolver) evict(now time.Time) {
	if len(r.entries) < r.max {
		return
	}
	for h, e := range r.entries {
		if !e.inflight && !now.Before(e.expires) {
			delete(r.entries, h)
		}
	}
	for h, e := range r.entries {
		if len(r.entries) < r.max {
			return
		}
		if !e.inflight {
			delete(r.entries, h)
		}
	}
}

// run looks host up and stores the answer in e.
func (r *Resolver) run(host string, e *entry) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	addrs, err := r.lookup(ctx, host)
	cancel()
	if err == nil && len(addrs) == 0 {
		err = fmt.Errorf("host %q has no address", host)
	}
	now := r.now()
	r.mu.Lock()
	switch {
	case err == nil:
		e.res = Result{Addrs: addrs}
		e.expires = now.Add(r.ttl)
	case len(e.res.Addrs) > 0: // stale-while-error: keep serving the last good answer
		e.expires = now.Add(r.negTTL)
	default:
		e.res = Result{Err: err}
		e.expires = now.Add(r.negTTL)
	}
	e.inflight = false
	waiters := e.waiters
	e.waiters = nil
	res := e.res
	r.mu.Unlock()
	for _, f := range waiters {
		f(res)
	}
}

// SystemLookup is the system resolver's lookup (NetLookup of System()).
func SystemLookup(ctx context.Context, host string) ([]netip.Addr, error) {
	return NetLookup(System())(ctx, host)
}

var system atomic.Pointer[net.Resolver]

// System is the resolver backend host names are looked up with:
// net.DefaultResolver, or the DNS server SetServer named.
func System() *net.Resolver {
	if r := system.Load(); r != nil {
		return r
	}
	return net.DefaultResolver
}

// SetServer makes System ask the DNS server at addr ("ip:port"; "": the
// system's configuration again), over UDP and, for long answers, TCP.
func SetServer(addr string) {
	if addr == "" {
		system.Store(nil)
		return
	}
	system.Store(ServerResolver(addr))
}

// ServerResolver is a resolver that asks only the DNS server at addr.
func ServerResolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
}

// NetLookup is r's lookup: every IPv4 and IPv6 address of host,
// IPv4-mapped ones unmapped, and zones given as interface indexes, so that
// connecting to an address needs no interface lookup.
func NetLookup(r *net.Resolver) LookupFunc {
	return func(ctx context.Context, host string) ([]netip.Addr, error) {
		ips, err := r.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, err
		}
		out := make([]netip.Addr, 0, len(ips))
		for _, a := range ips {
			out = append(out, NumericZone(a.Unmap()))
		}
		return out, nil
	}
}

// NumericZone replaces an IPv6 address's zone name (eth0) by the
// interface's index (2), which a connect can use without looking the
// interface up. A zone that names no interface is left as it is.
func NumericZone(a netip.Addr) netip.Addr {
	z := a.Zone()
	if z == "" {
		return a
	}
	if _, err := strconv.ParseUint(z, 10, 32); err == nil {
		return a
	}
	ifi, err := net.InterfaceByName(z)
	if err != nil {
		return a
	}
	return a.WithZone(strconv.Itoa(ifi.Index))
}

// ScopeID is the interface index of an address's numeric zone (0: none, or
// not numeric). It makes no system call.
func ScopeID(a netip.Addr) uint32 {
	z := a.Zone()
	if z == "" {
		return 0
	}
	n, err := strconv.ParseUint(z, 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}
