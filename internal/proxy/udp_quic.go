package proxy

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/peek"
)

// QUIC on UDP rules, shared by both engines (docs/udp.md#quic):
//
//   - Routing by server name. When a rule of a UDP listener has an sni or
//     alpn matcher, a new client's first datagrams are held (quicPeeks)
//     and fed to peek.QUICInitial until its ClientHello is complete; the
//     rule is then chosen with the server name and ALPN, and the held
//     datagrams are forwarded unchanged, in order. A datagram that is not a
//     readable QUIC Initial (unknown version, does not decrypt), a bad
//     ClientHello, peek_timeout or the holding bounds decide at once
//     without a name: the matchers that need none (any, source, port) may
//     still take the client, as for a TCP client that does not speak TLS.
//   - Following connection ids. A session of a rule with quic = true
//     learns the connection ids of the long header packets both sides send
//     (quicCIDs, one table per listener): the client's destination ids and
//     the server's source ids. A datagram from a client address without a
//     session whose destination connection id is known goes on to the
//     session that owns it, whose client address becomes the new one, so
//     its replies follow the client (NAT rebinding, a changed network).
//     Short header packets do not carry their id's length; it is the
//     length of the server's source ids seen on the listener (at most
//     maxCIDLengths different ones are tried).

// QUICPeekResult is how reading a new client's QUIC ClientHello ended; its
// String is the result label of dynamic_proxy_udp_quic_peeks_total.
type QUICPeekResult uint8

const (
	// QUICPeekHello: the ClientHello was read (server name and ALPN).
	QUICPeekHello QUICPeekResult = iota
	// QUICPeekNotQUIC: the first datagram is not a readable QUIC Initial
	// (a short header, an unknown version, or it does not decrypt).
	QUICPeekNotQUIC
	// QUICPeekMalformed: the Initial packets decrypted but their
	// ClientHello is malformed, too large, or not complete within
	// peek.MaxQUICInitials datagrams.
	QUICPeekMalformed
	// QUICPeekTimeout: the ClientHello was not complete within
	// peek_timeout.
	QUICPeekTimeout
	// QUICPeekOverflow: the listener (an event loop of it) held as many
	// datagrams of peeking clients as it may (maxQUICPeekHeld,
	// maxQUICPeekBytes).
	QUICPeekOverflow
	// NumQUICPeekResults is the number of results.
	NumQUICPeekResults
)

// QUICPeekResultNames are the results' label values.
var QUICPeekResultNames = [NumQUICPeekResults]string{"hello", "not_quic", "malformed", "timeout", "overflow"}

func (r QUICPeekResult) String() string {
	if r < NumQUICPeekResults {
		return QUICPeekResultNames[r]
	}
	return "unknown"
}

// QUICStats are the QUIC counters of a Server, over all its UDP listeners.
type QUICStats struct {
	Peeks         [NumQUICPeekResults]atomic.Int64 // new clients whose ClientHello was looked for, by result
	Migrations    atomic.Int64                     // sessions whose client address changed and that followed it
	ConnectionIDs atomic.Int64                     // connection ids known now (the listeners' tables)
}

const (
	maxQUICPeekHeld  = 1024    // datagrams held for peeking clients, per shard or listener
	maxQUICPeekBytes = 2 << 20 // and their bytes
	maxSessionCIDs   = 8       // connection ids learned per session
	maxCIDLengths    = 4       // server connection id lengths tried for a short header
)

// udpQUIC is a session's QUIC state: what its ClientHello said (kept for
// a session opened again after a refusal) and the connection ids it owns
// in its listener's table.
type udpQUIC struct {
	sni   string
	alpn  []string
	track bool     // the route has quic = true: learn connection ids
	cids  []string // ids owned in the listener's table
	ended bool     // forgotten: learn no more (a reply read as the session ends)
}

// newQUICState is the QUIC state of a new session of rt whose client was
// seen as prev (its tombstone or its peeked ClientHello; nil: none), nil
// when the session needs none.
func newQUICState(rt *Route, prev *udpQUIC) *udpQUIC {
	if !rt.QUIC && (prev == nil || prev.sni == "" && prev.alpn == nil) {
		return nil
	}
	q := &udpQUIC{track: rt.QUIC}
	if prev != nil {
		q.sni, q.alpn = prev.sni, prev.alpn
	}
	return q
}

// quicConnInfo is what the matchers see of a new client whose QUIC state
// (nil: none) was read before.
func quicConnInfo(client netip.AddrPort, q *udpQUIC) ConnInfo {
	ci := ConnInfo{Client: client}
	if q != nil {
		ci.SNI, ci.ALPN = q.sni, q.alpn
	}
	return ci
}

// tableQUIC reports whether a UDP listener serving t must read new
// clients' ClientHello (a route's matcher or router needs its server name
// or ALPN) and whether it follows connection ids (a route has quic = true).
func tableQUIC(t *Table) (peekHello, cids bool) {
	for _, r := range t.Routes {
		if routeNeed(r)&NeedTLS != 0 {
			peekHello = true
		}
		if r.QUIC {
			cids = true
		}
	}
	return peekHello, cids
}

// quicPeeks holds the datagrams of new clients whose ClientHello is being
// read, bounded in datagrams and bytes. S is the engine's session type: a
// session not yet open that carries the client's addresses. Not safe for
// concurrent use (a shard's loop or the listener's lock owns it).
type quicPeeks[S any] struct {
	m     map[netip.AddrPort]*quicPeek[S]
	order []*quicPeek[S] // by deadline (one timeout for all), oldest first; decided ones are skipped
	n     int            // datagrams held
	bytes int
}

// quicPeek is one client's ClientHello being read.
type quicPeek[S any] struct {
	client   netip.AddrPort
	s        S
	q        peek.QUICInitial
	dgrams   [][]byte // held copies, in the order they came
	deadline int64    // unix ns
	hello    udpQUIC  // once decided: the name and ALPN read
	result   QUICPeekResult
	gone     bool // decided: no longer in m
}

// feed gives client's datagram p to its ClientHello reader, starting one
// (first makes the session to hold) with the deadline given. It reports
// whether the routing is decided: then the peek is finished, pk.dgrams are
// the earlier datagrams to forward before p, and p is not held. Otherwise
// p is held in pk.dgrams.
func (ps *quicPeeks[S]) feed(client netip.AddrPort, p []byte, deadline int64, first func() S) (pk *quicPeek[S], decided bool) {
	pk = ps.m[client]
	if pk == nil {
		pk = &quicPeek[S]{client: client, s: first(), deadline: deadline}
	}
	h, err := pk.q.Add(p)
	switch {
	case err == nil:
		pk.result = QUICPeekHello
		pk.hello.sni, pk.hello.alpn = h.ServerName, h.ALPN
	case errors.Is(err, peek.ErrNeedMore):
		if ps.n >= maxQUICPeekHeld || ps.bytes+len(p) > maxQUICPeekBytes {
			pk.result = QUICPeekOverflow
			break
		}
		if len(pk.dgrams) == 0 {
			if ps.m == nil {
				ps.m = map[netip.AddrPort]*quicPeek[S]{}
			}
			ps.m[client] = pk
			ps.order = append(ps.order, pk)
		}
		pk.dgrams = append(pk.dgrams, slices.Clone(p))
		ps.n++
		ps.bytes += len(p)
		return pk, false
	case errors.Is(err, peek.ErrNotQUIC):
		pk.result = QUICPeekNotQUIC
	default:
		pk.result = QUICPeekMalformed
	}
	ps.done(pk)
	return pk, true
}

// peeking reports whether client's ClientHello is being read.
func (ps *quicPeeks[S]) peeking(client netip.AddrPort) bool {
	return len(ps.m) > 0 && ps.m[client] != nil
}

// done forgets a decided peek (its datagrams stay with it).
func (ps *quicPeeks[S]) done(pk *quicPeek[S]) {
	if pk.gone {
		return
	}
	pk.gone = true
	if ps.m[pk.client] == pk {
		delete(ps.m, pk.client)
		for _, d := range pk.dgrams {
			ps.n--
			ps.bytes -= len(d)
		}
	}
}

// expire decides the peeks whose deadline passed at now (result timeout)
// and gives each to decide.
func (ps *quicPeeks[S]) expire(now int64, decide func(*quicPeek[S])) {
	for len(ps.order) > 0 {
		pk := ps.order[0]
		if !pk.gone && pk.deadline > now {
			return
		}
		ps.order[0] = nil
		ps.order = ps.order[1:]
		if pk.gone {
			continue
		}
		pk.result = QUICPeekTimeout
		ps.done(pk)
		decide(pk)
	}
	ps.order = nil // empty: let the array go
}

// next is the earliest deadline of a peek not decided; 0: none.
func (ps *quicPeeks[S]) next() int64 {
	for len(ps.order) > 0 {
		if pk := ps.order[0]; !pk.gone {
			return pk.deadline
		}
		ps.order[0] = nil
		ps.order = ps.order[1:]
	}
	return 0
}

// quicCIDs maps the connection ids of a listener's QUIC sessions to their
// owner (O: the engine's handle on a session). Safe for concurrent use:
// the epoll engine's shards share one.
type quicCIDs[O comparable] struct {
	mu    sync.Mutex
	m     map[string]quicCIDOwner[O]
	lens  [maxCIDLengths]uint8 // lengths of server-chosen ids seen
	nlens int
	stats *QUICStats
}

type quicCIDOwner[O comparable] struct {
	o      O
	server bool // the backend chose it (a long header's source id)
}

// learn records the connection ids of the long header packet that starts
// datagram p, sent by the server (fromServer: its source id) or by the
// client (its destination id), as q's, owned by o. An id the server chose
// takes the place of one a client claimed; a client never takes another
// session's id. q.cids is guarded by t's lock (the goroutine engine learns
// from both directions at once).
func (t *quicCIDs[O]) learn(q *udpQUIC, o O, p []byte, fromServer bool) {
	if len(p) == 0 || p[0]&0x80 == 0 {
		return // short headers (nearly every packet) carry no id to learn
	}
	h, ok := peek.ParseLongHeader(p)
	if !ok || h.Version != peek.QUICv1 && h.Version != peek.QUICv2 {
		return
	}
	cid := h.DCID
	if fromServer {
		cid = h.SCID
	}
	if len(cid) == 0 {
		return // a zero-length id tells sessions apart by address only
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if q.ended || len(q.cids) >= maxSessionCIDs {
		return
	}
	for _, c := range q.cids {
		if c == string(cid) {
			return
		}
	}
	if fromServer && !slices.Contains(t.lens[:t.nlens], uint8(len(cid))) && t.nlens < maxCIDLengths {
		t.lens[t.nlens] = uint8(len(cid))
		t.nlens++
	}
	prev, taken := t.m[string(cid)]
	if taken && (prev.o == o || prev.server || !fromServer) {
		return
	}
	if t.m == nil {
		t.m = map[string]quicCIDOwner[O]{}
	}
	key := string(cid)
	t.m[key] = quicCIDOwner[O]{o: o, server: fromServer}
	q.cids = append(q.cids, key)
	if !taken && t.stats != nil {
		t.stats.ConnectionIDs.Add(1)
	}
}

// forget drops q's connection ids (its session ended).
func (t *quicCIDs[O]) forget(q *udpQUIC, o O) {
	t.mu.Lock()
	for _, c := range q.cids {
		if e, ok := t.m[c]; ok && e.o == o {
			delete(t.m, c)
			if t.stats != nil {
				t.stats.ConnectionIDs.Add(-1)
			}
		}
	}
	q.cids, q.ended = nil, true
	t.mu.Unlock()
}

// lookup returns the owner of the destination connection id of the QUIC
// packet at the start of p: a long header says its id; a short header's
// is tried at each server id length seen.
func (t *quicCIDs[O]) lookup(p []byte) (O, bool) {
	var zero O
	if len(p) == 0 {
		return zero, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) == 0 {
		return zero, false
	}
	if p[0]&0x80 != 0 {
		h, ok := peek.ParseLongHeader(p)
		if !ok || len(h.DCID) == 0 {
			return zero, false
		}
		e, ok := t.m[string(h.DCID)]
		return e.o, ok
	}
	for _, n := range t.lens[:t.nlens] {
		if len(p) > int(n) {
			if e, ok := t.m[string(p[1:1+n])]; ok {
				return e.o, true
			}
		}
	}
	return zero, false
}
