package proxy

import (
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// Observer receives one route's data-path events, for metrics. The engine
// sets Route.Observer when it builds a route (internal/metrics implements
// it, with every labelled series resolved once per route, so an event is a
// few atomic adds); with metrics off it is nil and every event costs one nil
// check. Methods are called on the event loop that owns the connection or
// session and pass its index (loop: the epoll loop's or UDP shard's; the
// goroutine engine's worker index), so that an implementation can keep one
// share per loop and never write a cache line another loop writes per
// connection or per datagram (internal/metrics does). They must be safe for
// concurrent use, quick, and must never block (a blocked call stalls every
// connection of that loop).
//
// A TCP connection is one request. For UDP, a session (one client
// address:port) plays the part of a connection and every datagram from the
// client is a request.
type Observer interface {
	// ConnOpened: a client connection (UDP: session) was accepted for the
	// route. Every ConnOpened is followed by one ConnClosed.
	ConnOpened(loop int)
	// ConnClosed: it ended after d (from accept), how end says. b is the
	// backend it was proxied to, nil when it reached none (it was
	// Rejected); a TCP connection moved in bytes client to backend and out
	// bytes back (already counted by BytesIn and BytesOut), a UDP session
	// passes 0 for both (its datagrams are counted one by one).
	ConnClosed(loop int, b *backend.Backend, end End, d time.Duration, in, out int64)
	// Rejected: a connection or datagram was dropped without reaching a
	// backend, for reason r.
	Rejected(loop int, r Reason)

	// Picked: the route's router chose b.
	Picked(loop int, b *backend.Backend)
	// PickFailed: the router returned err instead of a backend.
	PickFailed(loop int, err error)
	// Connected: a TCP dial to b ended after d, with err nil on success.
	Connected(loop int, b *backend.Backend, d time.Duration, err error)

	// BytesIn and BytesOut count bytes as they move: client to backend
	// (in) and backend to client (out).
	BytesIn(loop int, n int64)
	BytesOut(loop int, n int64)

	// Datagram: a client datagram of n bytes was forwarded to b (err nil)
	// or failed to be sent (err set). It is a request and counts its bytes.
	Datagram(loop int, b *backend.Backend, n int, err error)
	// Reply: a backend datagram of n bytes was forwarded to the client;
	// rtt > 0 is the time since the client datagram it is the first reply
	// to (0 when it is not the first reply to one). It counts its bytes.
	Reply(loop int, b *backend.Backend, n int, rtt time.Duration)
}

// UnroutedObserver counts what arrives on a listener but matches no rule,
// so it has no route (and no Observer) to be counted on.
type UnroutedObserver interface {
	Unrouted(protocol string, r Reason)
}

// ListenerObserver counts, for one listener, the connections and
// datagrams refused before any of its rules took them: server-wide
// max_connections, shutdown, no matching rule, or a PROXY header or client
// problem met before routing. Called on the event loops, like Observer: it
// must be quick and never block.
type ListenerObserver interface {
	Rejected(r Reason)
}

// Reason says why a connection or datagram was not proxied. Its String is
// the reason label of dynamic_proxy_connections_rejected_total.
type Reason uint8

const (
	// ReasonMaxConnections: server.max_connections (TCP) or the rule's
	// max_sessions (UDP) was reached.
	ReasonMaxConnections Reason = iota
	// ReasonNoRule: no rule of the listener matched.
	ReasonNoRule
	// ReasonNoBackend: the router had no usable backend (all disabled,
	// draining or down).
	ReasonNoBackend
	// ReasonConnectFailed: every backend tried failed to connect.
	ReasonConnectFailed
	// ReasonShutdown: the proxy was shutting down.
	ReasonShutdown
	// ReasonDenied: the rule's allow/deny lists refused the client.
	ReasonDenied
	// ReasonPerIPLimit: max_connections_per_ip reached for the client.
	ReasonPerIPLimit
	// ReasonRateLimited: connection_rate_per_ip exceeded by the client.
	ReasonRateLimited
	// ReasonUntrustedProxy: a PROXY header was required but the peer is
	// not in trusted_proxies.
	ReasonUntrustedProxy
	// ReasonBadProxyHeader: the PROXY header was missing or malformed.
	ReasonBadProxyHeader
	// ReasonClientError: the client reset or closed before it could be routed.
	ReasonClientError
	// ReasonTLSHandshake: the client's TLS handshake with a terminating
	// rule failed (no backend was dialled).
	ReasonTLSHandshake
	// ReasonDNSMalformed: a datagram on a dns = true listener that is not
	// a DNS query (shorter than a header, a response, no or a malformed
	// question); it reached no backend.
	ReasonDNSMalformed
	// ReasonFleetConnLimited: fleet_max_connections_per_ip reached for the
	// client across the fleet (or this instance's share of it).
	ReasonFleetConnLimited
	// ReasonFleetRateLimited: fleet_connection_rate_per_ip exceeded by the client.
	ReasonFleetRateLimited
	// ReasonFleetRuleRateLimited: the rule's fleet_connection_rate exceeded.
	ReasonFleetRuleRateLimited
	// NumReasons is the number of reasons.
	NumReasons
)

var reasonNames = [NumReasons]string{"max_connections", "no_rule", "no_backend", "connect_failed", "shutdown",
	"denied", "per_ip_limit", "rate_limited", "untrusted_proxy", "bad_proxy_header", "client_error", "tls_handshake", "dns_malformed",
	"fleet_conn_limited", "fleet_rate_limited", "fleet_rule_rate_limited"}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// refuseNew counts a connection or session refused before it reached a
// backend: opened, rejected for r and closed at once.
func refuseNew(o Observer, loop int, r Reason) {
	if o != nil {
		o.ConnOpened(loop)
		o.Rejected(loop, r)
		o.ConnClosed(loop, nil, EndNoBackend, 0, 0, 0)
	}
}

// SetUnroutedObserver installs o (nil removes it).
func (s *Server) SetUnroutedObserver(o UnroutedObserver) {
	if o == nil {
		s.unrouted.Store(nil)
		return
	}
	s.unrouted.Store(&o)
}

// observeUnrouted counts traffic refused before a rule took it, on the
// server's UnroutedObserver and on the listener's (lo, nil: none).
func (s *Server) observeUnrouted(protocol string, lo ListenerObserver, r Reason) {
	if o := s.unrouted.Load(); o != nil {
		(*o).Unrouted(protocol, r)
	}
	if lo != nil {
		lo.Rejected(r)
	}
}
