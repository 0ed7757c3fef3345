package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// The steps of a UDP session's life that both engines take the same way:
// admitting a new client, picking and dialling its backend, counting its
// datagrams and replies, and accounting for its end. The engines differ in
// how they wait and move datagrams (udp.go: sharded event loops with
// recvmmsg/sendmmsg; go_udp.go: a goroutine per listener and per session).

// maxDatagram is the largest UDP payload there is: 65,535 minus the 8-byte
// UDP header (IPv4 allows 65,507 once its own header is counted, IPv6
// 65,527). A buffer this size never truncates a datagram.
const maxDatagram = 65535

const (
	maxWaiting     = 1024    // datagrams held for new sessions waiting for a lookup, per shard or listener
	maxWaitingEach = 8       // of which one client's
	socketBuffer   = 4 << 20 // SO_RCVBUF/SO_SNDBUF asked for (the kernel caps it at rmem_max/wmem_max)
	defaultTimeout = 30 * time.Second
)

// errRefused is what passive health checking is told when a backend answers
// a session's datagram with ICMP port unreachable.
var errRefused = fmt.Errorf("udp: %w (ICMP port unreachable)", syscall.ECONNREFUSED)

// errResolving: the backend's host name is being looked up; the session
// opens when the lookup is done, and the client's datagrams wait meanwhile.
var errResolving = errors.New("udp: resolving the backend's host name")

// udpRefusal says why admitUDP refused a new client's datagram.
type udpRefusal uint8

const (
	udpAdmitted    udpRefusal = iota
	udpNoRoute                // no rule of the listener matched (DroppedNoRoute)
	udpShutdown               // the listener drains (DroppedShutdown)
	udpDenied                 // access control (DroppedDenied)
	udpMaxSessions            // max_sessions (DroppedMaxSessions)
	udpBudget                 // the descriptor budget (counted by refuse)
)

// countRefusal counts a new client admitUDP refused, by why (udpBudget is
// counted by refuse).
func (u *UDPStats) countRefusal(why udpRefusal) {
	switch why {
	case udpNoRoute:
		u.DroppedNoRoute.Add(1)
	case udpShutdown:
		u.DroppedShutdown.Add(1)
	case udpDenied:
		u.DroppedDenied.Add(1)
	case udpMaxSessions:
		u.DroppedMaxSessions.Add(1)
	}
}

// admitUDP decides on a new client of a listener serving t (closed: the
// listener drains), of which the matchers see ci (the server name of a
// QUIC ClientHello: udp_quic.go): its route, access control, a place among the
// listener's live sessions (max_sessions) and the descriptor budget. When
// admitted, the caller owns one count of live and release; it gives both
// back if the session does not open. A refusal is observed and logged here;
// the caller counts it by kind.
func (s *Server) admitUDP(loop int, t *Table, closed bool, ci *ConnInfo, live *atomic.Int64) (*Route, func(), udpRefusal) {
	routes, lo, client := t.Routes, t.Options.Observer, ci.Client
	switch {
	case len(routes) == 0:
		s.observeUnrouted("udp", lo, ReasonNoRule)
		return nil, nil, udpNoRoute
	case closed:
		if lo != nil { // the listener's closing: no rule's
			lo.Rejected(ReasonShutdown)
		}
		return nil, nil, udpShutdown
	}
	rt := firstMatch(routes, ci)
	if rt == nil { // no source/any matcher of the listener's rules matched
		s.observeUnrouted("udp", lo, ReasonNoRule)
		return nil, nil, udpNoRoute
	}
	release, reason := rt.Access.Admit(client.Addr())
	if reason != ReasonNone {
		refuseNew(rt.Observer, loop, reason)
		return nil, nil, udpDenied
	}
	if n := live.Add(1); rt.MaxSessions > 0 && n > int64(rt.MaxSessions) {
		live.Add(-1)
		release()
		refuseNew(rt.Observer, loop, ReasonMaxConnections)
		if ok, suppressed := s.udpLimitLog.allow(time.Second); ok {
			s.log.Warn("udp max_sessions reached; dropping datagrams from new clients",
				"rule", rt.Name, "max_sessions", rt.MaxSessions, "suppressed", suppressed)
		}
		return nil, nil, udpMaxSessions
	}
	if !s.fdRoom(1) { // at the descriptor budget (fdbudget.go)
		live.Add(-1)
		release()
		s.refuse(RefusedUDPSession, rt.Name)
		return nil, nil, udpBudget
	}
	return rt, release, udpAdmitted
}

// pickUDP picks a backend for the client of ci and has dial open its
// socket, trying the next pick when that fails. The router sees the
// server name and ALPN of a QUIC ClientHello read for the client (ci; a
// router's NeedSNI or NeedALPN has the listener read it, tableQUIC).
// Backends in avoid (they refused this client) are skipped while any
// other is usable. dial's errResolving is returned at once, with the
// backend it was for.
func pickUDP(loop int, rt *Route, req *router.Request, ci *ConnInfo, local netip.AddrPort, avoid []*backend.Backend, dial func(*backend.Backend) error) (*backend.Backend, error) {
	client := ci.Client
	for pass := 0; pass < 2; pass++ {
		req.Reset()
		req.Client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		req.Local = local
		req.SNI, req.ALPN = ci.SNI, ci.ALPN
		if pass == 0 {
			for _, b := range avoid {
				req.Tried(b)
			}
		}
		var lastErr error
		o := rt.Observer
		for range rt.Backends {
			b, err := rt.Router.Pick(req)
			if err != nil {
				if lastErr == nil {
					lastErr = err
					if o != nil && (pass == 1 || len(avoid) == 0) {
						o.PickFailed(loop, err)
					}
				}
				break
			}
			if o != nil {
				o.Picked(loop, b)
			}
			err = dial(b)
			if err == nil || err == errResolving {
				return b, err
			}
			req.Tried(b)
			lastErr = fmt.Errorf("backend %q: %w", b.ID, err)
		}
		if pass == 0 && len(avoid) > 0 && errors.Is(lastErr, router.ErrNoBackend) {
			continue // everything usable refused this client: try them again
		}
		if lastErr == nil {
			lastErr = router.NoBackend(len(rt.Backends))
		}
		return nil, lastErr
	}
	return nil, router.NoBackend(len(rt.Backends))
}

// udpNoBackend accounts for a new session (already ConnOpened) that found
// no backend.
func (s *Server) udpNoBackend(loop int, rt *Route, client netip.AddrPort, err error) {
	if o := rt.Observer; o != nil {
		if errors.Is(err, router.ErrNoBackend) {
			o.Rejected(loop, ReasonNoBackend)
		} else {
			o.Rejected(loop, ReasonConnectFailed)
		}
		o.ConnClosed(loop, nil, EndNoBackend, 0, 0, 0)
	}
	if ok, suppressed := s.noBackendLog.allow(time.Second); ok {
		s.log.Warn("no backend for a new udp session; dropping", "rule", rt.Name,
			"client", client.String(), "err", err, "suppressed", suppressed)
	}
}

// udpCounts are a session's datagram counts and what max_responses and
// the round-trip time need.
type udpCounts struct {
	inN, outN, inB, outB int64
	request              int64 // unix ns when the client datagram not yet answered was forwarded; 0: none
	responses            int
	answered             bool // a reply came: reported to passive health once
}

// repliesDone reports whether the session delivered every reply it
// expects: limit (max_responses; 0: none) per datagram the client sent
// (nginx's proxy_responses), so a client that sends two queries before the
// first answer (glibc's A and AAAA) gets both answers.
func (c *udpCounts) repliesDone(limit int) bool {
	return limit > 0 && int64(c.responses) >= int64(limit)*c.inN
}

// forwarded counts a client datagram of n bytes sent to b at now (unix ns)
// by worker idx.
func (c *udpCounts) forwarded(b *backend.Backend, o Observer, idx, n int, now int64) {
	c.inN++
	c.inB += int64(n)
	b.AddBytesIn(idx, int64(n))
	if o != nil {
		o.Datagram(idx, b, n, nil)
	}
	if c.request == 0 {
		c.request = now
	}
}

// replied counts a reply of n bytes from b at now, to be sent to the
// client; the first reply of a session tells passive health the backend
// answers.
func (c *udpCounts) replied(b *backend.Backend, o Observer, idx, n int, now int64) {
	c.responses++
	c.outN++
	c.outB += int64(n)
	b.AddBytesOut(idx, int64(n))
	if o != nil {
		var rtt time.Duration
		if c.request != 0 {
			rtt = max(time.Duration(now-c.request), 1)
		}
		o.Reply(idx, b, n, rtt)
	}
	c.request = 0
	if !c.answered {
		c.answered = true
		b.Health().ReportDial(nil) // passive health: the backend answers
	}
}

// udpSessionEnded accounts for the end of a session of rt that reached b
// and lasted took; the caller has given its socket, backend and access
// slot back.
func (s *Server) udpSessionEnded(loop int, rt *Route, id uint64, client netip.AddrPort, b *backend.Backend, c *udpCounts, took time.Duration, end End) {
	s.UDP.Ended[end].Add(1)
	if o := rt.Observer; o != nil {
		o.ConnClosed(loop, b, end, took, 0, 0)
	}
	if rt.AccessLog {
		s.accessLogger().Info("udp session closed", "conn", id, "rule", rt.Name, "client", client.String(),
			"backend", b.ID, "backend_addr", b.Address,
			"datagrams_in", c.inN, "datagrams_out", c.outN, "bytes_in", c.inB, "bytes_out", c.outB,
			"duration", took.Round(time.Microsecond), "end", end.String())
	}
}

// udpProxyHeader is the PROXY protocol v2 header (transport DGRAM) telling
// the backend that client sent a session's datagrams to local.
func udpProxyHeader(client, local netip.AddrPort) []byte {
	h := proxyproto.HeaderProxyFromAddrs(2, net.UDPAddrFromAddrPort(client), net.UDPAddrFromAddrPort(local))
	b, err := h.Format()
	if err != nil {
		return nil
	}
	return b
}

// udpHeld holds the datagrams of new clients whose session waits for its
// backend's host name to be looked up, bounded per client (maxWaitingEach)
// and in all (maxWaiting). S is the engine's session type: the waiting
// session carries the client's addresses, the backends it may not use and
// its PROXY header. The zero value is empty and ready.
type udpHeld[S any] struct {
	m map[netip.AddrPort]*udpWaiting[S]
	n int // datagrams held
}

// udpWaiting is one waiting client's session and datagrams.
type udpWaiting[S any] struct {
	s      S
	dgrams [][]byte
}

// waiting returns client's waiting entry, nil when it does not wait.
func (h *udpHeld[S]) waiting(client netip.AddrPort) *udpWaiting[S] {
	if len(h.m) == 0 {
		return nil
	}
	return h.m[client]
}

// hold keeps a copy of datagram p (nil: none) of client, whose session s
// waits; it reports false when p was dropped at the bounds.
func (h *udpHeld[S]) hold(client netip.AddrPort, s S, p []byte) bool {
	w := h.m[client]
	if w == nil {
		if h.m == nil {
			h.m = map[netip.AddrPort]*udpWaiting[S]{}
		}
		w = &udpWaiting[S]{s: s}
		h.m[client] = w
	}
	if p == nil {
		return true
	}
	if h.n >= maxWaiting || len(w.dgrams) >= maxWaitingEach {
		return false
	}
	w.dgrams = append(w.dgrams, slices.Clone(p))
	h.n++
	return true
}

// replay is called when a lookup finished: it gives every waiting client
// to open, which opens its session (ok) and returns how to forward a held
// datagram on it (false: the session ended, forward no more). A client
// still waiting (open held it again) keeps its datagrams. It returns how
// many datagrams were dropped.
func (h *udpHeld[S]) replay(open func(client netip.AddrPort, s S) (forward func([]byte) bool, ok bool)) (dropped int) {
	ws := h.m
	h.m, h.n = nil, 0
	for client, w := range ws {
		forward, ok := open(client, w.s)
		if !ok {
			if nw := h.waiting(client); nw != nil { // still waiting: keep its datagrams
				for _, p := range w.dgrams {
					if !h.hold(client, nw.s, p) {
						dropped++
					}
				}
			} else {
				dropped += len(w.dgrams)
			}
			continue
		}
		for _, p := range w.dgrams {
			if !forward(p) {
				break
			}
		}
	}
	return dropped
}
