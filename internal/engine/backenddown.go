package engine

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// on_backend_down = "close": a backend's open connections are closed when
// its health check marks it down (active or passive), and when a reload,
// discovery or a registration's expiry removes it. The closes are spread
// over the rule's on_backend_down_window, each at a random moment of its
// own slot, so that the clients reconnect over the window rather than at
// one instant (envoy#44419). What is closed is what the proxy lists at
// that moment (proxy.Server.ConnClosers); a connection that ends by itself
// meanwhile is skipped. They end as "backend_down"
// (dynamic_proxy_connections_ended_total{end="backend_down"}).

// downSet is what the committed config closes on a backend down.
type downSet struct {
	byHealth map[*backend.Health][]downTarget // the backends of "close" rules, by their Health
	windows  map[string]time.Duration         // "close" rules by name: their window
}

type downTarget struct {
	b      *backend.Backend
	window time.Duration
}

// downState is the engine's: the committed set, and the closes under way.
type downState struct {
	set     atomic.Pointer[downSet]
	mu      sync.Mutex
	stopped bool          // Shutdown: no close starts
	stop    chan struct{} // closed by Shutdown: closes under way stop
	wg      sync.WaitGroup
}

// commitDown publishes what p's config closes on a backend down. Called
// by commit once the kept backends have their new Health.
func (e *Engine) commitDown(p *plan) {
	rules := make(map[string]*config.Rule, len(p.cfg.Rules))
	for i := range p.cfg.Rules {
		rules[p.cfg.Rules[i].Name] = &p.cfg.Rules[i]
	}
	d := &downSet{byHealth: map[*backend.Health][]downTarget{}, windows: map[string]time.Duration{}}
	for _, rt := range p.routes {
		r := rules[rt.Name]
		if r == nil || r.OnBackendDown != config.OnBackendDownClose {
			continue
		}
		w := r.OnBackendDownWindow.D()
		d.windows[rt.Name] = w
		for _, b := range rt.Backends {
			h := b.Health()
			d.byHealth[h] = append(d.byHealth[h], downTarget{b, w})
		}
	}
	e.down.set.Store(d)
}

// removedBackend closes the connections of b, which the apply being
// committed removed, when its rule (as it ran until now) says "close";
// it reports whether it did.
func (e *Engine) removedBackend(b *backend.Backend) bool {
	d := e.down.set.Load()
	if d == nil {
		return false
	}
	w, ok := d.windows[b.Rule]
	if ok {
		e.closeSpread(b, w, "removed")
	}
	return ok
}

// backendTransition is the health registry's transition observer: a
// Health marked down closes the connections of every "close" rule's
// backend on it. It runs under the monitor's lock, so it only starts the
// closes.
func (e *Engine) backendTransition(h *backend.Health, up bool) {
	if up {
		return
	}
	if d := e.down.set.Load(); d != nil {
		for _, t := range d.byHealth[h] {
			e.closeSpread(t.b, t.window, "marked down")
		}
	}
}

// closeSpread closes b's open connections over window, in a goroutine.
func (e *Engine) closeSpread(b *backend.Backend, window time.Duration, why string) {
	e.down.mu.Lock()
	defer e.down.mu.Unlock()
	if e.down.stopped {
		return
	}
	e.down.wg.Add(1)
	go func() {
		defer e.down.wg.Done()
		closers := e.srv.ConnClosers(proxy.ConnFilter{Of: b})
		if len(closers) == 0 {
			return
		}
		e.log.Info("on_backend_down: closing the backend's connections", "rule", b.Rule, "backend", b.ID,
			"why", why, "connections", len(closers), "window", window)
		rand.Shuffle(len(closers), func(i, j int) { closers[i], closers[j] = closers[j], closers[i] })
		spreadCalls(closers, window, e.down.stop, func(c func(proxy.End)) { c(proxy.EndBackendDown) })
	}()
}

// stopDown stops the closes under way and waits for them to leave.
func (e *Engine) stopDown() {
	e.down.mu.Lock()
	if !e.down.stopped {
		e.down.stopped = true
		close(e.down.stop)
	}
	e.down.mu.Unlock()
	e.down.wg.Wait()
}

// spreadCalls calls do for each of cs in order, the i-th of n at a random
// moment of [i, i+1)·window/n from now, waking at most about once a
// millisecond; it stops early when stop is closed.
func spreadCalls[T any](cs []T, window time.Duration, stop <-chan struct{}, do func(T)) {
	n := len(cs)
	t0 := time.Now()
	due := func(i int) time.Time {
		return t0.Add(time.Duration((float64(i) + rand.Float64()) / float64(n) * float64(window)))
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	next := due(0)
	for i := 0; i < n; {
		if d := time.Until(next); d > 0 {
			timer.Reset(max(d, time.Millisecond))
			select {
			case <-timer.C:
			case <-stop:
				return
			}
		}
		for now := time.Now(); i < n && !next.After(now); {
			do(cs[i])
			if i++; i < n {
				next = due(i)
			}
		}
	}
}
