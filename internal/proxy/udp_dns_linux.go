//go:build linux

package proxy

import (
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/dnsmsg"
	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// DNS-aware balancing on the epoll engine (udp_dns.go has the design): a
// shard keeps its DNS clients apart from its sessions, and one socket per
// backend it sends queries to, in its epoll set like a session's. All of
// it is the shard's loop's alone.

// dnsShard is a shard's DNS-mode state.
type dnsShard struct {
	clients    map[netip.AddrPort]*dnsClient
	head, tail *dnsClient // by last activity, oldest first
	ups        map[*backend.Backend]*dnsUpstream
	byFd       []*dnsUpstream
}

// dnsClient is one client address:port of a DNS listener: a session
// without a socket of its own.
type dnsClient struct {
	id     uint64 // its connection id (conns.go): the access log's conn
	client netip.AddrPort
	sa     unix.RawSockaddrInet6 // the client's sockaddr as received
	salen  uint32
	oob    [40]byte // pktinfo: the replies' source address
	ooblen int

	route    *Route
	table    *Table // the listener's table route came from
	obs      Observer
	release  func()           // the access control slot
	proxyHdr []byte           // PROXY v2 header sent before each of its queries
	b        *backend.Backend // where its last query went (logs, metrics)
	start    int64
	last     int64
	udpCounts
	prev, next *dnsClient
	ended      bool
}

// dnsUpstream is the shard's socket to one backend, shared by its clients.
type dnsUpstream struct {
	b    *backend.Backend
	obs  DNSObserver // the backend's route's; nil: none
	fd   int
	last int64 // unix ns of its last query or reply
	ids  dnsIDs[*dnsClient]
}

// dnsQueries handles the n client datagrams of the batch (a DNS
// listener's): each a query balanced on its own.
func (l *udpShard) dnsQueries(n int) {
	b := &l.b
	for i := 0; i < n; i++ {
		if b.Hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
			l.st.oversize++
			continue
		}
		client := eventloop.SockaddrAddrPort(&b.Names[i])
		if !client.IsValid() {
			l.st.sendErr++
			continue
		}
		l.dnsQuery(client, i, b.Bufs[i][:b.Hdrs[i].Len])
	}
}

// dnsQuery forwards query p of client (message i of the batch) to the
// backend the route's router picks for it.
func (l *udpShard) dnsQuery(client netip.AddrPort, i int, p []byte) {
	id, q, ok := parseDNSQuery(p)
	if !ok {
		l.srv.dnsMalformed(l.lastTable)
		return
	}
	d := &l.dns
	c := d.clients[client]
	if c != nil && c.table != l.lastTable && !l.dnsRefresh(c) {
		l.dnsEnd(c, EndDrained) // its rule is gone: it starts again as a new client
		c = nil
	}
	fresh := c == nil
	if fresh {
		if c = l.dnsNewClient(client, i); c == nil {
			return
		}
	}
	var sent *dnsUpstream
	b, err := pickUDP(l.idx, c.route, &l.req, &ConnInfo{Client: client}, l.local, nil, func(b *backend.Backend) error {
		up, err := l.dnsUpstreamFor(b, c.route)
		if err != nil {
			return err
		}
		wire, ok := up.ids.add(c, id, q, l.now)
		if !ok {
			return errDNSFull
		}
		dnsmsg.SetID(p, wire)
		var e unix.Errno
		if c.proxyHdr != nil {
			e = eventloop.SendWithHeader(up.fd, c.proxyHdr, p)
		} else {
			e = eventloop.SendDatagram(up.fd, p)
		}
		if e != 0 {
			up.ids.take(wire)
			dnsmsg.SetID(p, id)
			if c.obs != nil {
				c.obs.Datagram(l.idx, b, len(p), e)
			}
			switch e {
			case unix.ECONNREFUSED: // an earlier query's ICMP port unreachable
				b.Health().ReportDial(errRefused)
			case unix.EMSGSIZE:
				l.st.oversize++
			default:
				l.st.sendErr++
			}
			return os.NewSyscallError("send", e)
		}
		if wire != id {
			l.srv.UDP.DNSRewritten.Add(1)
		}
		b.Acquire(l.idx) // a query in flight, until answered or forgotten
		up.last = l.now
		sent = up
		return nil
	})
	if sent == nil {
		if err == nil || err == errResolving {
			err = errResolving // a host name being looked up: the client asks again
		}
		l.st.noBackend++
		if fresh {
			l.dnsAbandon(c, err)
		}
		return
	}
	if fresh {
		l.dnsRegister(c)
	}
	c.b = b
	c.request = 0 // each query's own round trip (dnsReplies)
	c.forwarded(b, c.obs, l.idx, len(p), l.now)
	l.st.in++
	l.st.inB += int64(len(p))
	l.dnsTouch(c)
}

// dnsNewClient admits a new client of the DNS listener, whose first query
// is message i; nil when it is refused (counted).
func (l *udpShard) dnsNewClient(client netip.AddrPort, i int) *dnsClient {
	rt, release, why := l.srv.admitUDP(l.idx, l.lastTable, l.ln.closed.Load(), &ConnInfo{Client: client}, &l.ln.live)
	if why != udpAdmitted {
		l.st.countRefusal(why)
		return nil
	}
	c := &dnsClient{id: l.srv.nextID(&l.ids), client: client, route: rt, table: l.lastTable, obs: rt.Observer, release: release, start: l.now,
		sa: l.b.Names[i], salen: l.b.nlen[i]}
	oob := l.b.OOB[i][:l.b.clen[i]]
	if local, ifindex, ok := eventloop.ParsePktinfo(oob); ok {
		c.ooblen = eventloop.PutPktinfo(c.oob[:], l.family, local, ifindex)
	}
	if rt.SendProxy == 2 {
		c.proxyHdr = l.proxyHeader(client, oob)
	}
	if c.obs != nil {
		c.obs.ConnOpened(l.idx)
	}
	return c
}

// dnsRefresh moves c to its rule's route in a new table (a reload):
// unlike a session, which keeps its backend, a client's every query is
// routed, so it follows the rule's backends and router as they are now.
// It reports false when the rule is gone.
func (l *udpShard) dnsRefresh(c *dnsClient) bool {
	for _, rt := range l.lastTable.Routes {
		if rt.Name == c.route.Name {
			c.route, c.obs, c.table = rt, rt.Observer, l.lastTable
			return true
		}
	}
	return false
}

// dnsAbandon gives back a new client whose first query found no backend.
func (l *udpShard) dnsAbandon(c *dnsClient, err error) {
	l.ln.live.Add(-1)
	c.release()
	c.ended = true
	l.srv.udpNoBackend(l.idx, c.route, c.client, err)
}

// dnsRegister makes c one of the shard's clients.
func (l *udpShard) dnsRegister(c *dnsClient) {
	d := &l.dns
	if d.clients == nil {
		d.clients = map[netip.AddrPort]*dnsClient{}
	}
	d.clients[c.client] = c
	l.srv.UDP.DNSClients.Add(1)
	l.srv.UDP.Sessions.Add(1)
	l.srv.UDP.SessionsTotal.Add(1)
}

// dnsUpstreamFor is the shard's socket to b, opened if need be.
func (l *udpShard) dnsUpstreamFor(b *backend.Backend, rt *Route) (*dnsUpstream, error) {
	d := &l.dns
	if up := d.ups[b]; up != nil {
		return up, nil
	}
	if !l.srv.fdRoom(1) {
		l.srv.refuse(RefusedUDPSession, rt.Name)
		return nil, errDNSBudget
	}
	fd, err := l.dial(b)
	if err != nil {
		return nil, err
	}
	if d.ups == nil {
		d.ups = map[*backend.Backend]*dnsUpstream{}
	}
	l.srv.UDP.DNSSockets.Add(1)
	up := &dnsUpstream{b: b, obs: dnsObserver(rt.Observer), fd: fd, last: l.now}
	d.ups[b] = up
	for fd >= len(d.byFd) {
		d.byFd = append(d.byFd, make([]*dnsUpstream, len(d.byFd)+16)...)
	}
	d.byFd[fd] = up
	return up, nil
}

// dnsReplies reads what a backend sent on the shard's socket fd into the
// reply batch, each reply to the client whose query it answers.
func (l *udpShard) dnsReplies(fd int) {
	d := &l.dns
	if fd >= len(d.byFd) || d.byFd[fd] == nil {
		return
	}
	up := d.byFd[fd]
	b := &l.b
	for budget := batchSize; budget > 0; {
		hs := l.replySlots(budget)
		k := len(hs)
		n, e := eventloop.Recvmmsg(up.fd, hs)
		switch e {
		case 0:
		case unix.EAGAIN, unix.EINTR:
			return
		case unix.ECONNREFUSED: // ICMP port unreachable for a query: the socket goes on
			up.b.Health().ReportDial(errRefused)
			continue
		default:
			l.srv.log.Debug("udp dns backend socket error; closing it", "backend", up.b.ID, "err", e.Error())
			l.dnsCloseUpstream(up)
			return
		}
		budget -= n
		base := b.n
		for i := 0; i < n; i++ {
			src := base + i
			if b.Hdrs[src].Hdr.Flags&unix.MSG_TRUNC != 0 {
				l.st.oversize++
				continue
			}
			size := int(b.Hdrs[src].Len)
			buf := b.Bufs[src][:size]
			wire, q, ok := parseDNSReply(buf)
			var p dnsPending[*dnsClient]
			if ok {
				p, ok = up.ids.match(wire, q)
			}
			if !ok || p.client.ended {
				l.srv.UDP.DNSUnmatched.Add(1)
				if up.obs != nil {
					up.obs.DNSUnmatched(l.idx, up.b)
				}
				if ok {
					up.b.Release(l.idx)
				}
				continue
			}
			up.b.Release(l.idx)
			up.last = l.now
			c := p.client
			dnsmsg.SetID(buf, p.id)
			c.request = p.sent // the round trip of this query
			c.replied(up.b, c.obs, l.idx, size, l.now)
			l.dnsTouch(c)
			b.queueReply(src, size, &c.sa, c.salen, c.oob[:c.ooblen])
		}
		if n < k {
			return // drained
		}
	}
}

// dnsTouch records activity on c: it moves to the back of the expiry list.
func (l *udpShard) dnsTouch(c *dnsClient) {
	d := &l.dns
	c.last = l.now
	if d.tail == c {
		return
	}
	d.unlink(c)
	c.prev = d.tail
	if d.tail != nil {
		d.tail.next = c
	} else {
		d.head = c
	}
	d.tail = c
}

func (d *dnsShard) unlink(c *dnsClient) {
	if c.prev == nil && d.head != c {
		return // not in the list
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		d.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		d.tail = c.prev
	}
	c.prev, c.next = nil, nil
}

// dnsEnd ends client c.
func (l *udpShard) dnsEnd(c *dnsClient, end End) {
	if c.ended {
		return
	}
	d := &l.dns
	c.ended = true
	d.unlink(c)
	delete(d.clients, c.client)
	if c.release != nil {
		c.release()
	}
	l.srv.UDP.Sessions.Add(-1)
	l.srv.UDP.DNSClients.Add(-1)
	if l.ln.live.Add(-1) == 0 && l.ln.closed.Load() {
		l.ln.wake()
	}
	l.srv.udpSessionEnded(l.idx, c.route, c.id, c.client, c.b, &c.udpCounts, time.Duration(l.now-c.start), end)
}

// dnsCloseUpstream closes a backend socket; the queries waiting on it are
// forgotten.
func (l *udpShard) dnsCloseUpstream(up *dnsUpstream) {
	d := &l.dns
	up.ids.all(func(p dnsPending[*dnsClient]) { up.b.Release(l.idx) })
	d.byFd[up.fd] = nil
	eventloop.Close(up.fd)
	l.srv.UDP.DNSSockets.Add(-1)
	delete(d.ups, up.b)
}

// dnsSweep forgets the queries unanswered for session_timeout, closes
// backend sockets idle as long, and ends clients idle as long.
func (l *udpShard) dnsSweep() {
	d := &l.dns
	t := int64(l.timeout)
	for _, up := range d.ups {
		for {
			p, ok := up.ids.expireOne(l.now - t + 1)
			if !ok {
				break
			}
			up.b.Release(l.idx)
			l.srv.UDP.DNSUnanswered.Add(1)
			if up.obs != nil {
				up.obs.DNSUnanswered(l.idx, up.b)
			}
			_ = p
		}
		if up.ids.n == 0 && l.now-up.last >= t {
			l.dnsCloseUpstream(up)
		}
	}
	for c := d.head; c != nil && l.now-c.last >= t; c = d.head {
		l.dnsEnd(c, EndIdleTimeout)
	}
}

// dnsNext is the earliest time dnsSweep has something to do; 0: never.
func (l *udpShard) dnsNext() int64 {
	d := &l.dns
	t := int64(l.timeout)
	var next int64
	at := func(x int64) {
		if next == 0 || x < next {
			next = x
		}
	}
	if d.head != nil {
		at(d.head.last + t)
	}
	for _, up := range d.ups {
		if o := up.ids.oldest(); o != 0 {
			at(o + t)
		} else {
			at(up.last + t)
		}
	}
	return next
}

// dnsEndAll ends every client and closes every backend socket (the loop
// is exiting).
func (l *udpShard) dnsEndAll() {
	d := &l.dns
	for c := d.head; c != nil; c = d.head {
		l.dnsEnd(c, EndShutdown)
	}
	for _, up := range d.ups {
		l.dnsCloseUpstream(up)
	}
}

// dnsCloseBackend closes the shard's socket to b (drained) and ends the
// clients whose last query went to b; it returns how many.
func (l *udpShard) dnsCloseBackend(b *backend.Backend) int {
	d := &l.dns
	if up := d.ups[b]; up != nil {
		l.dnsCloseUpstream(up)
	}
	n := 0
	for _, c := range d.clients {
		if c.b == b {
			l.dnsEnd(c, EndDrained)
			n++
		}
	}
	return n
}
