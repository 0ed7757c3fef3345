package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Discovery is one [[rules.discovery]] entry: a DNS name whose answer
// gives the rule backends, refreshed as its TTL says (internal/discovery).
type Discovery struct {
	// Name is what to ask. Type a: "host:port", every A and AAAA address
	// of host becomes a backend on port. Type srv: the SRV name
	// ("_http._tcp.web.service.consul"), every target's addresses become
	// backends on the record's port, with its weight and priority.
	// Required.
	Name string `toml:"name"`
	// Type is "a" (A and AAAA) or "srv". Default "a".
	Type string `toml:"type"`
	// ID is the start of the backends' ids: ID:address:port. Default "":
	// the host name of Name.
	ID string `toml:"id"`
	// Resolver is the DNS server asked, "ip:port" or "ip" (port 53).
	// Default "": the first nameserver of /etc/resolv.conf.
	Resolver string `toml:"resolver"`
	// MinTTL is the shortest time between two refreshes, whatever the TTL
	// of the answer (and the retry interval after a failure). Default 5s.
	MinTTL Duration `toml:"min_ttl"`
	// MaxTTL is the longest time an answer is used before asking again,
	// whatever its TTL. Default 5m.
	MaxTTL Duration `toml:"max_ttl"`
	// Timeout bounds one query (the whole of a refresh for type a; each
	// query of an SRV refresh). Default 2s.
	Timeout Duration `toml:"timeout"`
	// EmptyGrace is how long an empty answer or NXDOMAIN must last before
	// it empties the name's backends; until then the last good answer
	// serves. 0 applies it at once. Default 30s.
	EmptyGrace Duration `toml:"empty_grace"`
	// Weight is each backend's weight for type a, 1–10000 (srv takes the
	// record's). Default 1.
	Weight int `toml:"weight"`
	// Priority is the backends' tier for type a; for srv it is added to
	// each record's priority. 0–65535. Default 0.
	Priority int `toml:"priority"`
	// Backup puts the name's backends in the last tier (see
	// Backend.Backup). Default false.
	Backup bool `toml:"backup"`
	// MaxConnections caps each backend as max_connections does. Default 0:
	// no limit.
	MaxConnections int `toml:"max_connections"`
}

// Discovery defaults.
const (
	DefaultDiscoveryMinTTL     = 5 * time.Second
	DefaultDiscoveryMaxTTL     = 5 * time.Minute
	DefaultDiscoveryTimeout    = 2 * time.Second
	DefaultDiscoveryEmptyGrace = 30 * time.Second
	maxDiscoveryIDLen          = 80 // room for ":[ipv6]:port" within 128
)

func (d *Discovery) setDefaults() {
	*d = Discovery{Type: "a", MinTTL: Duration(DefaultDiscoveryMinTTL), MaxTTL: Duration(DefaultDiscoveryMaxTTL),
		Timeout: Duration(DefaultDiscoveryTimeout), EmptyGrace: Duration(DefaultDiscoveryEmptyGrace), Weight: 1}
}

// Host is the name asked: Name without its port for type a.
func (d *Discovery) Host() string {
	if d.Type == "a" {
		if h, _, err := net.SplitHostPort(d.Name); err == nil {
			return h
		}
	}
	return d.Name
}

// Port is the backends' port for type a (0 for srv).
func (d *Discovery) Port() int {
	if d.Type != "a" {
		return 0
	}
	_, p, err := net.SplitHostPort(d.Name)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// IDPrefix is the start of the backends' ids.
func (d *Discovery) IDPrefix() string {
	if d.ID != "" {
		return d.ID
	}
	return strings.TrimSuffix(d.Host(), ".")
}

// Tier is the tier of the name's backends for type a, the offset added to
// each record's priority for srv.
func (d *Discovery) Tier() int {
	if d.Backup {
		return BackupTier
	}
	return d.Priority
}

// ResolverAddr is Resolver as ip:port ("" when unset).
func (d *Discovery) ResolverAddr() string { return dnsServerAddr(d.Resolver) }

// dnsServerAddr is a DNS server given as "ip" or "ip:port", as ip:port.
func dnsServerAddr(s string) string {
	if s == "" {
		return ""
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip, 53).String()
	}
	return s
}

// checkDNSServer says what is wrong with a DNS server address, or "".
func checkDNSServer(s string) string {
	if s == "" {
		return ""
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return ""
	}
	if ap, err := netip.ParseAddrPort(s); err != nil || ap.Port() == 0 {
		return fmt.Sprintf(`want "ip:port" or "ip" (port 53) of a DNS server, got %q`, s)
	}
	return ""
}

func checkTier(e *Errors, path string, priority int, backup bool) {
	if priority < 0 || priority > 65535 {
		e.addf(path+".priority", "must be from 0 (first) to 65535, got %d", priority)
	}
	if _, set := e.pos[path+".priority"]; set && backup {
		e.addf(path+".backup", "backup = true is the last tier, after every priority: set priority or backup, not both")
	}
}

func validateDiscovery(e *Errors, r *Rule, path string) {
	seen := map[string]int{}
	for i := range r.Discovery {
		d := &r.Discovery[i]
		dp := fmt.Sprintf("%s.discovery[%d]", path, i)
		switch d.Type {
		case "a":
			host, port, err := net.SplitHostPort(d.Name)
			p, perr := strconv.Atoi(port)
			switch {
			case d.Name == "":
				e.add(dp+".name", `missing: want "host:port" for type a`)
			case err != nil || host == "":
				e.addf(dp+".name", `type a wants "host:port" (every address of host becomes a backend on port), got %q`, d.Name)
			case perr != nil || p < 1 || p > 65535:
				e.addf(dp+".name", "port must be from 1 to 65535 in %q", d.Name)
			case !dnsName(host):
				e.addf(dp+".name", "%q is not a DNS name", host)
			}
		case "srv":
			switch {
			case d.Name == "":
				e.add(dp+".name", `missing: want an SRV name such as "_http._tcp.web.example.com"`)
			case strings.Contains(d.Name, ":"):
				e.addf(dp+".name", "type srv takes a name without a port (the records give the ports), got %q", d.Name)
			case !dnsName(d.Name):
				e.addf(dp+".name", "%q is not a DNS name", d.Name)
			}
			if _, set := e.pos[dp+".weight"]; set {
				e.add(dp+".weight", "type srv takes each backend's weight from its record: remove weight")
			}
		default:
			e.addf(dp+".type", `must be "a" (A and AAAA) or "srv", got %q`, d.Type)
		}
		if d.ID != "" {
			if err := CheckName("discovery id", d.ID); err != nil {
				e.addf(dp+".id", "%v", err)
			}
		}
		if len(d.IDPrefix()) > maxDiscoveryIDLen {
			e.addf(dp+".id", "backend ids start with %q, longer than %d characters: set a shorter id", shortName(d.IDPrefix()), maxDiscoveryIDLen)
		}
		key := d.Type + " " + d.Name
		if j, dup := seen[key]; dup {
			e.addf(dp+".name", "%s %q is already discovered by discovery[%d]", d.Type, d.Name, j)
		}
		seen[key] = i
		if msg := checkDNSServer(d.Resolver); msg != "" {
			e.add(dp+".resolver", msg)
		}
		if d.MinTTL <= 0 {
			e.add(dp+".min_ttl", "must be greater than 0")
		}
		if d.MaxTTL <= 0 {
			e.add(dp+".max_ttl", "must be greater than 0")
		}
		if d.MinTTL > 0 && d.MaxTTL > 0 && d.MinTTL > d.MaxTTL {
			e.addf(dp+".min_ttl", "min_ttl %s is more than max_ttl %s", d.MinTTL.D(), d.MaxTTL.D())
		}
		if d.Timeout <= 0 {
			e.add(dp+".timeout", "must be greater than 0")
		}
		if d.Weight < 1 || d.Weight > MaxWeight {
			e.addf(dp+".weight", "must be from 1 to %d, got %d", MaxWeight, d.Weight)
		}
		if d.MaxConnections < 0 {
			e.addf(dp+".max_connections", "must be 0 (no limit) or more, got %d", d.MaxConnections)
		}
		checkTier(e, dp, d.Priority, d.Backup)
	}
}

// dnsName reports whether s looks like a DNS name: labels of 1–63
// letters, digits, '-' and '_', at most 253 characters, a final dot
// allowed.
func dnsName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
