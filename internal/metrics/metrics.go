// Package metrics exports dynamic-proxy's Prometheus metrics.
//
// New registers every collector on an injected prometheus.Registerer. The
// data path never looks a series up by its labels: when the engine builds a
// route it asks Observer for the route's proxy.Observer, which holds the
// route's and its backends' labelled children already resolved, so counting
// an event is a few atomic adds. After each apply the engine calls Retain
// with the routes now published, and the series of rules, backends and
// routers that a reload removed are deleted, so the number of series stays
// bounded by the config across any number of reloads.
//
// Every label value comes from the config (rule names, backend ids, router
// names and plugins) or from a fixed set (reason, result, direction): never
// from a client.
package metrics

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/logging"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
	"github.com/dynamic-proxy/dynamic-proxy/internal/version"
)

// Namespace prefixes every metric name.
const Namespace = "dynamic_proxy"

// Label values of the fixed sets.
const (
	DirectionIn  = "in"  // bytes_total: client to backend
	DirectionOut = "out" // bytes_total: backend to client

	ResultSuccess = "success" // backend_requests_total, config_reloads_total
	ResultError   = "error"   // backend_requests_total: refused, unreachable, send failed
	ResultTimeout = "timeout" // backend_requests_total: the connect timed out
	ResultFailure = "failure" // config_reloads_total

	ReasonNoBackend = "no_backend" // router_errors_total: nothing usable
	ReasonError     = "error"      // router_errors_total: any other error

	CheckSuccess = "success" // health_checks_total
	CheckFailure = "failure"
)

// Buckets of the histograms.
var (
	// DurationBuckets for connection_duration_seconds and
	// request_duration_seconds: 1 ms to 1 h (L4 connections can be long).
	DurationBuckets = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}
	// SizeBuckets for request_size_bytes and response_size_bytes: 64 B to 16 MiB, ×4.
	SizeBuckets = prometheus.ExponentialBuckets(64, 4, 10)
	// ResponseBuckets for backend_response_seconds: 100 µs to 10 s.
	ResponseBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
)

// Metrics owns every dynamic-proxy collector. Its methods are safe for
// concurrent use.
type Metrics struct {
	// The data path's counters and gauge are folded from the loops' shares
	// when read, and its histograms (connection_duration_seconds,
	// request_duration_seconds, request_size_bytes, response_size_bytes,
	// backend_response_seconds) are summed from them (shards.go).
	connActive   *prometheus.GaugeVec   // rule, protocol
	connTotal    *prometheus.CounterVec // rule, protocol
	connRejected *prometheus.CounterVec // rule, protocol, reason
	lnRejected   *prometheus.CounterVec // listener, protocol, reason (listener.go)

	requests *prometheus.CounterVec // rule, protocol
	bytes    *prometheus.CounterVec // rule, protocol, direction

	beRequests   *prometheus.CounterVec // rule, backend, result
	beEnded      *prometheus.CounterVec // rule, backend, end
	dnsDropped   *prometheus.CounterVec // rule, backend, reason (dns = true rules)
	healthChecks *prometheus.CounterVec // rule, backend, result

	selections   *prometheus.CounterVec // rule, router, plugin, backend
	routerErrors *prometheus.CounterVec // rule, router, plugin, reason

	reloads    *prometheus.CounterVec // result
	lastReload prometheus.Gauge

	server    serverCollector     // the descriptor budget (state.go)
	fleet     fleetCollector      // the fleet-wide access limits (fleetlimits.go)
	discovery discoveryCollectors // DNS discovery (discovery.go)

	foldMu sync.Mutex // guards series and what was folded of them; taken inside mu
	series series     // the data path's series, counted by loop (shards.go)

	mu        sync.Mutex                   // serialises Observer's bookkeeping and Retain, and guards listeners
	listeners map[string]*listenerObserver // by listen key ("tcp 127.0.0.1:8000")
	made      labelKeys                    // label combinations Observer resolved since the last Retain
	current   atomic.Pointer[snapshot]
}

// snapshot is what Retain was last given, for the scrape-time collector and
// health check counting.
type snapshot struct {
	routes   []*proxy.Route
	byHealth map[*backend.Health][]prometheus.Counter // per backend sharing the Health: success, failure children
	keys     labelKeys
}

// labelKeys are the label combinations a set of routes uses.
type labelKeys struct {
	rules    map[[2]string]bool // rule, protocol
	backends map[[2]string]bool // rule, backend
	routers  map[[3]string]bool // rule, router, plugin
	// selections are router_selections_total's: rule, router, plugin, backend.
	selections map[[4]string]bool
}

// New registers the collectors on reg, including the Go and process
// collectors when withRuntime is set (a test registry may leave them out).
func New(reg prometheus.Registerer, withRuntime bool) (*Metrics, error) {
	rp := []string{"rule", "protocol"}
	m := &Metrics{
		connActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace,
			Name: "connections_active", Help: "Client connections (UDP: sessions) open now."}, rp),
		connTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "connections_total", Help: "Client connections (UDP: sessions) accepted, including those then rejected."}, rp),
		connRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "connections_rejected_total", Help: "Connections or datagrams dropped without reaching a backend, by reason."},
			[]string{"rule", "protocol", "reason"}),
		lnRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "listener_rejected_total", Help: "Connections or datagrams a listener refused before any of its rules took them (server max_connections, shutdown, no matching rule, a PROXY header or client problem), by reason."},
			[]string{"listener", "protocol", "reason"}),

		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "requests_total", Help: "Requests proxied: TCP connections that reached a backend (counted when they end), UDP datagrams from clients."}, rp),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "bytes_total", Help: "Bytes proxied, counted as they move: direction in is client to backend, out is backend to client."},
			[]string{"rule", "protocol", "direction"}),

		beRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "backend_requests_total", Help: "Attempts to reach a backend: TCP connects, UDP datagrams sent; result success, error or timeout."},
			[]string{"rule", "backend", "result"}),
		beEnded: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "connections_ended_total", Help: "Proxied TCP connections and UDP sessions that ended, by backend and how: eof, idle_timeout, client_error, backend_error (such as a reset mid-stream), backend_refused (UDP: ICMP port unreachable), max_responses (UDP), drained (drain_timeout), shutdown, closed (admin API) or backend_down (on_backend_down = \"close\")."},
			[]string{"rule", "backend", "end"}),
		dnsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "dns_dropped_total", Help: "Rules with dns = true: queries sent to the backend it never answered within session_timeout (reason unanswered), and replies from it that matched no waiting query (reason unmatched)."},
			[]string{"rule", "backend", "reason"}),
		healthChecks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "health_checks_total", Help: "Active health checks of the backend's address, by result (success or failure)."},
			[]string{"rule", "backend", "result"}),

		selections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "router_selections_total", Help: "Backends chosen by the rule's router."},
			[]string{"rule", "router", "plugin", "backend"}),
		routerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "router_errors_total", Help: "Picks that returned no backend: reason no_backend (none usable) or error."},
			[]string{"rule", "router", "plugin", "reason"}),

		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "config_reloads_total", Help: "Config reloads attempted (signal, file change, admin API), by result (success or failure)."},
			[]string{"result"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace,
			Name: "config_last_reload_success_timestamp_seconds", Help: "Unix time of the last successful config load (start-up or reload)."}),
	}
	info := version.Get()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace,
		Name: "build_info", Help: "Always 1; the labels identify the build."}, []string{"version", "commit", "goversion"})
	buildInfo.WithLabelValues(info.Version, info.Commit, info.GoVersion).Set(1)

	logDropped := prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: Namespace,
		Name: "log_records_dropped_total", Help: "Log records the event loops dropped because the log output did not keep up (its queue was full)."},
		func() float64 { return float64(logging.Dropped()) })

	cs := []prometheus.Collector{logDropped, m.lnRejected, histCollector{m},
		m.healthChecks, m.reloads, m.lastReload, buildInfo, &stateCollector{m}, &m.server, &m.fleet}
	for _, c := range []prometheus.Collector{m.connActive, m.connTotal, m.connRejected, m.requests, m.bytes,
		m.beRequests, m.beEnded, m.dnsDropped, m.selections, m.routerErrors} {
		cs = append(cs, folded{m, c})
	}
	m.discovery = newDiscoveryCollectors()
	cs = append(cs, m.discovery.collectors()...)
	if withRuntime {
		cs = append(cs, newGoCollector(), newProcessCollector())
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{ResultSuccess, ResultFailure} {
		m.reloads.WithLabelValues(r)
	}
	m.made = newLabelKeys(0)
	m.series = newSeries()
	m.current.Store(&snapshot{keys: newLabelKeys(0)})
	return m, nil
}

// Loaded records a successful config load at t (the start-up one; reloads
// go through ReloadResult).
func (m *Metrics) Loaded(t time.Time) { m.lastReload.Set(float64(t.UnixNano()) / 1e9) }

// ReloadResult counts one reload attempt (err nil: success). It fits
// reload.Reloader.Result.
func (m *Metrics) ReloadResult(err error) {
	if err != nil {
		m.reloads.WithLabelValues(ResultFailure).Inc()
		return
	}
	m.reloads.WithLabelValues(ResultSuccess).Inc()
	m.Loaded(time.Now())
}

// HealthChecked counts one active health check whose result h recorded
// (ok: it passed). Every backend that shares h (the same address and check,
// in any rule) counts it. The health checker calls it after each check.
func (m *Metrics) HealthChecked(h *backend.Health, ok bool) {
	cs := m.current.Load().byHealth[h]
	i := 1
	if ok {
		i = 0
	}
	for j := i; j < len(cs); j += 2 {
		cs[j].Inc()
	}
}

// Unrouted counts traffic refused before any rule was chosen
// (proxy.UnroutedObserver): connections_rejected_total{rule=""} with the
// reason — no_rule, or a PROXY header or client problem met before routing.
func (m *Metrics) Unrouted(protocol string, r proxy.Reason) {
	m.connRejected.WithLabelValues("", protocol, r.String()).Inc()
}

// Observer returns the observer for rt, with every series of the route and
// its backends resolved. The engine calls it for each route it builds,
// before publishing the routes, and then calls Retain.
func (m *Metrics) Observer(rt *proxy.Route) proxy.Observer {
	m.mu.Lock()
	m.made.add(rt)
	m.mu.Unlock()
	rule, proto := rt.Name, rt.Protocol
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	key := [2]string{rule, proto}
	rs := m.series.routes[key]
	if rs == nil {
		rs = newRouteSeries(m, rule, proto)
		m.series.routes[key] = rs
	}
	counter := func(in map[[4]string]*counterSeries, k [4]string, c func() prometheus.Counter) *counterSeries {
		cs := in[k]
		if cs == nil {
			cs = newCounterSeries(c())
			in[k] = cs
		}
		return cs
	}
	rk := func(reason string) [4]string { return [4]string{rule, rt.RouterName, rt.Plugin, reason} }
	o := &routeObserver{
		tcp: proto == "tcp",
		r:   rs,
		noBackend: counter(m.series.errors, rk(ReasonNoBackend), func() prometheus.Counter {
			return m.routerErrors.WithLabelValues(rule, rt.RouterName, rt.Plugin, ReasonNoBackend)
		}),
		pickError: counter(m.series.errors, rk(ReasonError), func() prometheus.Counter {
			return m.routerErrors.WithLabelValues(rule, rt.RouterName, rt.Plugin, ReasonError)
		}),
		backends: make(map[*backend.Backend]*backendObserver, len(rt.Backends)),
	}
	for _, b := range rt.Backends {
		bk := [2]string{rule, b.ID}
		bs := m.series.backends[bk]
		if bs == nil {
			bs = newBackendSeries(rule, b.ID)
			m.series.backends[bk] = bs
		}
		bs.resolve(m, proto, rt.DNS)
		bo := &backendObserver{s: bs, dns: rt.DNS,
			selection: counter(m.series.selections, [4]string{rule, rt.RouterName, rt.Plugin, b.ID}, func() prometheus.Counter {
				return m.selections.WithLabelValues(rule, rt.RouterName, rt.Plugin, b.ID)
			})}
		for _, end := range proxy.EndsOf(proto) {
			bo.ends[end] = true
		}
		o.backends[b] = bo
		m.healthChecks.WithLabelValues(rule, b.ID, CheckSuccess)
		m.healthChecks.WithLabelValues(rule, b.ID, CheckFailure)
	}
	return o
}

// Retain is told the routes now published (after every apply, successful or
// not). The series of rules, backends and routers that are not among them
// any more are deleted (also those Observer made for an apply that failed),
// and backend_up, backend_connections_active and health_checks_total follow
// these routes' backends from now on.
func (m *Metrics) Retain(routes []*proxy.Route) {
	m.mu.Lock()
	defer m.mu.Unlock()
	nb := 0
	for _, rt := range routes {
		nb += len(rt.Backends)
	}
	next := &snapshot{routes: routes, byHealth: make(map[*backend.Health][]prometheus.Counter, nb), keys: newLabelKeys(len(routes))}
	for _, rt := range routes {
		next.keys.add(rt)
		for _, b := range rt.Backends {
			h := b.Health()
			next.byHealth[h] = append(next.byHealth[h],
				m.healthChecks.WithLabelValues(rt.Name, b.ID, CheckSuccess),
				m.healthChecks.WithLabelValues(rt.Name, b.ID, CheckFailure))
		}
	}
	stale := m.current.Load().keys
	stale.merge(m.made)
	m.made = newLabelKeys(0)
	m.current.Store(next)

	// Each stale series is deleted by its exact labels, which costs one
	// lookup: DeletePartialMatch would scan every series of the vector for
	// each removed rule.
	for k := range stale.rules {
		if next.keys.rules[k] {
			continue
		}
		rule, proto := k[0], k[1]
		for _, v := range []*prometheus.MetricVec{m.connActive.MetricVec, m.connTotal.MetricVec, m.requests.MetricVec} {
			v.DeleteLabelValues(rule, proto)
		}
		for r := proxy.Reason(0); r < proxy.NumReasons; r++ {
			m.connRejected.DeleteLabelValues(rule, proto, r.String())
		}
		m.bytes.DeleteLabelValues(rule, proto, DirectionIn)
		m.bytes.DeleteLabelValues(rule, proto, DirectionOut)
		m.foldMu.Lock()
		delete(m.series.routes, k)
		m.foldMu.Unlock()
	}
	for k := range stale.backends {
		if next.keys.backends[k] {
			continue
		}
		rule, id := k[0], k[1]
		for _, res := range []string{ResultSuccess, ResultError, ResultTimeout} {
			m.beRequests.DeleteLabelValues(rule, id, res)
		}
		for end := proxy.End(0); end < proxy.NumEnds; end++ {
			m.beEnded.DeleteLabelValues(rule, id, end.String())
		}
		m.foldMu.Lock()
		delete(m.series.backends, k)
		m.foldMu.Unlock()
		m.dnsDropped.DeleteLabelValues(rule, id, DNSUnanswered)
		m.dnsDropped.DeleteLabelValues(rule, id, DNSUnmatched)
		m.healthChecks.DeleteLabelValues(rule, id, CheckSuccess)
		m.healthChecks.DeleteLabelValues(rule, id, CheckFailure)
	}
	for k := range stale.selections {
		if !next.keys.selections[k] {
			m.selections.DeleteLabelValues(k[0], k[1], k[2], k[3])
			m.foldMu.Lock()
			delete(m.series.selections, k)
			m.foldMu.Unlock()
		}
	}
	for k := range stale.routers {
		if !next.keys.routers[k] {
			m.routerErrors.DeleteLabelValues(k[0], k[1], k[2], ReasonNoBackend)
			m.routerErrors.DeleteLabelValues(k[0], k[1], k[2], ReasonError)
			m.foldMu.Lock()
			delete(m.series.errors, [4]string{k[0], k[1], k[2], ReasonNoBackend})
			delete(m.series.errors, [4]string{k[0], k[1], k[2], ReasonError})
			m.foldMu.Unlock()
		}
	}
}

// newLabelKeys returns empty sets sized for n routes.
func newLabelKeys(n int) labelKeys {
	return labelKeys{rules: make(map[[2]string]bool, n), backends: make(map[[2]string]bool, n),
		routers: make(map[[3]string]bool, n), selections: make(map[[4]string]bool, n)}
}

// add records the label combinations of rt and its backends.
func (k labelKeys) add(rt *proxy.Route) {
	k.rules[[2]string{rt.Name, rt.Protocol}] = true
	k.routers[[3]string{rt.Name, rt.RouterName, rt.Plugin}] = true
	for _, b := range rt.Backends {
		k.backends[[2]string{rt.Name, b.ID}] = true
		k.selections[[4]string{rt.Name, rt.RouterName, rt.Plugin, b.ID}] = true
	}
}

func (k labelKeys) merge(o labelKeys) {
	for x := range o.rules {
		k.rules[x] = true
	}
	for x := range o.backends {
		k.backends[x] = true
	}
	for x := range o.routers {
		k.routers[x] = true
	}
	for x := range o.selections {
		k.selections[x] = true
	}
}

// errNoBackend is matched with errors.Is to tell router_errors_total's reasons apart.
var errNoBackend = router.ErrNoBackend

// routeObserver is one route's proxy.Observer: its series resolved once,
// each event an add to the calling loop's share.
type routeObserver struct {
	tcp       bool // a TCP rule: a connection is a request
	r         *routeSeries
	noBackend *counterSeries
	pickError *counterSeries
	backends  map[*backend.Backend]*backendObserver // read-only once built
}

type backendObserver struct {
	s         *backendSeries
	selection *counterSeries
	ends      [proxy.NumEnds]bool // the ends of the rule's protocol (proxy.EndsOf)
	dns       bool                // a dns = true rule: dns_dropped_total is counted
}

// dns_dropped_total's reasons.
const (
	DNSUnanswered = "unanswered"
	DNSUnmatched  = "unmatched"
)

var _ proxy.DNSObserver = (*routeObserver)(nil)

func (o *routeObserver) DNSUnanswered(loop int, b *backend.Backend) {
	if bo := o.backends[b]; bo != nil && bo.dns {
		bo.s.shard(loop).c[bDNSUnanswered].Add(1)
	}
}

func (o *routeObserver) DNSUnmatched(loop int, b *backend.Backend) {
	if bo := o.backends[b]; bo != nil && bo.dns {
		bo.s.shard(loop).c[bDNSUnmatched].Add(1)
	}
}

var _ proxy.Observer = (*routeObserver)(nil)

func (o *routeObserver) ConnOpened(loop int) { o.r.shard(loop).c[rOpened].Add(1) }

// ConnClosed ends a connection or session; one proxied over TCP is also a
// request (a UDP session's requests are its datagrams).
func (o *routeObserver) ConnClosed(loop int, b *backend.Backend, end proxy.End, d time.Duration, in, out int64) {
	s := o.r.shard(loop)
	s.c[rClosed].Add(1)
	s.connDur.observe(durationBounds, int64(d))
	if b == nil {
		return
	}
	if bo := o.backends[b]; bo != nil && end < proxy.NumEnds && bo.ends[end] {
		bo.s.shard(loop).c[bEnded+int(end)].Add(1)
	}
	if o.tcp {
		s.c[rRequests].Add(1)
		s.reqDur.observe(durationBounds, int64(d))
		s.reqSize.observe(sizeBounds, in)
		s.respSize.observe(sizeBounds, out)
	}
}

func (o *routeObserver) Rejected(loop int, r proxy.Reason) {
	if r < proxy.NumReasons && r != proxy.ReasonNoRule {
		o.r.shard(loop).c[rRejected+int(r)].Add(1)
	}
}

func (o *routeObserver) Picked(loop int, b *backend.Backend) {
	if bo := o.backends[b]; bo != nil {
		bo.selection.add(loop)
	}
}

func (o *routeObserver) PickFailed(loop int, err error) {
	if errors.Is(err, errNoBackend) {
		o.noBackend.add(loop)
		return
	}
	o.pickError.add(loop)
}

func (o *routeObserver) Connected(loop int, b *backend.Backend, d time.Duration, err error) {
	bo := o.backends[b]
	if bo == nil {
		return
	}
	s := bo.s.shard(loop)
	switch {
	case err == nil:
		s.c[bSuccess].Add(1)
		s.response.observe(responseBounds, int64(d))
	case isTimeout(err):
		s.c[bTimeout].Add(1)
	default:
		s.c[bFailed].Add(1)
	}
}

func (o *routeObserver) BytesIn(loop int, n int64)  { o.r.shard(loop).c[rBytesIn].Add(n) }
func (o *routeObserver) BytesOut(loop int, n int64) { o.r.shard(loop).c[rBytesOut].Add(n) }

func (o *routeObserver) Datagram(loop int, b *backend.Backend, n int, err error) {
	bo := o.backends[b]
	if err != nil {
		if bo != nil {
			bo.s.shard(loop).c[bFailed].Add(1)
		}
		return
	}
	if bo != nil {
		bo.s.shard(loop).c[bSuccess].Add(1)
	}
	s := o.r.shard(loop)
	s.c[rRequests].Add(1)
	s.reqSize.observe(sizeBounds, int64(n))
	s.c[rBytesIn].Add(int64(n))
}

func (o *routeObserver) Reply(loop int, b *backend.Backend, n int, rtt time.Duration) {
	s := o.r.shard(loop)
	s.respSize.observe(sizeBounds, int64(n))
	s.c[rBytesOut].Add(int64(n))
	if rtt > 0 {
		s.reqDur.observe(durationBounds, int64(rtt))
		if bo := o.backends[b]; bo != nil {
			bo.s.shard(loop).response.observe(responseBounds, int64(rtt))
		}
	}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
