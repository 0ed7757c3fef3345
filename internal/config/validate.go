package config

import (
	"fmt"
	"net"
	"reflect"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// Limits on values.
const (
	MaxWeight     = 10000
	MinBufferSize = 1024
	MaxBufferSize = 1 << 20
)

func (c *Config) validate(e *Errors) {
	s := &c.Server
	checkBind(e, "server.tcp_bind", s.TCPBind)
	checkBind(e, "server.udp_bind", s.UDPBind)
	if s.WorkerThreads < 0 || s.WorkerThreads > 4096 {
		e.addf("server.worker_threads", "must be from 0 (one per CPU) to 4096, got %d", s.WorkerThreads)
	}
	switch s.Engine {
	case "auto", "goroutine":
	case "epoll":
		if runtime.GOOS != "linux" {
			e.addf("server.engine", "the epoll engine runs on Linux only (this is %s); use \"goroutine\" or \"auto\"", runtime.GOOS)
		}
	default:
		e.addf("server.engine", "must be one of auto, epoll, goroutine; got %q", s.Engine)
	}
	if msg := checkDNSServer(s.Resolver); msg != "" {
		e.add("server.resolver", msg)
	}
	if s.MaxConnections < 0 {
		e.addf("server.max_connections", "must be 0 (no limit) or more, got %d", s.MaxConnections)
	}
	if s.BufferSize < MinBufferSize || s.BufferSize > MaxBufferSize {
		e.addf("server.buffer_size", "must be from %d to %d bytes, got %d", MinBufferSize, MaxBufferSize, s.BufferSize)
	}
	if s.ConnectionTimeout <= 0 {
		e.add("server.connection_timeout", "must be greater than 0")
	}

	switch c.Logging.Level {
	case "debug", "info", "warn", "error":
	default:
		e.addf("logging.level", "must be one of debug, info, warn, error; got %q", c.Logging.Level)
	}
	switch c.Logging.Format {
	case "text", "json":
	default:
		e.addf("logging.format", "must be text or json; got %q", c.Logging.Format)
	}
	if d := c.Logging.AccessLogInterval.D(); d != 0 && d < time.Second {
		e.addf("logging.access_log_interval", "must be 0 (off) or at least 1s, got %s", d)
	}
	if x := c.Logging.ExplainSample; x < 0 || x > 1 {
		e.addf("logging.explain_sample", "must be from 0 (none) to 1 (every connection), got %v", x)
	}
	if !c.Logging.AccessLog {
		if c.Logging.AccessLogInterval != 0 {
			e.add("logging.access_log_interval", "needs access_log = true (it adds progress records to the access log)")
		}
		if c.Logging.AccessLogFile != "" {
			e.add("logging.access_log_file", "needs access_log = true (it is where the access log goes)")
		}
	}

	if r := c.Redis; r != nil {
		if r.DB < 0 {
			e.addf("redis.db", "must be 0 or more, got %d", r.DB)
		}
		if r.PoolSize < 1 || r.PoolSize > 10000 {
			e.addf("redis.pool_size", "must be from 1 to 10000, got %d", r.PoolSize)
		}
		if r.ConnectionTimeout <= 0 {
			e.add("redis.connection_timeout", "must be greater than 0")
		}
		if r.CommandTimeout <= 0 {
			e.add("redis.command_timeout", "must be greater than 0")
		}
		c.validateRedis(e) // fleet.go: the url, and the keys that depend on it
	}

	for _, name := range sortedKeysOf(c.Routers) {
		spec := c.Routers[name]
		path := join("routers", name)
		if err := CheckName("router name", name); err != nil {
			e.addf(path, "%v", err)
			continue
		}
		if spec.Plugin == "" {
			e.addf(path+".plugin", "missing (known plugins: %s)", strings.Join(router.Plugins(), ", "))
			continue
		}
		if !router.Known(spec.Plugin) {
			e.addf(path+".plugin", "unknown plugin %q (known: %s)", spec.Plugin, strings.Join(router.Plugins(), ", "))
			continue
		}
		if err := router.Validate(spec.Plugin, spec.Config); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				key, msg, _ := strings.Cut(line, ": ")
				e.addf(path+"."+key, "router %q (plugin %s): %s", name, spec.Plugin, msg)
			}
		}
	}

	c.validateObserve(e)

	c.validateAccess(e, "access", c.Access, c.Redis != nil)
	ruleNames := map[string]int{}
	shared := listenerAgreement{}
	for i := range c.Rules {
		c.validateRule(e, i, ruleNames, shared)
	}
	acmeOwner := map[string]string{}
	for i := range c.Rules {
		if r := &c.Rules[i]; r.TLS != nil && r.Protocol != "udp" && len(r.TLS.ACME) > 0 {
			c.validateACMENames(e, r.TLS, fmt.Sprintf("rules[%d].tls", i), acmeOwner, r.Name)
		}
	}
	c.validateACME(e, len(acmeOwner) > 0)
	c.resolveHealth(e)
	c.warnShadowed(e)
}

func (c *Config) validateRule(e *Errors, i int, names map[string]int, shared listenerAgreement) {
	r := &c.Rules[i]
	path := fmt.Sprintf("rules[%d]", i)
	switch nerr := CheckName("rule name", r.Name); {
	case r.Name == "":
		e.add(path+".name", "missing: every rule needs a unique name")
	case nerr != nil:
		e.addf(path+".name", "%v", nerr)
		r.Name = shortName(r.Name) // the other messages about this rule name it
	case names[r.Name] > 0:
		e.addf(path+".name", "duplicate rule name %q (also rules[%d])", r.Name, names[r.Name]-1)
	default:
		names[r.Name] = i + 1
	}
	if r.Protocol != "tcp" && r.Protocol != "udp" {
		e.addf(path+".protocol", "must be tcp or udp, got %q", r.Protocol)
	}
	validateUDPSession(e, r, path)
	c.validateRouterNeeds(e, r, path)
	switch r.OnBackendDown {
	case OnBackendDownKeep, OnBackendDownClose:
	default:
		e.addf(path+".on_backend_down", "must be %q or %q, got %q", OnBackendDownKeep, OnBackendDownClose, r.OnBackendDown)
	}
	if w := r.OnBackendDownWindow.D(); w < 0 || w > time.Hour {
		e.addf(path+".on_backend_down_window", "must be from 0 (all at once) to 1h, got %v", w)
	}
	if r.Router == "" {
		e.add(path+".router", "must not be empty")
	} else if _, named := c.Routers[r.Router]; !named && !router.Known(r.Router) {
		e.addf(path+".router", "no router %q: define [routers.%s] or use a builtin plugin (%s)",
			r.Router, r.Router, strings.Join(router.Plugins(), ", "))
	}
	c.validateMatch(e, i, shared)
	c.validateTLS(e, r, path, time.Now())
	if len(r.Backends) == 0 && len(r.Discovery) == 0 && c.Redis == nil { // with [redis], backends may all be registered at runtime
		e.add(path+".backends", "a rule needs at least one backend ([[rules.backends]] or [[rules.discovery]])")
	}
	validateDiscovery(e, r, path) // discovery.go
	ids := map[string]int{}
	for j := range r.Backends {
		b := &r.Backends[j]
		bp := fmt.Sprintf("%s.backends[%d]", path, j)
		switch nerr := CheckName("backend id", b.ID); {
		case b.ID == "":
			e.add(bp+".id", "missing: every backend needs an id unique within its rule")
		case nerr != nil:
			e.addf(bp+".id", "%v", nerr)
			b.ID = shortName(b.ID)
		case ids[b.ID] > 0:
			e.addf(bp+".id", "duplicate backend id %q in rule %q (also backends[%d])", b.ID, r.Name, ids[b.ID]-1)
		default:
			ids[b.ID] = j + 1
		}
		if b.Address == "" {
			e.add(bp+".address", "missing: want host:port")
		} else if err := checkHostPort(b.Address, false); err != nil {
			e.addf(bp+".address", "%v", err)
		}
		if b.Weight < 1 || b.Weight > MaxWeight {
			e.addf(bp+".weight", "must be from 1 to %d, got %d", MaxWeight, b.Weight)
		}
		checkTier(e, bp, b.Priority, b.Backup)
	}
}

// requireRule refuses a config that would serve nothing: no rule at all
// (an empty or truncated file, most likely) or only disabled ones. Applied,
// it would close every listener.
func (c *Config) requireRule(e *Errors) {
	for _, p := range e.Problems {
		if p.Path == "rules" {
			return // "rules" itself is wrong, said already
		}
	}
	for i := range c.Rules {
		if c.Rules[i].Enabled {
			return
		}
	}
	if len(c.Rules) == 0 {
		e.add("rules", "no rule: this config would serve nothing and close every listener (an empty or truncated file?); add a [[rules]] section, or set [redis] watch_config = true to take the rules from Redis")
		return
	}
	e.addf("rules", "no enabled rule: all %d rules have enabled = false, so this config would serve nothing and close every listener; enable one", len(c.Rules))
}

// validateRouterNeeds refuses a UDP rule whose router would read what its
// datagrams never carry: an HTTP request head, or (with dns = true) a QUIC
// ClientHello. A router that cannot be built is reported under routers.
func (c *Config) validateRouterNeeds(e *Errors, r *Rule, path string) {
	if r.Protocol != "udp" {
		return
	}
	spec, _ := c.RouterSpecFor(r.Router)
	rt, err := router.New(spec.Plugin, spec.Config, nil)
	if err != nil {
		return
	}
	n := router.NeedsOf(rt)
	if n&router.NeedHost != 0 {
		e.addf(path+".router", "router %q reads the HTTP request head: it needs a TCP rule (rule %q is udp)", r.Router, r.Name)
	}
	if r.DNS && n&(router.NeedSNI|router.NeedALPN) != 0 {
		e.addf(path+".router", "router %q reads the server name or ALPN of a QUIC ClientHello, which a DNS query never has (rule %q has dns = true)", r.Router, r.Name)
	}
}

// udpOnlyKeys are the rule keys that only UDP rules take.
var udpOnlyKeys = []string{"session_timeout", "max_responses", "max_sessions", "quic", "dns"}

// validateUDPSession checks a rule's UDP session settings, and that a TCP
// rule sets none of them (they would be silently ignored).
func validateUDPSession(e *Errors, r *Rule, path string) {
	if r.Protocol == "tcp" {
		for _, k := range udpOnlyKeys {
			if _, set := e.pos[path+"."+k]; set {
				e.addf(path+"."+k, "only UDP rules have sessions: set protocol = \"udp\" or remove %s (rule %q is tcp)", k, r.Name)
			}
		}
		return
	}
	if r.SessionTimeout <= 0 {
		e.add(path+".session_timeout", "must be greater than 0 (a session with no traffic ends after it; default 30s)")
	}
	if r.MaxResponses < 0 {
		e.addf(path+".max_responses", "must be 0 (unlimited) or more, got %d", r.MaxResponses)
	}
	if r.MaxSessions < 0 {
		e.addf(path+".max_sessions", "must be 0 (no limit) or more, got %d", r.MaxSessions)
	}
	if r.DNS && r.MaxResponses != 0 {
		e.addf(path+".max_responses", "rule %q has dns = true: each query is answered once, by its own reply; remove max_responses", r.Name)
	}
	if r.DNS && r.QUIC {
		e.addf(path+".quic", "rule %q has dns = true: its datagrams are DNS queries, not QUIC; set one of dns and quic", r.Name)
	}
	if r.DNS && r.Matcher != nil && r.Matcher.readsHello() {
		e.addf(path+".matcher", "rule %q has dns = true: an sni or alpn matcher reads a QUIC ClientHello, which a DNS query never has", r.Name)
	}
}

// warnShadowed warns about an enabled rule that can never match because an
// earlier enabled rule on the same listener matches everything it would.
func (c *Config) warnShadowed(e *Errors) {
	first := map[string]int{}
	for i := range c.Rules {
		r := &c.Rules[i]
		if !r.Enabled {
			continue
		}
		key := r.Protocol + " " + c.Listener(r)
		if j, ok := first[key]; ok && (c.Rules[j].Matcher.catchAll() || reflect.DeepEqual(c.Rules[j].Matcher, r.Matcher)) {
			c.Warnings = append(c.Warnings, Problem{File: c.File, Line: e.pos.line(fmt.Sprintf("rules[%d]", i)), Path: fmt.Sprintf("rules[%d]", i),
				Msg: fmt.Sprintf("rule %q is shadowed by rule %q on %s %s: it will never match", r.Name, c.Rules[j].Name, r.Protocol, c.Listener(r))})
			continue
		} else if ok {
			continue // the first rule on the listener stays the reference
		}
		first[key] = i
	}
}

func checkBind(e *Errors, path, addr string) {
	if err := checkHostPort(addr, true); err != nil {
		e.addf(path, "%v", err)
	}
}

// checkHostPort validates host:port. A listener may leave the host empty
// (all addresses) and use port 0 (any free port).
func checkHostPort(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid address %q: want host:port (IPv6 as [::1]:80)", addr)
	}
	if host == "" && !listen {
		return fmt.Errorf("invalid address %q: missing host", addr)
	}
	if strings.ContainsAny(host, " /\\") {
		return fmt.Errorf("invalid address %q: bad host %q", addr, host)
	}
	p, err := strconv.Atoi(port)
	lo := 1
	if listen {
		lo = 0
	}
	if err != nil || p < lo || p > 65535 {
		return fmt.Errorf("invalid address %q: port must be from %d to 65535", addr, lo)
	}
	return nil
}

func sortedKeysOf[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
