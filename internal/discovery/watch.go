package discovery

import (
	"context"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
)

// Key is one watched name: its rule, type, name and the server asked. Two
// entries with the same key are one watcher; the other settings (TTL
// bounds, weight, priority) change in place.
type Key struct{ Rule, Type, Name, Server string }

// Spec is a [[rules.discovery]] entry of a rule.
type Spec struct {
	Rule string
	D    config.Discovery
}

// Observer is told of every refresh (metrics).
type Observer interface {
	DiscoveryRefreshed(rule, name string, o Outcome, endpoints int)
	DiscoveryRemoved(rule, name string)
}

// Manager runs a Watcher per watched name.
type Manager struct {
	log     *slog.Logger
	changed func() // an answer in effect changed: the engine applies them all
	sys     func() string

	mu  sync.Mutex
	ws  map[Key]*Watcher
	obs Observer
	wg  sync.WaitGroup
	end bool
}

// NewManager returns a manager that calls changed (from a watcher's
// goroutine, holding no lock of the manager's) whenever the answer in
// effect of a name changes.
func NewManager(log *slog.Logger, changed func()) *Manager {
	// The system's resolver is read once: a key must not change under a
	// watcher because /etc/resolv.conf did.
	return &Manager{log: log, changed: changed, sys: sync.OnceValue(SystemResolver), ws: map[Key]*Watcher{}}
}

// SetObserver installs the metrics observer.
func (m *Manager) SetObserver(o Observer) {
	m.mu.Lock()
	m.obs = o
	m.mu.Unlock()
}

// KeyOf is the key of rule's entry d.
func (m *Manager) KeyOf(rule string, d config.Discovery) Key {
	server := d.ResolverAddr()
	if server == "" {
		server = m.sys()
	}
	return Key{rule, d.Type, d.Name, server}
}

// Sync makes specs the watched names: new ones start (their first refresh
// at once), those no longer listed stop, kept ones take the new settings.
func (m *Manager) Sync(specs []Spec) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.end {
		return
	}
	want := map[Key]Spec{}
	for _, s := range specs {
		want[m.KeyOf(s.Rule, s.D)] = s
	}
	for k, w := range m.ws {
		if _, ok := want[k]; !ok {
			w.cancel()
			delete(m.ws, k)
			if m.obs != nil {
				m.obs.DiscoveryRemoved(k.Rule, k.Name)
			}
			m.log.Info("discovery: name no longer watched", "rule", k.Rule, "name", k.Name)
		}
	}
	for k, s := range want {
		if w, ok := m.ws[k]; ok {
			w.setSpec(s.D)
			continue
		}
		w := &Watcher{m: m, key: k, spec: s.D, poke: make(chan struct{}, 1)}
		var ctx context.Context
		ctx, w.cancel = context.WithCancel(context.Background())
		m.ws[k] = w
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			w.run(ctx)
		}()
	}
}

// Endpoints returns the answer in effect for rule's entry d, and whether
// one was applied yet.
func (m *Manager) Endpoints(rule string, d config.Discovery) ([]Endpoint, bool) {
	m.mu.Lock()
	w, ok := m.ws[m.KeyOf(rule, d)]
	m.mu.Unlock()
	if !ok {
		return nil, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st.Applied, w.st.Answered
}

// Status is one watched name as the admin API shows it.
type Status struct {
	Key
	Spec  config.Discovery
	State State
}

// Statuses returns every watched name, by rule and name.
func (m *Manager) Statuses() []Status {
	m.mu.Lock()
	ws := make([]*Watcher, 0, len(m.ws))
	for _, w := range m.ws {
		ws = append(ws, w)
	}
	m.mu.Unlock()
	out := make([]Status, 0, len(ws))
	for _, w := range ws {
		w.mu.Lock()
		st := w.st
		st.Applied = slices.Clone(st.Applied)
		out = append(out, Status{Key: w.key, Spec: w.spec, State: st})
		w.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Rule != out[j].Rule {
			return out[i].Rule < out[j].Rule
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Close stops every watcher and waits for them.
func (m *Manager) Close() {
	m.mu.Lock()
	m.end = true
	for k, w := range m.ws {
		w.cancel()
		delete(m.ws, k)
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// Watcher refreshes one name.
type Watcher struct {
	m      *Manager
	key    Key
	cancel context.CancelFunc
	poke   chan struct{} // settings changed: recompute the next refresh

	mu   sync.Mutex
	spec config.Discovery
	st   State
}

func (w *Watcher) setSpec(d config.Discovery) {
	w.mu.Lock()
	changed := w.spec != d
	w.spec = d
	w.mu.Unlock()
	if changed {
		select {
		case w.poke <- struct{}{}:
		default:
		}
	}
}

func bounds(d config.Discovery) Bounds {
	return Bounds{MinTTL: d.MinTTL.D(), MaxTTL: d.MaxTTL.D(), EmptyGrace: d.EmptyGrace.D()}
}

func (w *Watcher) run(ctx context.Context) {
	log := w.m.log.With("rule", w.key.Rule, "name", w.key.Name, "type", w.key.Type, "resolver", w.key.Server)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.poke:
			// New bounds: the next refresh is at most MaxTTL after the
			// answer in effect.
			w.mu.Lock()
			next := w.st.Next
			if cap := w.st.AnsweredAt.Add(w.spec.MaxTTL.D()); !w.st.AnsweredAt.IsZero() && cap.Before(next) {
				next = cap
			}
			w.mu.Unlock()
			t.Reset(time.Until(next))
			continue
		}
		w.mu.Lock()
		d := w.spec
		w.mu.Unlock()
		q := Query{Type: d.Type, Host: d.Host(), Port: d.Port(), Server: w.key.Server, Timeout: d.Timeout.D()}
		lctx, cancel := context.WithTimeout(ctx, 4*q.Timeout) // an SRV refresh asks several questions
		a, err := Lookup(lctx, q)
		cancel()
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		w.mu.Lock()
		prevErr, wasEmpty := w.st.LastError, !w.st.EmptySince.IsZero()
		out := w.st.Observe(now, a, err, bounds(w.spec))
		st := w.st
		w.mu.Unlock()
		w.m.mu.Lock()
		obs := w.m.obs
		w.m.mu.Unlock()
		if obs != nil {
			obs.DiscoveryRefreshed(w.key.Rule, w.key.Name, out, len(st.Applied))
		}
		switch out {
		case Changed:
			log.Info("discovery: answer applied", "endpoints", describe(st.Applied), "ttl", st.TTL, "rcode", st.Rcode, "next_refresh", st.Next.Sub(now).Round(time.Millisecond))
			w.m.changed()
		case Kept:
			if prevErr == "" {
				log.Warn("discovery: lookup failed; keeping the last good answer", "err", st.LastError, "endpoints", len(st.Applied), "retry_in", st.Next.Sub(now))
			} else {
				log.Debug("discovery: lookup failed again", "err", st.LastError, "failures", st.Failures)
			}
		case EmptyPending:
			if !wasEmpty {
				log.Warn("discovery: empty answer; the last good answer serves until empty_grace ends", "rcode", st.Rcode, "empty_grace", d.EmptyGrace.D(), "endpoints", len(st.Applied))
			}
		case Unchanged:
			if prevErr != "" {
				log.Info("discovery: lookups answer again", "endpoints", len(st.Applied))
			}
			log.Debug("discovery: answer unchanged", "endpoints", len(st.Applied), "ttl", st.TTL, "next_refresh", st.Next.Sub(now))
		}
		t.Reset(time.Until(st.Next))
	}
}

// describe lists endpoints as "addr" or "addr w=3 p=1" (SRV).
func describe(eps []Endpoint) string {
	parts := make([]string, len(eps))
	for i, e := range eps {
		parts[i] = e.Addr.String()
		if e.Target != "" {
			parts[i] += " w=" + strconv.Itoa(e.Weight) + " p=" + strconv.Itoa(e.Priority)
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
