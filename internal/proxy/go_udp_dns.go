package proxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/dnsmsg"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// DNS-aware balancing on the goroutine engine (udp_dns.go has the design):
// the listener keeps its DNS clients apart from its sessions, and one
// socket per backend it sends queries to, each read by its own goroutine.
// A sweeper goroutine, running while there is anything to sweep, forgets
// unanswered queries and ends idle clients. All state is under l.mu.

// goDNS is a listener's DNS-mode state.
type goDNS struct {
	clients  map[netip.AddrPort]*goDNSClient
	ups      map[*backend.Backend]*goDNSUpstream
	req      router.Request
	sweeping bool // the sweeper runs
}

// goDNSClient is one client address:port of a DNS listener.
type goDNSClient struct {
	sess    goUDPSession // its addresses, route and observer (writeTo); no socket
	table   *Table       // the listener's table sess.route came from
	release func()
	b       *backend.Backend // where its last query went
	last    int64
	udpCounts
	ended bool
}

// goDNSUpstream is the listener's socket to one backend.
type goDNSUpstream struct {
	b      *backend.Backend
	obs    DNSObserver
	conn   *net.UDPConn
	last   int64
	ids    dnsIDs[*goDNSClient]
	closed bool
}

// dnsDatagram forwards client query p, which came to dst, to the backend
// the route's router picks for it.
func (l *goUDPListener) dnsDatagram(client netip.AddrPort, dst netip.Addr, ifidx int, p []byte) {
	srv := l.srv
	id, q, ok := parseDNSQuery(p)
	if !ok {
		srv.dnsMalformed(l.table.Load())
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	d := &l.dns
	t := l.table.Load()
	c := d.clients[client]
	if c != nil && c.table != t && !l.dnsRefresh(c, t) {
		l.dnsEnd(c, EndDrained) // its rule is gone: it starts again as a new client
		c = nil
	}
	fresh := c == nil
	if fresh {
		if c = l.dnsNewClient(t, client, dst, ifidx); c == nil {
			return
		}
	}
	now := time.Now().UnixNano()
	var sent *goDNSUpstream
	b, err := pickUDP(c.sess.idx, c.sess.route, &d.req, &ConnInfo{Client: client}, l.local, nil, func(b *backend.Backend) error {
		up, err := l.dnsUpstreamFor(b, c.sess.route)
		if err != nil {
			return err
		}
		wire, ok := up.ids.add(c, id, q, now)
		if !ok {
			return errDNSFull
		}
		dnsmsg.SetID(p, wire)
		out := p
		if c.sess.proxyHdr != nil {
			l.scratch = append(append(l.scratch[:0], c.sess.proxyHdr...), p...)
			out = l.scratch
		}
		if _, err := up.conn.Write(out); err != nil {
			up.ids.take(wire)
			dnsmsg.SetID(p, id)
			if c.sess.obs != nil {
				c.sess.obs.Datagram(c.sess.idx, b, len(p), err)
			}
			switch {
			case refusedError(err):
				b.Health().ReportDial(errRefused)
			case errors.Is(err, syscall.EMSGSIZE):
				srv.UDP.DroppedOversize.Add(1)
			default:
				srv.UDP.DroppedSendError.Add(1)
			}
			return err
		}
		if wire != id {
			srv.UDP.DNSRewritten.Add(1)
		}
		b.Acquire(0) // a query in flight, until answered or forgotten
		up.last = now
		sent = up
		return nil
	})
	if sent == nil {
		if err == nil || err == errResolving {
			err = errResolving // a host name being looked up: the client asks again
		}
		srv.UDP.DroppedNoBackend.Add(1)
		if fresh {
			l.live.Add(-1)
			c.release()
			c.ended = true
			srv.udpNoBackend(c.sess.idx, c.sess.route, client, err)
		}
		return
	}
	if fresh {
		if d.clients == nil {
			d.clients = map[netip.AddrPort]*goDNSClient{}
		}
		d.clients[client] = c
		srv.UDP.DNSClients.Add(1)
		srv.UDP.Sessions.Add(1)
		srv.UDP.SessionsTotal.Add(1)
	}
	c.b = b
	c.request = 0 // each query's own round trip (dnsRead)
	c.forwarded(b, c.sess.obs, c.sess.idx, len(p), now)
	c.last = now
	srv.UDP.DatagramsIn.Add(1)
	srv.UDP.BytesIn.Add(int64(len(p)))
	l.dnsSweeper()
}

// dnsNewClient admits a new client of the DNS listener; nil when it is
// refused (counted). Called with l.mu held.
func (l *goUDPListener) dnsNewClient(t *Table, client netip.AddrPort, dst netip.Addr, ifidx int) *goDNSClient {
	srv := l.srv
	rt, release, why := srv.admitUDP(0, t, l.closed.Load(), &ConnInfo{Client: client}, &l.live)
	if why != udpAdmitted {
		srv.UDP.countRefusal(why)
		return nil
	}
	c := &goDNSClient{table: t, release: release,
		sess: goUDPSession{id: srv.connIDs.Add(1), l: l, client: client, dst: dst, ifidx: ifidx, route: rt, obs: rt.Observer,
			idx: int(l.ids.Add(1)) % srv.Workers(), start: time.Now()}}
	if rt.SendProxy == 2 {
		c.sess.proxyHdr = udpProxyHeader(client, l.localFor(dst))
	}
	if c.sess.obs != nil {
		c.sess.obs.ConnOpened(c.sess.idx)
	}
	return c
}

// dnsRefresh moves c to its rule's route in table t (a reload); false when
// the rule is gone. Called with l.mu held.
func (l *goUDPListener) dnsRefresh(c *goDNSClient, t *Table) bool {
	for _, rt := range t.Routes {
		if rt.Name == c.sess.route.Name {
			c.sess.route, c.sess.obs, c.table = rt, rt.Observer, t
			return true
		}
	}
	return false
}

// dnsUpstreamFor is the listener's socket to b, opened (with its reading
// goroutine) if need be. Called with l.mu held.
func (l *goUDPListener) dnsUpstreamFor(b *backend.Backend, rt *Route) (*goDNSUpstream, error) {
	d := &l.dns
	if up := d.ups[b]; up != nil {
		return up, nil
	}
	if !l.srv.fdRoom(1) {
		l.srv.refuse(RefusedUDPSession, rt.Name)
		return nil, errDNSBudget
	}
	conn, err := l.dial(b)
	if err != nil {
		return nil, err
	}
	if d.ups == nil {
		d.ups = map[*backend.Backend]*goDNSUpstream{}
	}
	up := &goDNSUpstream{b: b, obs: dnsObserver(rt.Observer), conn: conn, last: time.Now().UnixNano()}
	d.ups[b] = up
	l.srv.UDP.DNSSockets.Add(1)
	l.readers.Add(1)
	go l.dnsRead(up)
	return up, nil
}

// dnsRead relays the replies on up to the clients whose queries they
// answer, until the socket is closed.
func (l *goUDPListener) dnsRead(up *goDNSUpstream) {
	srv := l.srv
	defer l.readers.Done()
	bp := getBuf(maxDatagram)
	defer putBuf(bp)
	buf := *bp
	for {
		n, err := up.conn.Read(buf)
		if err != nil {
			switch {
			case errors.Is(err, net.ErrClosed):
			case refusedError(err): // ICMP port unreachable for a query: the socket goes on
				up.b.Health().ReportDial(errRefused)
				continue
			default:
				srv.log.Debug("udp dns backend socket error; closing it", "backend", up.b.ID, "err", err.Error())
				l.mu.Lock()
				l.dnsCloseUpstream(up)
				l.mu.Unlock()
			}
			return
		}
		now := time.Now().UnixNano()
		wire, q, ok := parseDNSReply(buf[:n])
		l.mu.Lock()
		var p dnsPending[*goDNSClient]
		if ok && !up.closed {
			p, ok = up.ids.match(wire, q)
		} else {
			ok = false
		}
		if !ok || p.client.ended {
			if ok {
				up.b.Release(0)
			}
			l.mu.Unlock()
			srv.UDP.DNSUnmatched.Add(1)
			if up.obs != nil {
				up.obs.DNSUnmatched(0, up.b) // the goroutine engine's upstreams have no worker index
			}
			continue
		}
		up.b.Release(0)
		up.last = now
		c := p.client
		c.request = p.sent
		c.replied(up.b, c.sess.obs, c.sess.idx, n, now)
		c.last = now
		l.mu.Unlock()
		dnsmsg.SetID(buf[:n], p.id)
		l.deliver(&c.sess, buf[:n])
	}
}

// dnsEnd ends client c. Called with l.mu held.
func (l *goUDPListener) dnsEnd(c *goDNSClient, end End) {
	if c.ended {
		return
	}
	srv := l.srv
	c.ended = true
	delete(l.dns.clients, c.sess.client)
	if c.release != nil {
		c.release()
	}
	srv.UDP.Sessions.Add(-1)
	srv.UDP.DNSClients.Add(-1)
	if l.live.Add(-1) == 0 && l.closed.Load() {
		l.shut() // the last session of a closed listener: release the socket
	}
	srv.udpSessionEnded(c.sess.idx, c.sess.route, c.sess.id, c.sess.client, c.b, &c.udpCounts, time.Since(c.sess.start), end)
}

// dnsCloseUpstream closes a backend socket (its goroutine leaves); the
// queries waiting on it are forgotten. Called with l.mu held.
func (l *goUDPListener) dnsCloseUpstream(up *goDNSUpstream) {
	if up.closed {
		return
	}
	up.closed = true
	up.ids.all(func(dnsPending[*goDNSClient]) { up.b.Release(0) })
	up.conn.Close()
	l.srv.UDP.DNSSockets.Add(-1)
	delete(l.dns.ups, up.b)
}

// dnsSweeper starts the sweeper unless it runs. Called with l.mu held.
func (l *goUDPListener) dnsSweeper() {
	if l.dns.sweeping {
		return
	}
	l.dns.sweeping = true
	l.readers.Add(1)
	go func() {
		defer l.readers.Done()
		for {
			every := min(max(l.sessionTimeout()/10, 5*time.Millisecond), time.Second)
			time.Sleep(every)
			if !l.dnsSweep() {
				return
			}
		}
	}()
}

// dnsSweep forgets the queries unanswered for session_timeout, closes
// backend sockets idle as long and ends clients idle as long. It reports
// false, and the sweeper leaves, once there is nothing left to sweep.
func (l *goUDPListener) dnsSweep() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := &l.dns
	now := time.Now().UnixNano()
	t := int64(l.sessionTimeout())
	for _, up := range d.ups {
		for {
			if _, ok := up.ids.expireOne(now - t + 1); !ok {
				break
			}
			up.b.Release(0)
			l.srv.UDP.DNSUnanswered.Add(1)
			if up.obs != nil {
				up.obs.DNSUnanswered(0, up.b)
			}
		}
		if up.ids.n == 0 && now-up.last >= t {
			l.dnsCloseUpstream(up)
		}
	}
	for _, c := range d.clients {
		if now-c.last >= t {
			l.dnsEnd(c, EndIdleTimeout)
		}
	}
	if len(d.clients) == 0 && len(d.ups) == 0 {
		d.sweeping = false
		return false
	}
	return true
}

// dnsEndAll ends every client and closes every backend socket. Called with
// l.mu held.
func (l *goUDPListener) dnsEndAll(end End) {
	for _, c := range l.dns.clients {
		l.dnsEnd(c, end)
	}
	for _, up := range l.dns.ups {
		l.dnsCloseUpstream(up)
	}
}

// dnsCloseBackend closes the listener's socket to b (drained) and ends the
// clients whose last query went to b; it returns how many.
func (l *goUDPListener) dnsCloseBackend(b *backend.Backend) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if up := l.dns.ups[b]; up != nil {
		l.dnsCloseUpstream(up)
	}
	n := 0
	for _, c := range l.dns.clients {
		if c.b == b {
			l.dnsEnd(c, EndDrained)
			n++
		}
	}
	return n
}
