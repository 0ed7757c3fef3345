package config

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
)

// Matcher selects the connections a rule serves. It has either a type or
// one of the lists all / any (a rule needing several conditions):
//
//	[rules.matcher]
//	all = [ { type = "port", port = 443 }, { type = "sni", names = ["*.example.com"] } ]
type Matcher struct {
	// Type is port, sni, alpn, http_host, source or any (a default route).
	Type string `toml:"type"`
	// Port (type port): the rule is served on this port of tcp_bind's
	// (udp_bind's) host. 1–65535.
	Port int `toml:"port"`
	// Names (types sni and http_host): exact names and "*.example.com"
	// wildcards (one or more labels below example.com).
	Names []string `toml:"names"`
	// Protocols (type alpn): ALPN protocol ids such as "h2", "http/1.1".
	Protocols []string `toml:"protocols"`
	// CIDRs (type source): client address prefixes, IPv4 or IPv6; a bare
	// address means just that address.
	CIDRs []string `toml:"cidrs"`
	// All matches when every matcher in it does; Any when one does.
	All []Matcher `toml:"all"`
	Any []Matcher `toml:"any"`
}

// MatcherTypes lists the matcher types.
var MatcherTypes = []string{"port", "sni", "alpn", "http_host", "source", "any"}

// port returns the matcher's port: its own (type port) or that of a port
// matcher directly in its all list; 0 when none.
func (m *Matcher) port() int {
	if m == nil {
		return 0
	}
	if m.Type == "port" {
		return m.Port
	}
	for i := range m.All {
		if m.All[i].Type == "port" {
			return m.All[i].Port
		}
	}
	return 0
}

// catchAll reports whether the matcher matches every connection of its
// listener (a port, any, or a list of only those).
// readsHello reports whether m, or a matcher of its lists, is sni or alpn.
func (m *Matcher) readsHello() bool {
	if m.Type == "sni" || m.Type == "alpn" {
		return true
	}
	for i := range m.All {
		if m.All[i].readsHello() {
			return true
		}
	}
	for i := range m.Any {
		if m.Any[i].readsHello() {
			return true
		}
	}
	return false
}

func (m *Matcher) catchAll() bool {
	if m == nil || m.Type == "port" || m.Type == "any" {
		return true
	}
	if len(m.All) > 0 {
		for i := range m.All {
			if !m.All[i].catchAll() {
				return false
			}
		}
		return true
	}
	return false
}

// Access is client access control. In a rule each key overrides the global
// [access] section's; a key the rule does not set takes the global value.
type Access struct {
	// Allow: when non-empty, only clients in these CIDRs are served. Default [].
	Allow []string `toml:"allow"`
	// Deny: clients in these CIDRs are refused (checked before Allow). Default [].
	Deny []string `toml:"deny"`
	// MaxConnectionsPerIP caps concurrent TCP connections (UDP sessions) per
	// client address. Default 0: no limit.
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// ConnectionRatePerIP is a token bucket of new connections (sessions) per
	// second per client address. Default 0: no limit.
	ConnectionRatePerIP float64 `toml:"connection_rate_per_ip"`
	// ConnectionBurstPerIP is the bucket size. Default 0: the rate rounded up (at least 1).
	ConnectionBurstPerIP int `toml:"connection_burst_per_ip"`
	// FleetMaxConnectionsPerIP caps concurrent TCP connections (UDP
	// sessions) per client address across every instance sharing [redis]
	// (docs/fleet.md, "Fleet-wide access limits"). Needs [redis]. Default 0: no limit.
	FleetMaxConnectionsPerIP int `toml:"fleet_max_connections_per_ip"`
	// FleetConnectionRatePerIP is a token bucket of new connections
	// (sessions) per second per client address across the fleet. Needs
	// [redis]. Default 0: no limit.
	FleetConnectionRatePerIP float64 `toml:"fleet_connection_rate_per_ip"`
	// FleetConnectionBurstPerIP is its bucket size. Default 0: the rate rounded up (at least 1).
	FleetConnectionBurstPerIP int `toml:"fleet_connection_burst_per_ip"`
	// FleetConnectionRate is a token bucket of new connections (sessions)
	// per second to the rule from all clients together, across the fleet
	// (in [access]: for each rule). Needs [redis]. Default 0: no limit.
	FleetConnectionRate float64 `toml:"fleet_connection_rate"`
	// FleetConnectionBurst is its bucket size. Default 0: the rate rounded up (at least 1).
	FleetConnectionBurst int `toml:"fleet_connection_burst"`
}

// HasFleetLimits reports whether a sets any fleet-wide limit.
func (a *Access) HasFleetLimits() bool {
	return a.FleetMaxConnectionsPerIP > 0 || a.FleetConnectionRatePerIP > 0 || a.FleetConnectionRate > 0
}

// RuleAccess is a rule's [rules.access]: a nil field is not set and takes
// the global [access] value.
type RuleAccess struct {
	Allow                *[]string `toml:"allow"`
	Deny                 *[]string `toml:"deny"`
	MaxConnectionsPerIP  *int      `toml:"max_connections_per_ip"`
	ConnectionRatePerIP  *float64  `toml:"connection_rate_per_ip"`
	ConnectionBurstPerIP *int      `toml:"connection_burst_per_ip"`

	FleetMaxConnectionsPerIP  *int     `toml:"fleet_max_connections_per_ip"`
	FleetConnectionRatePerIP  *float64 `toml:"fleet_connection_rate_per_ip"`
	FleetConnectionBurstPerIP *int     `toml:"fleet_connection_burst_per_ip"`
	FleetConnectionRate       *float64 `toml:"fleet_connection_rate"`
	FleetConnectionBurst      *int     `toml:"fleet_connection_burst"`
}

// EffectiveAccess is the rule's access control with the global defaults applied.
func (c *Config) EffectiveAccess(r *Rule) Access {
	a := c.Access
	if o := r.Access; o != nil {
		if o.Allow != nil {
			a.Allow = *o.Allow
		}
		if o.Deny != nil {
			a.Deny = *o.Deny
		}
		if o.MaxConnectionsPerIP != nil {
			a.MaxConnectionsPerIP = *o.MaxConnectionsPerIP
		}
		if o.ConnectionRatePerIP != nil {
			a.ConnectionRatePerIP = *o.ConnectionRatePerIP
		}
		if o.ConnectionBurstPerIP != nil {
			a.ConnectionBurstPerIP = *o.ConnectionBurstPerIP
		}
		if o.FleetMaxConnectionsPerIP != nil {
			a.FleetMaxConnectionsPerIP = *o.FleetMaxConnectionsPerIP
		}
		if o.FleetConnectionRatePerIP != nil {
			a.FleetConnectionRatePerIP = *o.FleetConnectionRatePerIP
		}
		if o.FleetConnectionBurstPerIP != nil {
			a.FleetConnectionBurstPerIP = *o.FleetConnectionBurstPerIP
		}
		if o.FleetConnectionRate != nil {
			a.FleetConnectionRate = *o.FleetConnectionRate
		}
		if o.FleetConnectionBurst != nil {
			a.FleetConnectionBurst = *o.FleetConnectionBurst
		}
	}
	return a
}

// ParseCIDR parses a prefix or a bare address (as a /32 or /128).
func ParseCIDR(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR or address %q", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func checkCIDRs(e *Errors, path string, list []string) {
	for i, s := range list {
		if _, err := ParseCIDR(s); err != nil {
			e.addf(fmt.Sprintf("%s[%d]", path, i), "%v", err)
		}
	}
}

func (c *Config) validateAccess(e *Errors, path string, a Access, hasRedis bool) {
	checkCIDRs(e, path+".allow", a.Allow)
	checkCIDRs(e, path+".deny", a.Deny)
	if a.MaxConnectionsPerIP < 0 {
		e.addf(path+".max_connections_per_ip", "must be 0 (no limit) or more, got %d", a.MaxConnectionsPerIP)
	}
	if a.ConnectionRatePerIP < 0 || a.ConnectionRatePerIP > 1e6 {
		e.addf(path+".connection_rate_per_ip", "must be from 0 (no limit) to 1000000 per second, got %v", a.ConnectionRatePerIP)
	}
	if a.ConnectionBurstPerIP < 0 || a.ConnectionBurstPerIP > 1e6 {
		e.addf(path+".connection_burst_per_ip", "must be from 0 to 1000000, got %d", a.ConnectionBurstPerIP)
	}
	if a.FleetMaxConnectionsPerIP < 0 {
		e.addf(path+".fleet_max_connections_per_ip", "must be 0 (no limit) or more, got %d", a.FleetMaxConnectionsPerIP)
	}
	for _, r := range []struct {
		key string
		v   float64
	}{{"fleet_connection_rate_per_ip", a.FleetConnectionRatePerIP}, {"fleet_connection_rate", a.FleetConnectionRate}} {
		if r.v < 0 || r.v > 1e6 {
			e.addf(path+"."+r.key, "must be from 0 (no limit) to 1000000 per second, got %v", r.v)
		}
	}
	for _, b := range []struct {
		key string
		v   int
	}{{"fleet_connection_burst_per_ip", a.FleetConnectionBurstPerIP}, {"fleet_connection_burst", a.FleetConnectionBurst}} {
		if b.v < 0 || b.v > 1e6 {
			e.addf(path+"."+b.key, "must be from 0 to 1000000, got %d", b.v)
		}
	}
	if !hasRedis {
		for _, k := range []struct {
			key string
			set bool
		}{{"fleet_max_connections_per_ip", a.FleetMaxConnectionsPerIP > 0}, {"fleet_connection_rate_per_ip", a.FleetConnectionRatePerIP > 0},
			{"fleet_connection_rate", a.FleetConnectionRate > 0}} {
			if k.set {
				e.add(path+"."+k.key, "a fleet-wide limit needs a [redis] section (the instances share their counts through it); use the key without fleet_ for a limit on this instance alone")
			}
		}
	}
}

// validateMatch checks a rule's matcher, PROXY protocol and access keys.
func (c *Config) validateMatch(e *Errors, i int, shared listenerAgreement) {
	r := &c.Rules[i]
	path := fmt.Sprintf("rules[%d]", i)
	if r.Matcher != nil {
		validateMatcher(e, path+".matcher", r.Matcher, r.Protocol, true)
	}
	switch r.ProxyProtocol {
	case "", "v1", "v2":
		if r.ProxyProtocol == "v1" && r.Protocol == "udp" {
			e.add(path+".proxy_protocol", `UDP sessions can only carry "v2" PROXY headers`)
		}
	default:
		e.addf(path+".proxy_protocol", `must be "v1" or "v2" (or absent), got %q`, r.ProxyProtocol)
	}
	if r.AcceptProxyProtocol {
		if r.Protocol == "udp" {
			e.add(path+".accept_proxy_protocol", "is only supported for TCP rules")
		}
		if len(r.TrustedProxies) == 0 {
			e.add(path+".trusted_proxies", "accept_proxy_protocol needs the CIDRs of the proxies allowed to send a header")
		}
	} else if len(r.TrustedProxies) > 0 {
		e.add(path+".trusted_proxies", "has no effect without accept_proxy_protocol = true")
	}
	checkCIDRs(e, path+".trusted_proxies", r.TrustedProxies)
	if r.Access != nil { // only the keys the rule sets; [access] is checked once
		c.validateAccess(e, path+".access", (&Config{}).EffectiveAccess(r), c.Redis != nil)
	}
	for j := range r.Backends {
		if mc := r.Backends[j].MaxConnections; mc < 0 {
			e.addf(fmt.Sprintf("%s.backends[%d].max_connections", path, j), "must be 0 (no limit) or more, got %d", mc)
		}
	}
	shared.check(e, c, i, path)
}

// listenerAgreement checks that the enabled rules sharing a listener agree
// on what happens before routing (reading a PROXY header), in one pass. Per
// listener it keeps the first rule, and the first rule whose settings differ
// from it: the first earlier rule that any rule disagrees with is one of the two.
type listenerAgreement map[string]*[2]int // "protocol address" -> those two rules' index + 1; 0: none yet

func (a listenerAgreement) check(e *Errors, c *Config, i int, path string) {
	r := &c.Rules[i]
	if !r.Enabled {
		return
	}
	key := r.Protocol + " " + c.Listener(r)
	seen := a[key]
	if seen == nil {
		a[key] = &[2]int{i + 1, 0}
		return
	}
	other := seen[1] // the first rule unlike the listener's first, if r is like it
	if first := &c.Rules[seen[0]-1]; first.AcceptProxyProtocol != r.AcceptProxyProtocol || !reflect.DeepEqual(first.TrustedProxies, r.TrustedProxies) {
		other = seen[0]
		if seen[1] == 0 {
			seen[1] = i + 1
		}
	}
	if first := &c.Rules[seen[0]-1]; first.DNS != r.DNS {
		at := path + ".dns"
		if _, set := e.pos[at]; !set {
			at = path
		}
		e.addf(at, "rules %q and %q share listener %s but disagree on dns (a DNS listener reads every datagram as a query before routing)",
			first.Name, r.Name, c.Listener(r))
	}
	if other != 0 {
		e.addf(path+".accept_proxy_protocol", "rules %q and %q share listener %s but disagree on accept_proxy_protocol/trusted_proxies (the header is read before routing)",
			c.Rules[other-1].Name, r.Name, c.Listener(r))
	}
}

func validateMatcher(e *Errors, path string, m *Matcher, protocol string, top bool) {
	known := false
	for _, t := range MatcherTypes {
		known = known || t == m.Type
	}
	unused := func(key string, set bool) {
		if set && known {
			e.addf(path+"."+key, "is not used by a matcher of type %q", m.Type)
		}
	}
	lists := len(m.All) + len(m.Any)
	if m.Type == "" {
		switch {
		case len(m.All) > 0 && len(m.Any) > 0:
			e.add(path, "set either all or any, not both (nest them for both)")
		case lists == 0:
			e.addf(path+".type", "missing (known: %s; or a list all = [...] / any = [...])", strings.Join(MatcherTypes, ", "))
		}
		for k := range m.All {
			sub := fmt.Sprintf("%s.all[%d]", path, k)
			if m.All[k].Type == "port" && !top {
				e.add(sub, "a port matcher may only stand at the top or directly in the top-level all list")
			}
			validateMatcher(e, sub, &m.All[k], protocol, false)
		}
		for k := range m.Any {
			sub := fmt.Sprintf("%s.any[%d]", path, k)
			if m.Any[k].Type == "port" {
				e.add(sub, "a port matcher cannot stand in an any list: a rule is served on one listener")
			}
			validateMatcher(e, sub, &m.Any[k], protocol, false)
		}
		ports := 0
		for k := range m.All {
			if m.All[k].Type == "port" {
				ports++
			}
		}
		if ports > 1 {
			e.add(path+".all", "at most one port matcher")
		}
		if lists > 0 {
			for key, set := range map[string]bool{"port": m.Port != 0, "names": len(m.Names) > 0, "protocols": len(m.Protocols) > 0, "cidrs": len(m.CIDRs) > 0} {
				if set {
					e.addf(path+"."+key, "has no effect next to an all/any list: put it in a matcher of the list")
				}
			}
		}
		return
	}
	if lists > 0 {
		e.add(path, "set either type or a list all/any, not both")
	}
	unused("port", m.Type != "port" && m.Port != 0)
	unused("names", m.Type != "sni" && m.Type != "http_host" && len(m.Names) > 0)
	unused("protocols", m.Type != "alpn" && len(m.Protocols) > 0)
	unused("cidrs", m.Type != "source" && len(m.CIDRs) > 0)
	switch m.Type {
	case "port":
		if m.Port < 1 || m.Port > 65535 {
			e.addf(path+".port", "must be from 1 to 65535, got %d", m.Port)
		}
	case "sni", "http_host":
		if protocol == "udp" && m.Type == "http_host" {
			e.add(path+".type", "http_host needs a TCP rule (it reads the HTTP request head); on a UDP rule sni reads a QUIC ClientHello")
		}
		if len(m.Names) == 0 {
			e.add(path+".names", `needs at least one name, e.g. ["example.com", "*.example.com"]`)
		}
		for k, n := range m.Names {
			if !validName(n) {
				e.addf(fmt.Sprintf("%s.names[%d]", path, k), "invalid name %q: want a host name or *.domain", n)
			}
		}
	case "alpn":
		if len(m.Protocols) == 0 {
			e.add(path+".protocols", `needs at least one protocol, e.g. ["h2", "http/1.1"]`)
		}
	case "source":
		if len(m.CIDRs) == 0 {
			e.add(path+".cidrs", `needs at least one CIDR, e.g. ["10.0.0.0/8", "::1/128"]`)
		}
		checkCIDRs(e, path+".cidrs", m.CIDRs)
	case "any":
	default:
		e.addf(path+".type", "unknown matcher type %q (known: %s)", m.Type, strings.Join(MatcherTypes, ", "))
	}
}

func validName(n string) bool {
	n = strings.TrimPrefix(n, "*.")
	if n == "" || len(n) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(n, "."), ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, ch := range label {
			if !(ch == '-' || ch == '_' || ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z') {
				return false
			}
		}
	}
	return true
}
