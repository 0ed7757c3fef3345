//go:build linux

package proxy

import (
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// The epoll engine's QUIC steps (udp_quic.go): a shard reads new clients'
// ClientHellos itself, in its loop, with the datagrams held in the shard;
// the connection id table is the listener's, shared by its shards. The
// kernel spreads clients over the shards by address (SO_REUSEPORT), so a
// client whose address changed may reach another shard than its session's:
// that shard hands each such datagram (a copy) to the session's shard with
// Post, which forwards it and sends the replies to the new address.

// quicOwner is a session in the listener's connection id table: only its
// shard reads or changes s.
type quicOwner struct {
	sh *udpShard
	s  *udpSession
}

// shardQUIC is a shard's QUIC state.
type shardQUIC struct {
	peek    bool  // a route of the table matches on the ClientHello
	cids    bool  // a route of the table follows connection ids
	timeout int64 // peek_timeout, ns
	peeks   quicPeeks[*udpSession]
}

// refresh takes what a new table needs.
func (q *shardQUIC) refresh(t *Table) {
	q.peek, q.cids = tableQUIC(t)
	q.timeout = int64(t.Options.PeekTimeout)
	if q.timeout <= 0 {
		q.timeout = int64(3 * time.Second)
	}
}

// on reports whether a new client's datagram needs a QUIC step.
func (q *shardQUIC) on() bool { return q.peek || q.cids }

// quicNew takes the datagram of message i from a client without a
// session: when its connection id is a session's, it goes to that session
// (now at the client's new address); when the table reads ClientHellos, it
// is held until the rule can be chosen. handled is false when neither
// applies; s is the session to forward it on (nil: nothing to forward now).
func (l *udpShard) quicNew(client netip.AddrPort, i int) (s *udpSession, handled bool) {
	b := &l.b
	p := b.Bufs[i][:b.Hdrs[i].Len]
	if l.quic.cids {
		if o, ok := l.ln.cids.lookup(p); ok {
			switch {
			case o.sh != l:
				// Another shard's session: hand it the datagram and the
				// client's addresses.
				sa, salen, oob, d := b.Names[i], b.nlen[i], slices.Clone(b.OOB[i][:b.clen[i]]), slices.Clone(p)
				o.sh.Post(func() { o.sh.quicForwardFrom(o.s, client, &sa, salen, oob, d) })
				return nil, true
			case l.quicMigrate(o.s, client, &b.Names[i], b.nlen[i], b.OOB[i][:b.clen[i]]):
				return o.s, true
			}
			// (it ended: the client is new)
		}
	}
	if !l.quic.peek && !l.quic.peeks.peeking(client) { // (a reload may have dropped the sni rules meanwhile)
		return nil, false
	}
	pk, decided := l.quic.peeks.feed(client, p, l.now+l.quic.timeout, func() *udpSession {
		ps := &udpSession{client: client, fd: -1, sa: b.Names[i], salen: b.nlen[i]}
		oob := b.OOB[i][:b.clen[i]]
		if local, ifindex, ok := eventloop.ParsePktinfo(oob); ok {
			ps.ooblen = eventloop.PutPktinfo(ps.oob[:], l.family, local, ifindex)
		}
		ps.proxyHdr = l.proxyHeader(client, oob) // in case the rule chosen sends PROXY v2
		return ps
	})
	if !decided {
		return nil, true
	}
	s = l.quicDecided(pk, 1)
	if s == nil {
		if w := l.held.waiting(client); w != nil {
			l.hold(w.s, p) // the backend's name is being looked up: after the held ones
		}
		return nil, true
	}
	return s, true
}

// quicDecided opens the session of a client whose ClientHello was read (or
// given up on) and forwards the datagrams held meanwhile. It returns nil
// when no session opened (the datagrams wait for a lookup, or are dropped:
// the caller's pending ones too, counted here).
func (l *udpShard) quicDecided(pk *quicPeek[*udpSession], pending int) *udpSession {
	l.srv.QUIC.Peeks[pk.result].Add(1)
	ps := pk.s
	ps.quic = &udpQUIC{sni: pk.hello.sni, alpn: pk.hello.alpn}
	before := l.st
	s := l.sessions[pk.client]
	if s == nil || s.fd < 0 {
		s = l.newSession(pk.client, ps, -1)
	}
	if s == nil {
		if w := l.held.waiting(pk.client); w != nil {
			for _, d := range pk.dgrams {
				l.hold(w.s, d)
			}
			return nil
		}
		// newSession counted one datagram refused; the rest go with it.
		extra := int64(len(pk.dgrams) + pending - 1)
		for _, c := range [...]struct{ now, was *int64 }{{&l.st.noRoute, &before.noRoute}, {&l.st.shutdown, &before.shutdown},
			{&l.st.denied, &before.denied}, {&l.st.maxSess, &before.maxSess}, {&l.st.noBackend, &before.noBackend}} {
			if *c.now != *c.was {
				*c.now += extra
				break
			}
		}
		return nil
	}
	for _, d := range pk.dgrams {
		if s.fd < 0 {
			return nil
		}
		if s.quic != nil && s.quic.track {
			l.ln.cids.learn(s.quic, quicOwner{l, s}, d, false)
		}
		l.forward(s, d, false)
	}
	if s.fd < 0 {
		return nil
	}
	return s
}

// quicExpire gives up reading the ClientHellos whose peek_timeout passed:
// their clients are routed without a server name.
func (l *udpShard) quicExpire() {
	l.quic.peeks.expire(l.now, func(pk *quicPeek[*udpSession]) { l.quicDecided(pk, 0) })
}

// quicMigrate moves s, a session of this shard, to the client address a
// datagram carrying its connection id came from (its sockaddr sa of salen
// bytes and pktinfo oob), so that its replies go there. It reports false
// when s has ended.
func (l *udpShard) quicMigrate(s *udpSession, client netip.AddrPort, sa *unix.RawSockaddrInet6, salen uint32, oob []byte) bool {
	if s.fd < 0 || s.removed {
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
	s.client, s.sa, s.salen = client, *sa, salen
	if local, ifindex, ok := eventloop.ParsePktinfo(oob); ok {
		s.ooblen = eventloop.PutPktinfo(s.oob[:], l.family, local, ifindex)
	}
	l.srv.QUIC.Migrations.Add(1)
	return true
}

// quicForwardFrom forwards datagram p, which another shard received from
// client with s's connection id, on s (posted to s's shard).
func (l *udpShard) quicForwardFrom(s *udpSession, client netip.AddrPort, sa *unix.RawSockaddrInet6, salen uint32, oob, p []byte) {
	l.now = time.Now().UnixNano()
	if !l.quicMigrate(s, client, sa, salen, oob) {
		l.st.noRoute++ // its session ended meanwhile
		return
	}
	if s.quic != nil && s.quic.track {
		l.ln.cids.learn(s.quic, quicOwner{l, s}, p, false)
	}
	l.forward(s, p, true)
}
