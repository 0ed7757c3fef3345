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
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// Engine runs one configuration at a time.
type Engine struct {
	log *slog.Logger
	srv *proxy.Server

	mu       sync.Mutex // serialises Apply and Shutdown
	cfg      *config.Config
	version  int
	lns      map[string]proxy.Listener // by listenKey: "tcp 127.0.0.1:8000"
	backends map[backendKey]*backend.Backend
	health   map[string]*backend.Health // by address, shared across rules
	routers  map[string]builtRouter     // by rule name
}

type backendKey struct{ rule, id, address string }

type builtRouter struct {
	signature string
	router    router.Router
}

// New returns an engine with nothing running; call Apply.
func New(log *slog.Logger) *Engine {
	return &Engine{
		log:      log,
		srv:      proxy.NewServer(log),
		lns:      map[string]proxy.Listener{},
		backends: map[backendKey]*backend.Backend{},
		health:   map[string]*backend.Health{},
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

	if err := checkResolvable(cfg); err != nil {
		return err
	}

	// Build the new routes, reusing backend and router state by identity.
	backends := map[backendKey]*backend.Backend{}
	routers := map[string]builtRouter{}
	tables := map[string][]*proxy.Route{} // listenKey -> routes in file order
	var order []string
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
			b, ok := e.backends[k]
			if !ok {
				b = backend.New(r.Name, bc.ID, bc.Address, bc.Weight, e.healthFor(bc.Address))
			}
			b.SetWeight(bc.Weight)
			b.SetEnabled(bc.Enabled)
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
		tables[addr] = append(tables[addr], &proxy.Route{
			Name:           r.Name,
			Protocol:       r.Protocol,
			RouterName:     r.Router,
			Router:         br.router,
			Backends:       bs,
			ConnectTimeout: cfg.Server.ConnectionTimeout.D(),
			IdleTimeout:    cfg.Server.IdleTimeout.D(),
			AccessLog:      cfg.Logging.AccessLog,
		})
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
	e.gcHealth()
	if cfg.Server.WorkerThreads > 0 && e.cfg == nil {
		runtime.GOMAXPROCS(cfg.Server.WorkerThreads)
	}
	e.srv.SetMaxConnections(cfg.Server.MaxConnections)
	e.cfg = cfg
	e.version++
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

func (e *Engine) healthFor(addr string) *backend.Health {
	h, ok := e.health[addr]
	if !ok {
		h = &backend.Health{Address: addr}
		e.health[addr] = h
	}
	return h
}

func (e *Engine) gcHealth() {
	used := map[string]bool{}
	for k := range e.backends {
		used[k.address] = true
	}
	for a := range e.health {
		if !used[a] {
			delete(e.health, a)
		}
	}
}

// Shutdown stops accepting and drains connections until ctx ends.
func (e *Engine) Shutdown(ctx context.Context) error { return e.srv.Shutdown(ctx) }

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
