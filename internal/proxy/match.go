package proxy

import (
	"net/netip"
	"strings"
)

// ConnInfo is what matchers see of a new connection. SNI, ALPN and Host are
// only filled when some route on the listener needs them (the listener then
// peeks at the client's first bytes, bounded by peek_timeout).
type ConnInfo struct {
	Client netip.AddrPort // the real client (from a PROXY header when trusted)
	SNI    string         // TLS server name, lower case; "" when none
	ALPN   []string       // TLS ALPN protocols offered
	Host   string         // HTTP/1.x Host header, lower case, without port
}

// Need says what a matcher must see before it can decide.
type Need uint8

const (
	NeedTLS  Need = 1 << iota // the TLS ClientHello
	NeedHTTP                  // the HTTP request head
)

// Matcher decides whether a route serves a connection.
type Matcher interface {
	Match(ci *ConnInfo) bool
	Needs() Need
}

// MatchAny matches every connection (type = "any", and a rule without a matcher).
type MatchAny struct{}

func (MatchAny) Match(*ConnInfo) bool { return true }
func (MatchAny) Needs() Need          { return 0 }

// MatchSNI matches the TLS server name against exact names and
// "*.example.com" wildcards (one or more labels, not the bare domain).
type MatchSNI struct{ Names NameSet }

func (m MatchSNI) Match(ci *ConnInfo) bool { return ci.SNI != "" && m.Names.Match(ci.SNI) }
func (MatchSNI) Needs() Need               { return NeedTLS }

// MatchHost matches the HTTP Host header like MatchSNI matches names.
type MatchHost struct{ Names NameSet }

func (m MatchHost) Match(ci *ConnInfo) bool { return ci.Host != "" && m.Names.Match(ci.Host) }
func (MatchHost) Needs() Need               { return NeedHTTP }

// MatchALPN matches when the client offers any of the protocols.
type MatchALPN struct{ Protocols []string }

func (m MatchALPN) Match(ci *ConnInfo) bool {
	for _, p := range ci.ALPN {
		for _, want := range m.Protocols {
			if p == want {
				return true
			}
		}
	}
	return false
}
func (MatchALPN) Needs() Need { return NeedTLS }

// MatchSource matches the client address against CIDR prefixes.
type MatchSource struct{ Prefixes []netip.Prefix }

func (m MatchSource) Match(ci *ConnInfo) bool { return ContainsAddr(m.Prefixes, ci.Client.Addr()) }
func (MatchSource) Needs() Need               { return 0 }

// MatchAll matches when every matcher does.
type MatchAll []Matcher

func (m MatchAll) Match(ci *ConnInfo) bool {
	for _, x := range m {
		if !x.Match(ci) {
			return false
		}
	}
	return true
}

func (m MatchAll) Needs() Need {
	var n Need
	for _, x := range m {
		n |= x.Needs()
	}
	return n
}

// MatchOneOf matches when any matcher does.
type MatchOneOf []Matcher

func (m MatchOneOf) Match(ci *ConnInfo) bool {
	for _, x := range m {
		if x.Match(ci) {
			return true
		}
	}
	return false
}

func (m MatchOneOf) Needs() Need { return MatchAll(m).Needs() }

// NameSet holds exact names and wildcard suffixes, lower case.
type NameSet struct {
	exact    map[string]bool
	suffixes []string // ".example.com" for "*.example.com"
}

// NewNameSet builds a set from names like "a.example.com" and "*.example.com".
func NewNameSet(names []string) NameSet {
	s := NameSet{exact: map[string]bool{}}
	for _, n := range names {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if strings.HasPrefix(n, "*.") {
			s.suffixes = append(s.suffixes, n[1:])
		} else {
			s.exact[n] = true
		}
	}
	return s
}

// Match reports whether name is in the set.
func (s NameSet) Match(name string) bool {
	if s.exact[name] {
		return true
	}
	for _, suf := range s.suffixes {
		if len(name) > len(suf) && strings.HasSuffix(name, suf) {
			return true
		}
	}
	return false
}

// ContainsAddr reports whether any prefix contains a (IPv4-mapped IPv6
// addresses are compared as IPv4).
func ContainsAddr(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
