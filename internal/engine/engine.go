// Package engine owns the running configuration. It turns a *config.Config
// into listeners and routes, and applies a new config by difference: a
// listener whose address did not change keeps its socket, a backend whose
// identity (rule, id, address) did not change keeps its state, and a router
// whose plugin, settings and backends did not change keeps its rotation.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/health"
	"github.com/dynamic-proxy/dynamic-proxy/internal/logging"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// Engine runs one configuration at a time.
type Engine struct {
	log     *slog.Logger
	loopLog *logging.Async // the proxy server's log handler
	srv     *proxy.Server

	mu       sync.Mutex // serialises Apply and Shutdown
	cfg      *config.Config
	version  int
	lns      map[string]proxy.Listener // by listenKey: "tcp 127.0.0.1:8000"
	backends map[backendKey]*backend.Backend
	checks   *health.Registry       // health monitors by (protocol, address, check), shared across rules
	routers  map[string]builtRouter // by rule name
	access   map[string]accessState // by rule name: kept while its settings are
	routes   []*proxy.Route         // published, in file order (status.go)
	metrics  Metrics                // nil: metrics off (status.go)
	fleet    fleetState             // dynamic state shared through Redis (dynamic.go)
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
	return &Engine{
		log:      log,
		loopLog:  async,
		srv:      proxy.NewServer(slog.New(async)),
		lns:      map[string]proxy.Listener{},
		backends: map[backendKey]*backend.Backend{},
		checks:   health.NewRegistry(log),
		routers:  map[string]builtRouter{},
	}
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

func (e *Engine) listen(key string, routes []*proxy.Route) (proxy.Listener, error) {
	protocol, addr, _ := strings.Cut(key, " ")
	switch protocol {
	case "tcp":
		return e.srv.ListenTCP(addr, routes)
	case "udp":
		return e.srv.ListenUDP(addr, routes)
	default:
		return nil, fmt.Errorf("protocol %q is not supported yet", protocol)
	}
}

// Apply makes cfg the running config. It is all or nothing: every new
// listener is bound and every router built before anything changes; on any
// error the running config keeps serving untouched.
func (e *Engine) Apply(cfg *config.Config) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.apply(cfg, e.fleet.dyn, true)
}

// apply makes file, with the dynamic state dyn merged in (dynamic.go), the
// running config. reload is false when only dyn changed (SetDynamic): the
// file's backends were checked already and the config version stays.
func (e *Engine) apply(file *config.Config, dyn *Dynamic, reload bool) error {
	if reload {
		if err := checkResolvable(file); err != nil {
			return err
		}
	}
	cfg, accepted := e.merge(file, dyn)
	// worker_threads is read once, before the first listener starts the
	// event loops, which are one per GOMAXPROCS at that moment
	// (proxy.Server.Workers, fixed from then on).
	if e.cfg == nil {
		if cfg.Server.WorkerThreads > 0 {
			runtime.GOMAXPROCS(cfg.Server.WorkerThreads)
		}
		e.srv.Workers()
	}
	committed := false
	defer func() {
		if !committed && e.metrics != nil {
			e.metrics.Retain(e.routes) // drop the series of routes built for nothing
		}
	}()
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
	var published []*proxy.Route

	// Build the new routes, reusing backend and router state by identity.
	backends := map[backendKey]*backend.Backend{}
	routers := map[string]builtRouter{}
	tables := map[string][]*proxy.Route{} // listenKey -> routes in file order
	var order []string
	checks := e.checks.Begin()
	type healthSwap struct {
		b *backend.Backend
		h *backend.Health
	}
	var swaps []healthSwap // kept backends whose health check changed
	states := dyn.states()
	type flagSet struct {
		b *backend.Backend
		f flags
	}
	var later []flagSet // kept backends whose flags change: set at commit
	type limitSet struct {
		b *backend.Backend
		n int
	}
	var limits []limitSet // kept backends whose max_connections changes: set at commit
	access := map[string]accessState{}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if !r.Enabled {
			continue // a disabled rule binds nothing and serves nothing
		}
		addr := listenKey(r.Protocol, cfg.Listener(r))
		if _, ok := tables[addr]; !ok {
			tables[addr] = nil
			order = append(order, addr)
		}
		bs := make([]*backend.Backend, len(r.Backends))
		for j, bc := range r.Backends {
			k := backendKey{r.Name, bc.ID, bc.Address}
			h, err := checks.Health(r.Protocol, bc.Address, r.Health, r.Name+"/"+bc.ID)
			if err != nil {
				return fmt.Errorf("rule %q: backend %q: %w", r.Name, bc.ID, err)
			}
			b, ok := e.backends[k]
			if !ok {
				b = backend.New(r.Name, bc.ID, bc.Address, bc.Weight, h)
			} else if b.Health() != h {
				swaps = append(swaps, healthSwap{b, h})
			}
			prev, had := prevEntries[k]
			if fl, set := e.fleet.desired(r.Name, bc, !ok || !had || !reflect.DeepEqual(prev, bc), states); set {
				if !ok {
					fl.applyTo(b) // not published yet
				} else {
					later = append(later, flagSet{b, fl})
				}
			}
			if !ok {
				b.SetMaxConnections(bc.MaxConnections) // not published yet
			} else if b.MaxConnections() != bc.MaxConnections {
				limits = append(limits, limitSet{b, bc.MaxConnections})
			}
			backends[k] = b
			bs[j] = b
		}
		spec, _ := cfg.RouterSpecFor(r.Router)
		sig := routerSignature(spec, bs)
		br, ok := e.routers[r.Name]
		if !ok || br.signature != sig {
			rt, err := router.New(spec.Plugin, spec.Config, bs)
			if err != nil {
				return fmt.Errorf("rule %q: router %q: %w", r.Name, r.Router, err)
			}
			br = builtRouter{signature: sig, router: rt}
		}
		routers[r.Name] = br
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
			SessionTimeout: r.SessionTimeout.D(),
			MaxResponses:   r.MaxResponses,
			MaxSessions:    r.MaxSessions,
			Match:          compileMatcher(r.Matcher),
			Needs:          routerNeeds(spec),
			Listen:         listenOptions(cfg, r),
			SendProxy:      proxyVersion(r.ProxyProtocol),
		}
		var accessCfg config.Access
		rt.Access, accessCfg = e.accessFor(cfg, r)
		if rt.Access != nil {
			access[r.Name] = accessState{accessCfg, rt.Access}
		}
		if e.metrics != nil {
			rt.Observer = e.metrics.Observer(rt)
		}
		tables[addr] = append(tables[addr], rt)
		published = append(published, rt)
	}

	// Bind the listeners that are new; undo them all if one fails.
	var opened []string
	for _, addr := range order {
		if _, ok := e.lns[addr]; ok {
			continue
		}
		l, err := e.listen(addr, tables[addr])
		if err != nil {
			for _, a := range opened {
				e.lns[a].Close()
				delete(e.lns, a)
			}
			return fmt.Errorf("listen %s: %w", addr, unwrapOp(err))
		}
		e.lns[addr] = l
		opened = append(opened, addr)
	}

	// Commit: publish routes, close listeners no rule uses any more.
	for _, addr := range order {
		e.lns[addr].SetRoutes(tables[addr])
	}
	var closed []string
	for addr, l := range e.lns {
		if _, ok := tables[addr]; !ok {
			l.Close()
			delete(e.lns, addr)
			closed = append(closed, addr)
		}
	}
	for k, b := range e.backends {
		if _, ok := backends[k]; !ok {
			b.SetDraining(true) // removed: no new connections; open ones run on
			if d := cfg.Server.DrainTimeout.D(); d > 0 && b.Active() > 0 {
				time.AfterFunc(d, func() {
					if n := e.srv.CloseBackendConns(b); n > 0 {
						e.log.Info("drain_timeout: closed connections to a removed backend", "rule", b.Rule, "backend", b.ID, "connections", n)
					}
				})
			}
		}
	}
	e.backends, e.routers = backends, routers
	for _, l := range limits {
		l.b.SetMaxConnections(l.n)
	}
	e.access = access
	for _, s := range later {
		s.f.applyTo(s.b)
	}
	e.fleet.commit(dyn, cfg, accepted, backends)
	for _, s := range swaps {
		s.b.SetHealth(s.h)
	}
	checks.Commit() // start new health checks, stop unused ones
	e.routes = published
	committed = true
	if e.metrics != nil {
		e.metrics.Retain(published)
	}
	e.srv.SetMaxConnections(cfg.Server.MaxConnections)
	e.cfg = file
	if reload {
		e.version++
	}
	for _, addr := range opened {
		protocol, _, _ := strings.Cut(addr, " ")
		e.log.Info("listening", "protocol", protocol, "address", e.lns[addr].Addr().String(), "rules", routeNames(tables[addr]))
	}
	if len(closed) > 0 {
		sort.Strings(closed)
		e.log.Info("listeners closed", "addresses", closed)
	}
	return nil
}

// Checks is the engine's health check registry.
func (e *Engine) Checks() *health.Registry { return e.checks }

// Shutdown stops health checks, stops accepting and drains connections
// until ctx ends.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.checks.Close()
	err := e.srv.Shutdown(ctx)
	e.loopLog.Flush(time.Second) // the loops' last records, unless the output is stuck
	return err
}

func routerSignature(spec config.RouterSpec, bs []*backend.Backend) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%v|", spec.Plugin, sortedMap(spec.Config))
	for _, be := range bs {
		fmt.Fprintf(&b, "%p,", be)
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

// checkResolvable makes sure every backend host name resolves, so a typo in
// a host name fails at start-up (or reload) instead of on the first client.
func checkResolvable(cfg *config.Config) error {
	seen := map[string]bool{}
	var errs []error
	for _, r := range cfg.Rules {
		for _, b := range r.Backends {
			host, _, _ := net.SplitHostPort(b.Address)
			if seen[host] || net.ParseIP(host) != nil {
				continue
			}
			seen[host] = true
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := net.DefaultResolver.LookupHost(ctx, host)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("rule %q: backend %q: host %q does not resolve: %w", r.Name, b.ID, host, unwrapOp(err)))
			}
		}
	}
	return errors.Join(errs...)
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
