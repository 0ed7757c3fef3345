package health

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// Key identifies a monitor: everything a check depends on. Backends with
// equal keys share one Monitor and one Health.
type Key struct {
	Protocol string // "tcp" or "udp"
	Address  string
	Check    config.HealthCheck
	// TLS is the backend's TLS settings as a comparable string ("": plain
	// TCP): backends of one address with different TLS settings are
	// checked apart.
	TLS string
}

// Registry holds the running monitors of one engine. A reload builds an
// Update and commits it: monitors whose key is unchanged keep running with
// their state, new ones start, unused ones stop.
type Registry struct {
	log *slog.Logger

	mu     sync.Mutex
	mons   map[Key]*Monitor
	closed bool

	onCheck      atomic.Pointer[func(h *backend.Health, ok bool)] // metrics: told of every active check
	onTransition atomic.Pointer[func(h *backend.Health, up bool)] // told of every up/down transition
}

// SetTransitionObserver installs f (nil removes it): it is called after a
// monitor marked its Health down or up, by an active check, passive
// detection or a passive cool-down ending (not when a new monitor takes
// over a down state). It runs with the monitor's lock held and must be
// quick.
func (r *Registry) SetTransitionObserver(f func(h *backend.Health, up bool)) {
	if f == nil {
		r.onTransition.Store(nil)
		return
	}
	r.onTransition.Store(&f)
}

func (r *Registry) transitioned(h *backend.Health, up bool) {
	if f := r.onTransition.Load(); f != nil {
		(*f)(h, up)
	}
}

// SetCheckObserver installs f (nil removes it): it is called after every
// active check of every monitor with the Health checked and whether the
// check passed (dynamic_proxy_health_checks_total). It runs on the check's
// goroutine and must be quick.
func (r *Registry) SetCheckObserver(f func(h *backend.Health, ok bool)) {
	if f == nil {
		r.onCheck.Store(nil)
		return
	}
	r.onCheck.Store(&f)
}

func (r *Registry) checked(h *backend.Health, err error) {
	if f := r.onCheck.Load(); f != nil {
		(*f)(h, err == nil)
	}
}

// NewRegistry returns an empty registry that logs transitions to log.
func NewRegistry(log *slog.Logger) *Registry {
	return &Registry{log: log, mons: map[Key]*Monitor{}}
}

// Update is the set of monitors a new config needs. Nothing runs or stops
// until Commit; an Update that is dropped changes nothing.
type Update struct {
	r      *Registry
	mons   map[Key]*Monitor
	fresh  map[Key]bool
	names  map[Key][]string
	byAddr map[string]*Monitor // running monitors by protocol+address, built lazily
}

// Begin starts an Update.
func (r *Registry) Begin() *Update {
	return &Update{r: r, mons: map[Key]*Monitor{}, fresh: map[Key]bool{}, names: map[Key][]string{}}
}

// Health returns the Health for a backend at address of a protocol rule with
// check settings hc; name ("rule/id") is used in logs. Backends with the same
// protocol, address and settings get the same Health. A running monitor with
// that key is kept; a new one inherits the up/down state of a running
// monitor of the same address (its settings changed on a reload), so a dead
// backend does not come back just because its check was edited.
func (u *Update) Health(protocol, address string, hc config.HealthCheck, name string) (*backend.Health, error) {
	return u.HealthTLS(protocol, address, hc, nil, name)
}

// HealthTLS is Health for a backend dialled with TLS (tlsOpts nil: plain
// TCP): its checks handshake with the same settings as its traffic.
func (u *Update) HealthTLS(protocol, address string, hc config.HealthCheck, tlsOpts *tlsconf.ClientOptions, name string) (*backend.Health, error) {
	k := Key{Protocol: protocol, Address: address, Check: hc}
	if tlsOpts != nil {
		k.TLS = fmt.Sprintf("%+v", *tlsOpts)
	}
	u.names[k] = append(u.names[k], name)
	if m, ok := u.mons[k]; ok {
		return m.h, nil
	}
	u.r.mu.Lock()
	m, ok := u.r.mons[k]
	u.r.mu.Unlock()
	if !ok {
		c, err := Compile(protocol, address, hc)
		if err != nil {
			return nil, err
		}
		if tlsOpts != nil {
			o := *tlsOpts
			c.TLS = &o
		}
		h := &backend.Health{Address: address}
		if old := u.running(protocol, address); old != nil {
			if st := old.h.Status(); !st.Up {
				h.Transition(false, st.Reason)
			}
		}
		m = NewMonitor(c, h, u.r.log)
		m.checked = u.r.checked
		m.changed = u.r.transitioned
		u.fresh[k] = true
	}
	u.mons[k] = m
	return m.h, nil
}

// AwaitFirstCheck holds the backend health h (from Health) down until its
// first active check passes, that check running at once, when h's
// monitor is new in this update and runs active checks: a backend that
// discovery adds takes traffic only once it answers. A monitor already
// running keeps its state.
func (u *Update) AwaitFirstCheck(h *backend.Health) {
	for k, m := range u.mons {
		if m.h != h || !u.fresh[k] || !m.check.Active {
			continue
		}
		m.mu.Lock()
		if !m.started && m.h.Up() {
			m.awaiting = true
			m.h.Transition(false, "new: awaiting its first health check")
		}
		m.mu.Unlock()
	}
}

func (u *Update) running(protocol, address string) *Monitor {
	if u.byAddr == nil {
		u.byAddr = map[string]*Monitor{}
		u.r.mu.Lock()
		for k, m := range u.r.mons {
			u.byAddr[k.Protocol+" "+k.Address] = m
		}
		u.r.mu.Unlock()
	}
	return u.byAddr[protocol+" "+address]
}

// Commit starts the new monitors, stops those no longer used and makes the
// update the registry's running set.
func (u *Update) Commit() {
	r := u.r
	r.mu.Lock()
	var stop []*Monitor
	for k, m := range r.mons {
		if _, ok := u.mons[k]; !ok {
			stop = append(stop, m)
		}
	}
	closed := r.closed
	if !closed {
		r.mons = u.mons
	}
	r.mu.Unlock()
	for k, m := range u.mons {
		names := u.names[k]
		sort.Strings(names)
		m.SetNames(names)
		if u.fresh[k] && !closed {
			m.Start()
		}
	}
	stopAll(stop)
}

// Close stops every monitor; later updates start nothing.
func (r *Registry) Close() {
	r.mu.Lock()
	r.closed = true
	stop := make([]*Monitor, 0, len(r.mons))
	for _, m := range r.mons {
		stop = append(stop, m)
	}
	r.mons = map[Key]*Monitor{}
	r.mu.Unlock()
	stopAll(stop)
}

// Monitors returns the running monitors (for status pages and tests).
func (r *Registry) Monitors() map[Key]*Monitor {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[Key]*Monitor, len(r.mons))
	for k, m := range r.mons {
		out[k] = m
	}
	return out
}

// stopAll cancels every monitor first, then waits for each, so stopping many
// takes as long as the slowest, not the sum.
func stopAll(ms []*Monitor) {
	for _, m := range ms {
		m.cancel()
	}
	for _, m := range ms {
		m.Stop()
	}
}
