// Package engine owns the running configuration. It turns a *config.Config
// into listeners and routes, and applies a new config by difference: a
// listener whose address did not change keeps its socket, a backend whose
// identity (rule, id, address) did not change keeps its state, and a router
// whose plugin, settings and backends did not change keeps its rotation.
// An apply is a plan (built with no side effect, and the Change it makes),
// a bind (new listeners) and a commit (publish, close, drain, start).
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/acme"
	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/discovery"
	"github.com/dynamic-proxy/dynamic-proxy/internal/health"
	"github.com/dynamic-proxy/dynamic-proxy/internal/logging"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// Engine runs one configuration at a time.
type Engine struct {
	log     *slog.Logger
	loopLog *logging.Async // the proxy server's log handler
	srv     *proxy.Server

	mu         sync.Mutex // serialises Apply and Shutdown
	cfg        *config.Config
	version    int
	lns        map[string]proxy.Listener // by listenKey: "tcp 127.0.0.1:8000"
	backends   map[backendKey]*backend.Backend
	checks     *health.Registry           // health monitors by (protocol, address, check), shared across rules
	routers    map[string]builtRouter     // by rule name
	access     map[string]accessState     // by rule name: kept while its settings are
	fleetLim   *proxy.FleetLimits         // the fleet-wide access limits' counts; nil: local (match.go)
	routes     []*proxy.Route             // published, in file order (status.go)
	metrics    Metrics                    // nil: metrics off (status.go)
	observed   bool                       // e.routes hold observers of e.metrics (SetMetrics clears it)
	fleet      fleetState                 // dynamic state shared through Redis (dynamic.go)
	disc       *discovery.Manager         // backends from DNS names (discover.go)
	tls        map[string]*tlsconf.Server // terminating rules' servers, by rule name (tls.go)
	tickets    tlsconf.TicketKeySource    // session ticket keys shared by the fleet; nil: local
	acme       *acme.Manager              // certificates of rules.tls.acme; nil: none (tls.go)
	tlsMetrics TLSMetrics                 // nil: none
	discLog    map[string]bool            // discovery merge problems logged, so each is logged once
	down       downState                  // on_backend_down = "close" (backenddown.go)
}

type backendKey struct{ rule, id, address string }

type builtRouter struct {
	signature string
	router    router.Router
}

// New returns an engine with nothing running; call Apply. The proxy
// server's event loops log through a logging.Async handler on log's, so
// that a slow log output drops their records instead of stalling them.
func New(log *slog.Logger) *Engine {
	async := logging.NewAsync(log.Handler(), 0)
	e := &Engine{
		log:      log,
		loopLog:  async,
		srv:      proxy.NewServer(slog.New(async)),
		lns:      map[string]proxy.Listener{},
		backends: map[backendKey]*backend.Backend{},
		checks:   health.NewRegistry(log),
		routers:  map[string]builtRouter{},
	}
	e.disc = discovery.NewManager(log, e.rediscover)
	e.down.stop = make(chan struct{})
	e.checks.SetTransitionObserver(e.backendTransition)
	return e
}

// Server is the proxy server the engine drives.
func (e *Engine) Server() *proxy.Server { return e.srv }

// Config returns the running config and its version (1 for the first).
func (e *Engine) Config() (*config.Config, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg, e.version
}

// Listeners returns the bound listeners by key ("tcp 127.0.0.1:8000").
func (e *Engine) Listeners() map[string]proxy.Listener {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]proxy.Listener, len(e.lns))
	for k, v := range e.lns {
		out[k] = v
	}
	return out
}

// listenKey names a listener by protocol and configured address.
func listenKey(protocol, addr string) string { return protocol + " " + addr }

func (e *Engine) listen(key string, t proxy.Table) (proxy.Listener, error) {
	protocol, addr, _ := strings.Cut(key, " ")
	switch protocol {
	case "tcp":
		return e.srv.ListenTCP(addr, t)
	case "udp":
		return e.srv.ListenUDP(addr, t)
	default:
		return nil, fmt.Errorf("protocol %q is not supported yet", protocol)
	}
}

// Apply makes cfg the running config and returns what it changed. It is
// all or nothing: every new listener is bound and every router built before
// anything changes; on any error the running config keeps serving
// untouched.
func (e *Engine) Apply(cfg *config.Config) (Change, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.apply(cfg, e.fleet.dyn, true)
}

// Plan returns what Apply(cfg) would change now, and the error it would
// meet short of binding listeners, without changing anything: no listener
// is bound, no health check started, no metrics series made.
func (e *Engine) Plan(cfg *config.Config) (Change, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, err := e.plan(cfg, e.fleet.dyn, true)
	if err != nil {
		return Change{}, err
	}
	return p.change, nil
}

// apply makes file, with the dynamic state dyn merged in (dynamic.go), the
// running config: plan, bind, commit. reload is false when only dyn
// changed (SetDynamic): the file's backends were checked already and the
// config version stays.
func (e *Engine) apply(file *config.Config, dyn *Dynamic, reload bool) (Change, error) {
	p, err := e.plan(file, dyn, reload)
	if p != nil {
		e.logFleetProblems(p.problems) // whether or not the plan commits
		e.logDiscoveryProblems(p.discProblems)
	}
	if err != nil {
		return Change{}, err
	}
	if err := e.bind(p); err != nil {
		return Change{}, err
	}
	e.commit(p)
	return p.change, nil
}

// plan is a config built against the running state and not yet in effect:
// the routes, backends, routers and listener tables it makes (reusing
// state by identity), what commit must set on kept state, and the change.
type plan struct {
	file, cfg    *config.Config // cfg: file with the dynamic backends merged in
	dyn          *Dynamic
	reload       bool
	accepted     []string // dyn's backends merged in: "rule/id@address"
	problems     []string // merge problems, logged once each
	discProblems []string // discovered backends left out, logged once each

	backends map[backendKey]*backend.Backend
	routers  map[string]builtRouter
	access   map[string]accessState
	tables   map[string][]*proxy.Route      // listenKey -> routes in file order
	options  map[string]proxy.ListenOptions // listenKey -> the listener's own settings
	order    []string                       // listenKeys in file order
	routes   []*proxy.Route                 // to publish, in file order
	checks   *health.Update
	swaps    []healthSwap // kept backends whose health check changed
	flags    []flagSet    // kept backends whose flags change
	limits   []limitSet   // kept backends whose max_connections changes
	tiers    []limitSet   // kept backends whose priority tier changes
	opened   []string     // listeners bind opened, in file order

	tls  map[string]*tlsconf.Staged // terminating rules' settings, loaded; nil: the running server kept (tls.go)
	acme map[string]*acme.Rule      // ACME rules' managed certificates; nil map: the running ones kept (tls.go)

	change Change
}

type healthSwap struct {
	b *backend.Backend
	h *backend.Health
}

type flagSet struct {
	b *backend.Backend
	f flags
}

type limitSet struct {
	b *backend.Backend
	n int
}

// table is the table of listener addr (a listenKey).
func (p *plan) table(addr string) proxy.Table {
	return proxy.Table{Options: p.options[addr], Routes: p.tables[addr]}
}

// plan builds file (with dyn) against the running state. It has no side
// effect on the engine: nothing is bound, started, published or counted,
// and dropping the plan leaves everything as it was. New backends get
// their flags and limits here (nothing else sees them yet); kept ones at
// commit.
func (e *Engine) plan(file *config.Config, dyn *Dynamic, reload bool) (*plan, error) {
	if reload {
		if err := Check(file); err != nil {
			return nil, err
		}
	}
	cfg, accepted, problems := e.merge(file, dyn)
	cfg, discProblems := e.mergeDiscovered(cfg) // discover.go
	p := &plan{file: file, cfg: cfg, dyn: dyn, reload: reload, accepted: accepted, problems: problems, discProblems: discProblems,
		backends: map[backendKey]*backend.Backend{},
		routers:  map[string]builtRouter{},
		access:   map[string]accessState{},
		tables:   map[string][]*proxy.Route{},
		tls:      map[string]*tlsconf.Staged{},
		options:  map[string]proxy.ListenOptions{},
		checks:   e.checks.Begin(),
	}
	if reload {
		p.acme = map[string]*acme.Rule{}
	}
	// A runtime change (admin API: drain, enable, disable, weight) to a
	// backend lasts until a reload changes that backend's config entry.
	prevEntries := map[backendKey]config.Backend{}
	if prevCfg := e.effective(); prevCfg != nil {
		for _, r := range prevCfg.Rules {
			for _, bc := range r.Backends {
				prevEntries[backendKey{r.Name, bc.ID, bc.Address}] = bc
			}
		}
	}
	ch := &p.change
	states := dyn.states()
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if !r.Enabled {
			continue // a disabled rule binds nothing and serves nothing
		}
		addr := listenKey(r.Protocol, cfg.Listener(r))
		if _, ok := p.tables[addr]; !ok {
			p.tables[addr] = nil
			p.order = append(p.order, addr)
			// The first enabled rule on a listener gives its settings: the
			// config has the rules agree on those read before routing
			// (accept_proxy_protocol, trusted_proxies), and the first
			// rule's session_timeout is the listener's.
			p.options[addr] = listenOptions(cfg, r)
		}
		bs := make([]*backend.Backend, len(r.Backends))
		tiers := make([]int, len(r.Backends))
		for j, bc := range r.Backends {
			tiers[j] = bc.Tier()
			k := backendKey{r.Name, bc.ID, bc.Address}
			name := r.Name + "/" + bc.ID
			var tlsOpts *tlsconf.ClientOptions // a backend dialled with TLS is checked with it
			if o, ok := cfg.BackendTLSFor(r, &r.Backends[j]); ok {
				tlsOpts = &o
			}
			h, err := p.checks.HealthTLS(r.Protocol, bc.Address, r.Health, tlsOpts, name)
			if err != nil {
				return p, fmt.Errorf("rule %q: backend %q: %w", r.Name, bc.ID, err)
			}
			b, ok := e.backends[k]
			if !ok {
				b = backend.New(r.Name, bc.ID, bc.Address, bc.Weight, h)
				b.Source = bc.Source
				b.SetTier(bc.Tier())
				if bc.Source != "" {
					p.checks.AwaitFirstCheck(h) // a discovered backend takes traffic once its first check passes
				}
				ch.BackendsAdded = append(ch.BackendsAdded, name)
			} else if b.Tier() != bc.Tier() {
				p.tiers = append(p.tiers, limitSet{b, bc.Tier()})
			}
			if ok && b.Health() != h {
				p.swaps = append(p.swaps, healthSwap{b, h})
				ch.BackendsRechecked = append(ch.BackendsRechecked, name)
			}
			prev, had := prevEntries[k]
			if fl, set := e.fleet.desired(r.Name, bc, !ok || !had || !reflect.DeepEqual(prev, bc), states); set {
				if !ok {
					fl.applyTo(b) // not published yet
				} else {
					p.flags = append(p.flags, flagSet{b, fl})
					if b.Weight() != fl.weight {
						ch.BackendsReweighted = append(ch.BackendsReweighted, name)
					}
				}
			}
			if !ok {
				b.SetMaxConnections(bc.MaxConnections) // not published yet
			} else if b.MaxConnections() != bc.MaxConnections {
				p.limits = append(p.limits, limitSet{b, bc.MaxConnections})
			}
			p.backends[k] = b
			bs[j] = b
		}
		spec, _ := cfg.RouterSpecFor(r.Router)
		sig := routerSignature(spec, bs, tiers)
		br, ok := e.routers[r.Name]
		if !ok || br.signature != sig {
			rt, err := router.NewTiered(spec.Plugin, spec.Config, bs, tiers)
			if err != nil {
				return p, fmt.Errorf("rule %q: router %q: %w", r.Name, r.Router, err)
			}
			br = builtRouter{signature: sig, router: rt}
		}
		p.routers[r.Name] = br
		rt := &proxy.Route{
			Name:           r.Name,
			Protocol:       r.Protocol,
			RouterName:     r.Router,
			Plugin:         spec.Plugin,
			Router:         br.router,
			Backends:       bs,
			ConnectTimeout: cfg.Server.ConnectionTimeout.D(),
			IdleTimeout:    cfg.Server.IdleTimeout.D(),
			BufferSize:     cfg.Server.BufferSize,
			AccessLog:      cfg.Logging.AccessLog,
			MaxResponses:   r.MaxResponses,
			MaxSessions:    r.MaxSessions,
			QUIC:           r.QUIC,
			DNS:            r.Protocol == "udp" && r.DNS,
			Match:          compileMatcher(r.Matcher),
			SendProxy:      proxyVersion(r.ProxyProtocol),
		}
		srvTLS, err := e.planTLS(p, cfg, r) // (tls.go)
		if err != nil {
			return p, err
		}
		if srvTLS != nil {
			rt.TLS = srvTLS
		}
		if rt.BackendTLS, err = backendTLS(cfg, r); err != nil {
			return p, err
		}
		var accessCfg config.Access
		rt.Access, accessCfg = e.accessFor(cfg, r)
		if rt.Access != nil {
			p.access[r.Name] = accessState{accessCfg, rt.Access}
		}
		p.tables[addr] = append(p.tables[addr], rt)
		p.routes = append(p.routes, rt)
	}
	e.planChange(p)
	return p, nil
}

// planChange completes p.change with what the built state cannot say by
// itself: rules by name, backends and listeners that go, restart keys.
func (e *Engine) planChange(p *plan) {
	ch := &p.change
	ch.RulesAdded, ch.RulesRemoved, ch.RulesChanged = ruleChanges(e.cfg, p.file)
	for _, rt := range e.routes { // the running backends, in file order
		for _, b := range rt.Backends {
			if _, ok := p.backends[backendKey{b.Rule, b.ID, b.Address}]; !ok {
				ch.BackendsRemoved = append(ch.BackendsRemoved, b.Rule+"/"+b.ID)
				ch.DrainingConnections += b.Active()
			}
		}
	}
	for _, addr := range p.order {
		if _, ok := e.lns[addr]; !ok {
			ch.ListenersOpened = append(ch.ListenersOpened, addr)
		}
	}
	for addr := range e.lns {
		if _, ok := p.tables[addr]; !ok {
			ch.ListenersClosed = append(ch.ListenersClosed, addr)
		}
	}
	sort.Strings(ch.ListenersOpened)
	sort.Strings(ch.ListenersClosed)
	e.countTouched(ch)
	if p.reload {
		ch.RestartNeeded = config.RestartNeeded(e.cfg, p.file)
	}
}

// countTouched fills ch.Connections from the running routes: the open
// connections of each rule removed or changed, of each backend removed,
// re-weighted or re-checked, and of each listener closed.
func (e *Engine) countTouched(ch *Change) {
	byRule := map[string]int64{}
	byBackend := map[string]int64{}
	byListener := map[string]int64{}
	for _, rt := range e.routes {
		var n int64
		for _, b := range rt.Backends {
			a := b.Active()
			byBackend[rt.Name+"/"+b.ID] = a
			n += a
		}
		byRule[rt.Name] = n
	}
	if e.cfg != nil {
		for i := range e.cfg.Rules {
			r := &e.cfg.Rules[i]
			if r.Enabled {
				byListener[listenKey(r.Protocol, e.cfg.Listener(r))] += byRule[r.Name]
			}
		}
	}
	add := func(kind string, names []string, counts map[string]int64) {
		for _, name := range names {
			if n := counts[name]; n > 0 {
				if ch.Connections == nil {
					ch.Connections = map[string]int64{}
				}
				ch.Connections[kind+" "+name] = n
			}
		}
	}
	add("rule", ch.RulesRemoved, byRule)
	add("rule", ch.RulesChanged, byRule)
	add("backend", ch.BackendsRemoved, byBackend)
	add("backend", ch.BackendsReweighted, byBackend)
	add("backend", ch.BackendsRechecked, byBackend)
	add("listener", ch.ListenersClosed, byListener)
}

// ruleChanges compares the rules of the running file old (nil: none) and
// of next by name, enabled or not, in file order.
func ruleChanges(old, next *config.Config) (added, removed, changed []string) {
	prev := map[string]*config.Rule{}
	if old != nil {
		for i := range old.Rules {
			prev[old.Rules[i].Name] = &old.Rules[i]
		}
	}
	names := make(map[string]bool, len(next.Rules))
	for i := range next.Rules {
		r := &next.Rules[i]
		names[r.Name] = true
		o, ok := prev[r.Name]
		switch {
		case !ok:
			added = append(added, r.Name)
		case !config.SameRule(old, o, next, r):
			changed = append(changed, r.Name)
		}
	}
	if old != nil {
		for _, r := range old.Rules {
			if !names[r.Name] {
				removed = append(removed, r.Name)
			}
		}
	}
	return added, removed, changed
}

// bind is the first step with effects: it fixes the worker count on the
// first apply, gives the new routes their metrics observers and opens the
// new listeners, which serve p's routes from the moment they are bound. On
// a failure it closes what it opened and drops the series it made.
func (e *Engine) bind(p *plan) error {
	// worker_threads is read once, before the first listener starts the
	// event loops, which are one per GOMAXPROCS at that moment
	// (proxy.Server.Workers, fixed from then on).
	if e.cfg == nil {
		// The connection engine too is chosen once, before the first
		// listener; a reload that changes it says it needs a restart.
		eng, err := proxy.ParseEngine(p.cfg.Server.Engine)
		if err == nil {
			err = e.srv.SetEngine(eng)
		}
		if err != nil {
			return fmt.Errorf("server.engine: %w", err)
		}
		// So is the DNS server backend host names are looked up with.
		resolve.SetServer(p.cfg.Server.ResolverAddr())
		if p.cfg.Server.WorkerThreads > 0 {
			runtime.GOMAXPROCS(p.cfg.Server.WorkerThreads)
		}
		e.srv.Workers()
	}
	if e.metrics != nil {
		// A route whose series are the same as a published route's (rule,
		// protocol, router, plugin, the same backends) takes that route's
		// observer, so a reload resolves the series of what it changed only.
		var prev map[string]*proxy.Route
		if e.observed {
			prev = make(map[string]*proxy.Route, len(e.routes))
			for _, rt := range e.routes {
				prev[rt.Name] = rt
			}
		}
		for _, rt := range p.routes {
			if o := prev[rt.Name]; o != nil && sameSeries(o, rt) {
				rt.Observer = o.Observer
				continue
			}
			rt.Observer = e.metrics.Observer(rt)
		}
		if lm, ok := e.metrics.(ListenerMetrics); ok {
			for _, addr := range p.order {
				protocol, address, _ := strings.Cut(addr, " ")
				o := p.options[addr]
				o.Observer = lm.ListenerObserver(protocol, address)
				p.options[addr] = o
			}
		}
	}
	for _, addr := range p.order {
		if _, ok := e.lns[addr]; ok {
			continue
		}
		l, err := e.listen(addr, p.table(addr))
		if err != nil {
			for _, a := range p.opened {
				e.lns[a].Close()
				delete(e.lns, a)
			}
			if e.metrics != nil {
				e.metrics.Retain(e.routes) // drop the series of routes built for nothing
				if lm, ok := e.metrics.(ListenerMetrics); ok {
					lm.RetainListeners(slices.Collect(maps.Keys(e.lns))) // and of listeners
				}
			}
			return fmt.Errorf("listen %s: %w", addr, unwrapOp(err))
		}
		e.lns[addr] = l
		p.opened = append(p.opened, addr)
	}
	return nil
}

// commit makes a bound plan the running config: it publishes the routes,
// closes the listeners no rule uses, drains the removed backends, sets the
// kept backends' new flags, limits and health, starts and stops health
// checks and tells metrics what is current. It cannot fail.
func (e *Engine) commit(p *plan) {
	cfg := p.cfg
	for _, addr := range p.order {
		e.lns[addr].SetTable(p.table(addr))
	}
	var closed []string
	for addr, l := range e.lns {
		if _, ok := p.tables[addr]; !ok {
			l.Close()
			delete(e.lns, addr)
			closed = append(closed, addr)
		}
	}
	for k, b := range e.backends {
		if _, ok := p.backends[k]; !ok {
			b.SetDraining(true) // removed: no new connections; open ones run on, or close (on_backend_down)
			if e.removedBackend(b) {
				continue
			}
			if d := cfg.Server.DrainTimeout.D(); d > 0 && b.Active() > 0 {
				time.AfterFunc(d, func() {
					if n := e.srv.CloseBackendConns(b); n > 0 {
						e.log.Info("drain_timeout: closed connections to a removed backend", "rule", b.Rule, "backend", b.ID, "connections", n)
					}
				})
			}
		}
	}
	e.backends, e.routers = p.backends, p.routers
	for _, l := range p.limits {
		l.b.SetMaxConnections(l.n)
	}
	for _, t := range p.tiers {
		t.b.SetTier(t.n)
	}
	e.access = p.access
	e.commitFleetLimits()
	for _, s := range p.flags {
		s.f.applyTo(s.b)
	}
	e.fleet.commit(p.dyn, cfg, p.accepted, p.backends)
	for _, s := range p.swaps {
		s.b.SetHealth(s.h)
	}
	e.commitDown(p)                     // after the swaps (backenddown.go)
	e.commitTLS(p)                      // (tls.go)
	p.checks.Commit()                   // start new health checks, stop unused ones
	e.disc.Sync(discoverySpecs(p.file)) // start and stop watching DNS names (discover.go)
	e.routes, e.observed = p.routes, true
	if e.metrics != nil {
		e.metrics.Retain(p.routes)
		if lm, ok := e.metrics.(ListenerMetrics); ok {
			lm.RetainListeners(p.order)
		}
	}
	dp := DescriptorPlan(cfg, e.srv.Workers()) // (descriptors.go)
	e.srv.SetMaxConnections(dp.Capped)
	e.srv.RecountDescriptors()
	if p.reload && dp.IsCapped() {
		e.log.Warn("server.max_connections capped: the descriptor limit cannot give it",
			"max_connections", dp.MaxConnections, "descriptors_needed", dp.Needed(), "limit", dp.Limit, "capped_at", dp.Capped,
			"fix", "raise the limit (systemd LimitNOFILE=, ulimit -n) or lower server.max_connections")
	}
	e.cfg = p.file
	if p.reload {
		e.version++
	}
	for _, addr := range p.opened {
		protocol, _, _ := strings.Cut(addr, " ")
		e.log.Info("listening", "protocol", protocol, "address", e.lns[addr].Addr().String(), "rules", routeNames(p.tables[addr]))
	}
	if len(closed) > 0 {
		sort.Strings(closed)
		e.log.Info("listeners closed", "addresses", closed)
	}
}

// Checks is the engine's health check registry.
func (e *Engine) Checks() *health.Registry { return e.checks }

// Shutdown stops health checks, stops accepting and drains connections
// until ctx ends.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.disc.Close()
	e.checks.Close()
	e.stopDown()
	err := e.srv.Shutdown(ctx)
	e.loopLog.Flush(time.Second) // the loops' last records, unless the output is stuck
	return err
}

// sameSeries reports whether routes a and b count into the same series: an
// observer holds the series of its route's labels and of its backends.
func sameSeries(a, b *proxy.Route) bool {
	if a.Name != b.Name || a.Protocol != b.Protocol || a.RouterName != b.RouterName || a.Plugin != b.Plugin || len(a.Backends) != len(b.Backends) {
		return false
	}
	for i := range a.Backends {
		if a.Backends[i] != b.Backends[i] {
			return false
		}
	}
	return true
}

func routerSignature(spec config.RouterSpec, bs []*backend.Backend, tiers []int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%v|", spec.Plugin, sortedMap(spec.Config))
	for i, be := range bs {
		fmt.Fprintf(&b, "%p/%d,", be, tiers[i])
	}
	return b.String()
}

func sortedMap(m map[string]any) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%#v;", k, m[k])
	}
	return b.String()
}

func routeNames(rs []*proxy.Route) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Name
	}
	return out
}

// unwrapOp drops the *net.OpError wrapping so messages read "listen tcp
// 127.0.0.1:80: bind: address already in use" once, not twice.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
