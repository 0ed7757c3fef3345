package proxy

import (
	"net/netip"
	"time"
)

// The goroutine engine's QUIC steps (udp_quic.go), under the listener's
// lock like the rest of a client's datagrams: reading new clients'
// ClientHellos (a timer per client gives up at peek_timeout) and moving a
// session to the address its connection id now comes from.

// goQUIC is a listener's QUIC state. Guarded by the listener's mu (cids
// has its own lock: the sessions' goroutines learn from replies).
type goQUIC struct {
	table         *Table // what hello and follow were worked out for
	hello, follow bool   // a route matches on the ClientHello; a route follows connection ids
	peeks         quicPeeks[*goUDPSession]
	cids          quicCIDs[*goUDPSession]
}

// udpReplyAddr is where a session's replies go.
type udpReplyAddr struct {
	client netip.AddrPort
	dst    netip.Addr
	ifidx  int
}

// replyTo is where s's replies go now. Only a QUIC session's address
// changes (under both locks), so only its read takes s.mu.
func (s *goUDPSession) replyTo() udpReplyAddr {
	if s.quic == nil {
		return udpReplyAddr{s.client, s.dst, s.ifidx}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return udpReplyAddr{s.client, s.dst, s.ifidx}
}

// quicNew takes datagram p from a client without a session (called with
// l.mu held): when its connection id is a session's, that session moves
// to the client's new address and takes it; when the table reads
// ClientHellos, p is held until the rule can be chosen. handled is false
// when neither applies; s is the session to forward p on (nil: nothing to
// forward now).
func (l *goUDPListener) quicNew(client netip.AddrPort, dst netip.Addr, ifidx int, p []byte) (s *goUDPSession, handled bool) {
	q := &l.quic
	t := l.table.Load()
	if t != q.table {
		q.table = t
		q.hello, q.follow = tableQUIC(t)
	}
	if q.follow {
		if o, ok := q.cids.lookup(p); ok && l.quicMigrate(o, client, dst, ifidx) {
			return o, true
		}
	}
	if !q.hello && !q.peeks.peeking(client) { // (a reload may have dropped the sni rules meanwhile)
		return nil, false
	}
	timeout := t.Options.PeekTimeout
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	pk, decided := q.peeks.feed(client, p, time.Now().Add(timeout).UnixNano(), func() *goUDPSession {
		return &goUDPSession{l: l, client: client, dst: dst, ifidx: ifidx}
	})
	if !decided {
		if len(pk.dgrams) == 1 { // the first held: give up on it at peek_timeout
			time.AfterFunc(timeout, l.quicExpire)
		}
		return nil, true
	}
	if s = l.quicDecided(pk); s == nil {
		if w := l.held.waiting(client); w != nil {
			l.hold(w.s, p) // the backend's name is being looked up: after the held ones
		}
	}
	return s, true
}

// quicDecided opens the session of a client whose ClientHello was read (or
// given up on) and forwards the datagrams held meanwhile. It returns nil
// when no session opened (the datagrams wait for a lookup, or are
// dropped). Called with l.mu held.
func (l *goUDPListener) quicDecided(pk *quicPeek[*goUDPSession]) *goUDPSession {
	l.srv.QUIC.Peeks[pk.result].Add(1)
	ps := pk.s
	ps.quic = &udpQUIC{sni: pk.hello.sni, alpn: pk.hello.alpn}
	s := l.sessions[pk.client]
	if s == nil || s.bc == nil {
		s = l.newSession(pk.client, ps, ps.dst, ps.ifidx, nil)
	}
	if s == nil {
		if w := l.held.waiting(pk.client); w != nil {
			for _, d := range pk.dgrams {
				l.hold(w.s, d)
			}
		}
		return nil
	}
	for _, d := range pk.dgrams {
		if s.bc == nil {
			return nil
		}
		l.forward(s, d, false)
	}
	if s.bc == nil {
		return nil
	}
	return s
}

// quicExpire gives up reading the ClientHellos whose peek_timeout passed:
// their clients are routed without a server name.
func (l *goUDPListener) quicExpire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.quic.peeks.expire(time.Now().UnixNano(), func(pk *quicPeek[*goUDPSession]) { l.quicDecided(pk) })
}

// quicMigrate moves s to the client address a datagram carrying its
// connection id came from, so that its replies go there. It reports false
// when s has ended. Called with l.mu held.
func (l *goUDPListener) quicMigrate(s *goUDPSession, client netip.AddrPort, dst netip.Addr, ifidx int) bool {
	if s.bc == nil {
		return false
	}
	if s.client == client {
		return true
	}
	if l.sessions[s.client] == s {
		delete(l.sessions, s.client)
	}
	if l.sessions[client] == nil {
		l.sessions[client] = s
	}
	s.mu.Lock()
	s.client, s.dst, s.ifidx = client, dst, ifidx
	s.mu.Unlock()
	l.srv.QUIC.Migrations.Add(1)
	return true
}
