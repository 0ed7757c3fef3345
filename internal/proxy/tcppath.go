package proxy

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// The steps of a TCP connection's life that both engines take the same way:
// what is counted, observed and logged when a connection is not routed,
// admitted or refused, when a dial fails or succeeds, when no backend is
// reachable and when the connection ends. The engines differ only in how
// they wait and move bytes (tcpconn.go: an event loop; go_tcp.go: a
// goroutine per connection).

// inspectReason is the rejection reason of a connection that inspection
// (inspect.go) returned err for, or no route (err nil).
func inspectReason(err error) Reason {
	switch {
	case errors.Is(err, ErrUntrustedProxy):
		return ReasonUntrustedProxy
	case errors.Is(err, ErrBadProxyHeader):
		return ReasonBadProxyHeader
	case err != nil:
		return ReasonClientError
	}
	return ReasonNoRule
}

// tcpUnrouted accounts for a connection no route takes, on the server and
// on the listener's observer lo.
func (s *Server) tcpUnrouted(listener string, lo ListenerObserver, id uint64, client netip.AddrPort, reason Reason, err error) {
	s.Stats.NoRoute.Add(1)
	s.observeUnrouted("tcp", lo, reason)
	s.log.Debug("connection closed before routing", "conn", id, "listener", listener, "client", client.String(), "reason", reason, "err", err)
}

// tcpNoRoutes accounts for a connection to a listener that has no route.
func (s *Server) tcpNoRoutes(listener string, lo ListenerObserver, id uint64, client netip.AddrPort) {
	s.Stats.NoRoute.Add(1)
	s.observeUnrouted("tcp", lo, ReasonNoRule)
	s.log.Debug("no rule matches connection; closing", "conn", id, "listener", listener, "client", client.String())
}

// tcpMaxConnections accounts for a connection refused by the server's
// max_connections: on the listener (lo), not on any rule.
func (s *Server) tcpMaxConnections(lo ListenerObserver, listener string, max int64) {
	s.Stats.Rejected.Add(1)
	if lo != nil {
		lo.Rejected(ReasonMaxConnections)
	}
	s.log.Debug("connection rejected: max_connections reached", "listener", listener, "max_connections", max)
}

// admitTCP opens a routed connection in rt's metrics and asks its access
// control. ok false: refused and accounted for; the caller resets the
// client. Otherwise release must be called when the connection ends.
func (s *Server) admitTCP(loop int, rt *Route, client netip.AddrPort, id ConnIdent) (release func(), ok bool) {
	o := rt.Observer
	if o != nil {
		o.ConnOpened(loop)
	}
	release, reason := rt.Access.Admit(client.Addr())
	if reason == ReasonNone {
		return release, true
	}
	s.Stats.Rejected.Add(1)
	if o != nil {
		o.Rejected(loop, reason)
		o.ConnClosed(loop, nil, EndNoBackend, time.Since(id.Start), 0, 0)
	}
	s.log.Debug("connection refused by access control", "conn", id.ID, "rule", rt.Name, "client", client.String(), "reason", reason)
	return nil, false
}

// tcpRequest is what the router sees of connection id; local is the
// listener's address, getLocal the connection's own (asked only when the
// listener is bound to a wildcard and the router needs it).
func (s *Server) tcpRequest(id uint64, rt *Route, ci *ConnInfo, local netip.AddrPort, getLocal func() (netip.AddrPort, bool)) router.Request {
	req := router.Request{Client: ci.Client, Local: local, SNI: ci.SNI, ALPN: ci.ALPN, Host: ci.Host}
	if local.Addr().IsUnspecified() && router.NeedsOf(rt.Router)&router.NeedLocal != 0 {
		if ap, ok := getLocal(); ok {
			req.Local = ap
		}
	}
	s.sampleDecision(id, rt, &req) // [logging] explain_sample (explain.go)
	return req
}

// tcpDialFailed accounts for a failed dial of b, which the connection lets
// go: its metrics, passive health, the router's tried set and a
// rate-limited warning saying truthfully whether another backend is left.
func (s *Server) tcpDialFailed(loop int, rt *Route, id uint64, req *router.Request, tries int, b *backend.Backend, dialT0 time.Time, err error) {
	if o := rt.Observer; o != nil {
		o.Connected(loop, b, time.Since(dialT0), err)
	}
	b.Health().ReportDial(err) // passive health detection
	b.Release(loop)
	req.Tried(b)
	if ok, suppressed := s.dialFailLog.allow(time.Second); ok {
		next := "no backend left"
		if anotherLeft(rt, req, tries) {
			next = "trying another backend"
		}
		s.log.Warn("backend dial failed; "+next, "conn", id, "rule", rt.Name, "backend", b.ID, "err", err, "suppressed", suppressed)
	}
}

// anotherLeft reports whether a connection that made tries picks has
// another backend to try.
func anotherLeft(rt *Route, req *router.Request, tries int) bool {
	if tries >= len(rt.Backends) {
		return false
	}
	for _, b := range rt.Backends {
		if req.Usable(b) {
			return true
		}
	}
	return false
}

// tcpConnected accounts for a successful dial of b.
func tcpConnected(loop int, rt *Route, b *backend.Backend, dialT0 time.Time) {
	if o := rt.Observer; o != nil {
		o.Connected(loop, b, time.Since(dialT0), nil)
	}
	b.Health().ReportDial(nil)
}

// tcpPreamble is what precedes the client's stream to the backend: a PROXY
// header when the route asks for one (its first skip bytes, not counted as
// traffic), then the bytes read while inspecting.
func tcpPreamble(rt *Route, client netip.AddrPort, local net.Addr, first []byte) (pend []byte, skip int, err error) {
	if rt.SendProxy == 0 {
		return first, 0, nil
	}
	h, err := proxyHeader(rt.SendProxy, client, local)
	if err != nil {
		return nil, 0, err
	}
	return append(h, first...), len(h), nil
}

// tcpNoBackend accounts for a routed connection that reached no backend;
// the caller releases its access slot and resets the client.
func (s *Server) tcpNoBackend(loop int, rt *Route, client netip.AddrPort, id ConnIdent, err error) {
	s.Stats.NoBackend.Add(1)
	took := time.Since(id.Start)
	if o := rt.Observer; o != nil {
		if errors.Is(err, router.ErrNoBackend) {
			o.Rejected(loop, ReasonNoBackend)
		} else {
			o.Rejected(loop, ReasonConnectFailed)
		}
		o.ConnClosed(loop, nil, EndNoBackend, took, 0, 0)
	}
	if ok, suppressed := s.noBackendLog.allow(time.Second); ok {
		s.log.Warn("no backend reachable; closing client", "conn", id.ID, "rule", rt.Name, "client", client.String(), "err", err, "suppressed", suppressed)
	}
	if rt.AccessLog { // every closed connection, including this one
		s.logTCPClosed(rt, id.ID, client, nil, 0, 0, took, EndNoBackend)
	}
}

// tcpFinished accounts for a relayed connection that ended: it gives back
// the backend and the access slot, and reports how it ended.
func (s *Server) tcpFinished(loop int, rt *Route, b *backend.Backend, client netip.AddrPort, id ConnIdent, release func(), upErr, downErr error, cut End, in, out int64) {
	b.Release(loop)
	release()
	how, took := endReason(upErr, downErr, cut), time.Since(id.Start)
	if o := rt.Observer; o != nil {
		o.ConnClosed(loop, b, how, took, in, out)
	}
	if rt.AccessLog {
		s.logTCPClosed(rt, id.ID, client, b, in, out, took, how)
	}
}

// logTCPClosed writes the access log line of a connection that ended after
// took; b is nil when it reached no backend.
func (s *Server) logTCPClosed(rt *Route, conn uint64, client netip.AddrPort, b *backend.Backend, in, out int64, took time.Duration, end End) {
	id, addr := "", ""
	if b != nil {
		id, addr = b.ID, b.Address
	}
	s.accessLogger().Info("connection closed", "conn", conn, "rule", rt.Name, "client", client.String(),
		"backend", id, "backend_addr", addr, "bytes_in", in, "bytes_out", out,
		"duration", took.Round(time.Microsecond), "end", end.String())
}
