package proxy

import (
	"net/netip"
	"time"
)

// Table is what a listener serves: its own options and the routes of the
// rules on it, in file order (the first that matches a connection or a new
// UDP client takes it). The engine builds one per listen address and
// publishes it with Listener.SetTable; a listener loads it with one atomic
// read per connection or session, so a reload switches tables without
// touching the socket.
type Table struct {
	Options ListenOptions
	Routes  []*Route
}

// ListenOptions are a listener's own settings: they apply before any rule
// is chosen, or to every session of the listener, so they belong to the
// listener rather than to one of its rules. The config has them agree
// across the rules of a listener (accept_proxy_protocol, trusted_proxies)
// or takes them from its first rule (session_timeout).
type ListenOptions struct {
	// AcceptProxy reads a PROXY protocol (v1 or v2) header first and uses
	// its source as the client address. The peer must be in Trusted.
	AcceptProxy bool
	Trusted     []netip.Prefix
	// PeekTimeout bounds the wait for a PROXY header and for the first bytes
	// the matchers need (TLS ClientHello, HTTP request head).
	PeekTimeout time.Duration

	// SessionTimeout (UDP) is the idle time after which a session ends;
	// 0: 30 s.
	SessionTimeout time.Duration
	// DNS (UDP) balances each DNS query on its own instead of a session
	// per client (udp_dns.go); every datagram that is not a DNS query is
	// dropped. The config has the listener's rules agree on it (dns).
	DNS bool

	// Observer counts what the listener refuses that belongs to no rule
	// (observe.go); nil: metrics off.
	Observer ListenerObserver
}
