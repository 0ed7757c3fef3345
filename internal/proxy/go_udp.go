package proxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// The goroutine engine's UDP path.
//
// A listener is one socket read by one goroutine. A session is one client
// address:port: its first datagram picks a backend with the route's router
// and opens a connected UDP socket to it, read by the session's own
// goroutine, which writes the backend's replies to the client through the
// listener's socket. On a wildcard bind the listener asks for each
// datagram's destination address (IP_PKTINFO and the like, through
// golang.org/x/net/ipv4 and ipv6) and replies from it, where the system
// supports that. A new client whose backend's host name has no cached
// answer waits for the lookup off the listener's goroutine, with the
// datagrams it sends meanwhile held (bounded as in the epoll engine).
//
// The listener's lock (mu) orders everything a client's datagrams do:
// finding or opening the session, forwarding, and ending sessions; a
// session's own lock guards its counts, which its goroutine shares with
// the listener's.

var _ Listener = (*goUDPListener)(nil)

type goUDPListener struct {
	srv   *Server
	conn  *net.UDPConn
	local netip.AddrPort
	p4    *ipv4.PacketConn // set on a wildcard IPv4 bind with destination addresses
	p6    *ipv6.PacketConn // set on a wildcard IPv6 bind with destination addresses

	table  atomic.Pointer[Table]
	live   atomic.Int64 // sessions open now (or being opened)
	closed atomic.Bool  // Close: no new sessions; the socket goes with the last
	rot    atomic.Uint32
	ids    atomic.Uint32

	mu       sync.Mutex
	sessions map[netip.AddrPort]*goUDPSession // open ones and refusals' tombstones
	held     udpHeld[*goUDPSession]           // new clients waiting for a lookup
	scratch  []byte                           // a PROXY header and a datagram, under mu
	quic     goQUIC                           // ClientHellos being read, connection ids (go_udp_quic.go)
	dns      goDNS                            // a DNS listener's clients and backend sockets (go_udp_dns.go), under mu

	shutOnce sync.Once
	shutC    chan struct{}  // closed by shut
	released atomic.Bool    // the socket is another process's now: not read (handover_linux.go)
	readers  sync.WaitGroup // the sessions' goroutines
	done     chan struct{}  // the listener's goroutine has left
}

// goUDPSession is one client's session.
type goUDPSession struct {
	id     uint64 // (conns.go)
	l      *goUDPListener
	client netip.AddrPort
	dst    netip.Addr // where the client sent to (wildcard binds), the replies' source
	ifidx  int
	route  *Route
	obs    Observer
	quic   *udpQUIC // QUIC: the ClientHello read, connection ids (udp_quic.go); nil: none
	idx    int      // AddBytesIn's worker index
	start  time.Time
	tried  []*backend.Backend // backends that refused this client (tombstone)

	proxyHdr []byte // PROXY v2 header sent before each datagram (proxy_protocol = "v2")

	// Under l.mu.
	b       *backend.Backend
	bc      *net.UDPConn // nil: not open yet, or ended (a refusal's tombstone)
	release func()
	counted bool
	tomb    *time.Timer

	last atomic.Int64 // unix ns of the last datagram either way
	mu   sync.Mutex   // guards udpCounts
	udpCounts
}

// listenUDPGo binds addr and starts the listener's goroutine.
func (s *Server) listenUDPGo(addr string, t Table) (*goUDPListener, error) {
	// 0.0.0.0 is bound as IPv4 only (the net package would make it a
	// dual-stack IPv6 socket), so that its replies' source address can
	// be set with IPv4 control messages.
	network := "udp"
	if host, _, err := net.SplitHostPort(addr); err == nil && host == "0.0.0.0" {
		network = "udp4"
	}
	var conn *net.UDPConn
	if in, err := s.inheritedUDP(addr); err != nil { // handed over by an upgrade (inherit.go)
		return nil, err
	} else if len(in) > 0 {
		conn = in[0]
		for _, c := range in[1:] { // from an epoll-engine process: its shards' SO_REUSEPORT sockets
			c.Close()
		}
	} else {
		pc, err := net.ListenPacket(network, addr)
		if err != nil {
			return nil, err
		}
		conn = pc.(*net.UDPConn)
	}
	l := &goUDPListener{srv: s, conn: conn, local: conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		sessions: map[netip.AddrPort]*goUDPSession{}, done: make(chan struct{}), shutC: make(chan struct{})}
	l.table.Store(&t)
	l.quic.cids.stats = &s.QUIC
	if l.local.Addr().IsUnspecified() {
		l.wantDestinations()
	}
	_ = conn.SetReadBuffer(socketBuffer) // best effort, as the epoll engine
	_ = conn.SetWriteBuffer(socketBuffer)
	if !s.register(l, func() { s.udpGo[l] = struct{}{} }) {
		conn.Close()
		return nil, errShutdown
	}
	go l.serve()
	return l, nil
}

// wantDestinations asks for each datagram's destination address; where the
// system cannot give it, replies come from the address the system picks.
func (l *goUDPListener) wantDestinations() {
	if l.local.Addr().Is4() {
		p := ipv4.NewPacketConn(l.conn)
		if p.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true) == nil {
			l.p4 = p
		}
		return
	}
	p := ipv6.NewPacketConn(l.conn)
	if p.SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true) == nil {
		l.p6 = p
	}
}

// Addr is the bound address.
func (l *goUDPListener) Addr() net.Addr { return l.conn.LocalAddr() }

// SetTable publishes a new table: new sessions use its routes, and its
// session_timeout applies to every session of the listener.
func (l *goUDPListener) SetTable(t Table) {
	before := l.sessionTimeout()
	l.table.Store(&t)
	if l.sessionTimeout() >= before {
		return // the sessions' deadlines move out as they next look
	}
	// A shorter timeout: wake every session to look at its deadline now.
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.sessions {
		if s.bc != nil {
			s.bc.SetReadDeadline(time.Now())
		}
	}
}

// Routes returns the current table's routes.
func (l *goUDPListener) Routes() []*Route { return l.table.Load().Routes }

// Sessions is the number of sessions open on this listener now.
func (l *goUDPListener) Sessions() int64 { return l.live.Load() }

func (l *goUDPListener) sessionTimeout() time.Duration {
	if d := l.table.Load().Options.SessionTimeout; d > 0 {
		return d
	}
	return defaultTimeout
}

// Close stops new sessions. Sessions already open run on, and get their
// replies, until they end; the socket is released when the last has ended
// (at once without sessions).
func (l *goUDPListener) Close() {
	if l.closed.Swap(true) {
		return
	}
	l.srv.unregister(l)
	l.mu.Lock()
	idle := l.live.Load() == 0
	l.mu.Unlock()
	if idle {
		l.shut()
		<-l.done
	}
}

// shut releases the socket: the listener's goroutine leaves.
func (l *goUDPListener) shut() { l.shutOnce.Do(func() { close(l.shutC); l.conn.Close() }) }

// forceClose ends every session now and returns how many there were.
func (l *goUDPListener) forceClose() int {
	l.closed.Store(true)
	n := int(l.live.Load())
	l.mu.Lock()
	ss := make([]*goUDPSession, 0, len(l.sessions))
	for _, s := range l.sessions {
		ss = append(ss, s)
	}
	l.mu.Unlock()
	for _, s := range ss {
		l.end(s, EndShutdown)
	}
	l.mu.Lock()
	l.dnsEndAll(EndShutdown)
	l.mu.Unlock()
	l.shut()
	return n
}

// serve reads client datagrams until the socket is released.
func (l *goUDPListener) serve() {
	srv := l.srv
	defer func() {
		l.mu.Lock()
		for _, s := range l.sessions {
			l.endLocked(s, EndShutdown)
		}
		l.dnsEndAll(EndShutdown)
		l.held = udpHeld[*goUDPSession]{}
		l.mu.Unlock()
		l.readers.Wait()
		srv.mu.Lock()
		delete(srv.udpGo, l)
		delete(srv.listeners, l)
		srv.mu.Unlock()
		close(l.done)
		srv.wg.Done()
	}()
	buf := make([]byte, maxDatagram)
	for {
		n, client, dst, ifidx, err := l.read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if l.released.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				// Handed over: the new process reads the socket; the
				// sessions open here still reply through it until they end.
				<-l.shutC
				return
			}
			if ok, suppressed := srv.udpRecvLog.allow(time.Second); ok {
				srv.log.Warn("udp receive failed", "listener", l.local.String(), "err", err.Error(), "suppressed", suppressed)
			}
			continue
		}
		if !client.IsValid() {
			srv.UDP.DroppedSendError.Add(1)
			continue
		}
		if l.table.Load().Options.DNS { // each datagram a query balanced on its own
			l.dnsDatagram(client, dst, ifidx, buf[:n])
			continue
		}
		l.datagram(client, dst, ifidx, buf[:n])
	}
}

// read reads one client datagram, with its destination address on a
// wildcard bind.
func (l *goUDPListener) read(buf []byte) (n int, client netip.AddrPort, dst netip.Addr, ifidx int, err error) {
	var src net.Addr
	switch {
	case l.p4 != nil:
		var cm *ipv4.ControlMessage
		if n, cm, src, err = l.p4.ReadFrom(buf); cm != nil {
			dst, ifidx = addrOf(cm.Dst), cm.IfIndex
		}
	case l.p6 != nil:
		var cm *ipv6.ControlMessage
		if n, cm, src, err = l.p6.ReadFrom(buf); cm != nil {
			dst, ifidx = addrOf(cm.Dst), cm.IfIndex
		}
	default:
		n, client, err = l.conn.ReadFromUDPAddrPort(buf)
		return n, client, dst, 0, err
	}
	if ua, ok := src.(*net.UDPAddr); ok {
		client = ua.AddrPort()
	}
	return n, client, dst, ifidx, err
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a
}

// writeTo sends a reply to the session's client, from the address the
// client sent to.
func (l *goUDPListener) writeTo(s *goUDPSession, p []byte) error {
	var err error
	to := s.replyTo() // a QUIC session's client may move (go_udp_quic.go)
	switch {
	case l.p4 != nil && to.dst.IsValid():
		_, err = l.p4.WriteTo(p, &ipv4.ControlMessage{Src: to.dst.AsSlice(), IfIndex: to.ifidx}, net.UDPAddrFromAddrPort(to.client))
	case l.p6 != nil && to.dst.IsValid() && !to.dst.Unmap().Is4():
		// (x/net/ipv6 cannot set an IPv4 source on a dual-stack socket:
		// IPv4 clients of a [::] bind get the source the system picks.)
		_, err = l.p6.WriteTo(p, &ipv6.ControlMessage{Src: to.dst.AsSlice(), IfIndex: to.ifidx}, net.UDPAddrFromAddrPort(to.client))
	default:
		_, err = l.conn.WriteToUDPAddrPort(p, to.client)
	}
	return err
}

// deliver sends reply p to s's client (writeTo) and counts it, delivered
// or dropped.
func (l *goUDPListener) deliver(s *goUDPSession, p []byte) {
	u := &l.srv.UDP
	if err := l.writeTo(s, p); err != nil {
		if errors.Is(err, syscall.EMSGSIZE) {
			u.DroppedOversize.Add(1)
		} else {
			u.DroppedSendError.Add(1)
		}
		return
	}
	u.DatagramsOut.Add(1)
	u.BytesOut.Add(int64(len(p)))
}

// datagram forwards a client datagram to the client's session, opening it
// if need be.
func (l *goUDPListener) datagram(client netip.AddrPort, dst netip.Addr, ifidx int, p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sessions[client]
	if s == nil {
		if w := l.held.waiting(client); w != nil { // its session waits for a lookup: keep the order
			l.hold(w.s, p)
			return
		}
		if qs, handled := l.quicNew(client, dst, ifidx, p); handled { // a QUIC client (go_udp_quic.go)
			if qs != nil {
				l.forward(qs, p, true)
			}
			return
		}
	}
	if s == nil || s.bc == nil {
		s = l.newSession(client, s, dst, ifidx, p)
		if s == nil {
			return
		}
	}
	l.forward(s, p, true)
}

// localFor is the listener's address a client's datagram came to: dst (its
// pktinfo destination, when known) at the listener's port.
func (l *goUDPListener) localFor(dst netip.Addr) netip.AddrPort {
	if dst.IsValid() {
		return netip.AddrPortFrom(dst, l.local.Port())
	}
	return l.local
}

// newSession opens a session for client, whose datagram p (nil: a replay)
// came to dst. prev is the client's tombstone or waiting session, if any:
// the backends that refused it are not picked again while others are
// usable. Called with l.mu held.
func (l *goUDPListener) newSession(client netip.AddrPort, prev *goUDPSession, dst netip.Addr, ifidx int, p []byte) *goUDPSession {
	srv := l.srv
	var prevQUIC *udpQUIC
	if prev != nil {
		prevQUIC = prev.quic
	}
	ci := quicConnInfo(client, prevQUIC)
	rt, release, why := srv.admitUDP(0, l.table.Load(), l.closed.Load(), &ci, &l.live)
	if why != udpAdmitted {
		srv.UDP.countRefusal(why)
		return nil
	}
	s := &goUDPSession{id: srv.connIDs.Add(1), l: l, client: client, dst: dst, ifidx: ifidx, route: rt, obs: rt.Observer,
		idx: int(l.ids.Add(1)) % srv.Workers(), start: time.Now(), release: release,
		quic: newQUICState(rt, prevQUIC)}
	if prev != nil {
		s.dst, s.ifidx, s.tried = prev.dst, prev.ifidx, prev.tried
		if prev.b != nil && !slices.Contains(s.tried, prev.b) { // at most one entry per backend
			s.tried = append(s.tried, prev.b)
		}
	}
	if rt.SendProxy == 2 { // the PROXY v2 header sent before each datagram
		if prev != nil && prev.proxyHdr != nil {
			s.proxyHdr = prev.proxyHdr
		} else {
			s.proxyHdr = udpProxyHeader(client, l.localFor(s.dst))
		}
	}
	var bc *net.UDPConn
	b, err := pickUDP(s.idx, rt, &router.Request{}, &ci, l.local, s.tried, func(b *backend.Backend) (err error) {
		bc, err = l.dial(b)
		return err
	})
	if err == errResolving {
		l.live.Add(-1)
		release()
		l.hold(s, p)
		return nil
	}
	if s.obs != nil {
		s.obs.ConnOpened(s.idx)
	}
	if err != nil {
		l.live.Add(-1)
		release()
		srv.UDP.DroppedNoBackend.Add(1)
		srv.udpNoBackend(s.idx, rt, client, err)
		return nil
	}
	s.b, s.bc, s.counted = b, bc, true
	b.Acquire(s.idx)
	if prev != nil && prev.tomb != nil {
		prev.tomb.Stop()
	}
	l.sessions[client] = s
	s.last.Store(time.Now().UnixNano())
	srv.UDP.Sessions.Add(1)
	srv.UDP.SessionsTotal.Add(1)
	l.readers.Add(1)
	go s.readBackend(bc)
	return s
}

// dial opens a UDP socket connected to b. A host name's addresses come
// from the resolver, each in turn from the listener's rotation until one
// connects; while the name is being looked up dial returns errResolving
// and the waiting clients' sessions open when the lookup is done.
func (l *goUDPListener) dial(b *backend.Backend) (*net.UDPConn, error) {
	tg := b.Target()
	if tg.Addr.IsValid() {
		return dialUDP(tg.Addr)
	}
	res, ok := l.srv.resolver.Lookup(tg.Host, func(resolve.Result) { l.replayWaiting() })
	if !ok {
		return nil, errResolving
	}
	if res.Err != nil {
		return nil, res.Err
	}
	n := uint32(len(res.Addrs))
	start := l.rot.Add(1) - 1
	var err error
	for k := range n {
		c, e := dialUDP(netip.AddrPortFrom(res.Addrs[(start+k)%n], tg.Port))
		if e == nil {
			return c, nil
		}
		err = e
	}
	return nil, err
}

func dialUDP(ap netip.AddrPort) (*net.UDPConn, error) {
	ap = netip.AddrPortFrom(resolve.NumericZone(ap.Addr()), ap.Port()) // no interface lookup for a zone
	return net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ap))
}

// hold keeps a copy of datagram p (nil: none) of s's client until the
// lookup its session waits for is done. Called with l.mu held.
func (l *goUDPListener) hold(s *goUDPSession, p []byte) {
	if !l.held.hold(s.client, s, p) {
		l.srv.UDP.DroppedNoBackend.Add(1)
	}
}

// replayWaiting opens the sessions that waited for a lookup (one finished;
// those still looked up wait on) and forwards what their clients sent.
func (l *goUDPListener) replayWaiting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.srv.UDP.DroppedNoBackend.Add(int64(l.held.replay(func(client netip.AddrPort, ws *goUDPSession) (func([]byte) bool, bool) {
		s := l.sessions[client]
		if s == nil || s.bc == nil {
			s = l.newSession(client, ws, ws.dst, ws.ifidx, nil)
		}
		if s == nil {
			return nil, false
		}
		return func(p []byte) bool {
			if s.bc == nil {
				return false
			}
			l.forward(s, p, false)
			return true
		}, true
	})))
}

// forward sends p on the session's backend socket. A refusal pending on
// the socket ends the session, and the datagram opens a new one once.
// Called with l.mu held.
func (l *goUDPListener) forward(s *goUDPSession, p []byte, retry bool) {
	srv := l.srv
	if s.quic != nil && s.quic.track {
		l.quic.cids.learn(s.quic, s, p, false)
	}
	out := p
	if s.proxyHdr != nil {
		l.scratch = append(append(l.scratch[:0], s.proxyHdr...), p...)
		out = l.scratch
	}
	// The write and its count are one step under the session's lock, so a
	// reply that comes back at once finds the datagram counted (its
	// max_responses allowance with it).
	s.mu.Lock()
	_, err := s.bc.Write(out)
	if err == nil {
		s.forwarded(s.b, s.obs, s.idx, len(p), time.Now().UnixNano())
	}
	s.mu.Unlock()
	switch {
	case err == nil:
		s.last.Store(time.Now().UnixNano())
		srv.UDP.DatagramsIn.Add(1)
		srv.UDP.BytesIn.Add(int64(len(p)))
	case errors.Is(err, syscall.EMSGSIZE):
		srv.UDP.DroppedOversize.Add(1)
		if s.obs != nil {
			s.obs.Datagram(s.idx, s.b, len(p), err)
		}
	case refusedError(err):
		l.refusedLocked(s)
		if retry && !l.closed.Load() {
			if ns := l.newSession(s.client, s, s.dst, s.ifidx, nil); ns != nil {
				l.forward(ns, p, false)
			}
		}
	default:
		srv.UDP.DroppedSendError.Add(1)
		if s.obs != nil {
			s.obs.Datagram(s.idx, s.b, len(p), err)
		}
		if !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.ENOBUFS) {
			l.endLocked(s, EndBackendError)
		}
	}
}

// refusedError reports whether err is the ICMP port unreachable of an
// earlier datagram (Windows reports it as a reset).
func refusedError(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// readBackend relays the backend's replies to the client until the
// session ends: session_timeout of silence both ways, max_responses, an
// error, a refusal, drain or shutdown.
func (s *goUDPSession) readBackend(bc *net.UDPConn) {
	l := s.l
	srv := l.srv
	defer l.readers.Done()
	bp := getBuf(maxDatagram)
	defer putBuf(bp)
	buf := *bp
	for {
		timeout := int64(l.sessionTimeout())
		bc.SetReadDeadline(time.Unix(0, s.last.Load()+timeout))
		n, err := bc.Read(buf)
		if err != nil {
			switch {
			case errors.Is(err, net.ErrClosed): // ended by someone else
			case errors.Is(err, os.ErrDeadlineExceeded):
				if time.Now().UnixNano() < s.last.Load()+int64(l.sessionTimeout()) {
					continue // the client sent meanwhile
				}
				l.end(s, EndIdleTimeout)
			case refusedError(err):
				l.mu.Lock()
				l.refusedLocked(s)
				l.mu.Unlock()
			default:
				srv.log.Debug("udp backend socket error; ending session", "conn", s.id, "rule", s.route.Name,
					"backend", s.b.ID, "client", s.replyTo().client.String(), "err", err.Error())
				l.end(s, EndBackendError)
			}
			return
		}
		s.mu.Lock()
		if s.repliesDone(s.route.MaxResponses) {
			s.mu.Unlock()
			srv.UDP.DroppedMaxResponse.Add(1)
			continue
		}
		s.replied(s.b, s.obs, s.idx, n, time.Now().UnixNano())
		s.mu.Unlock()
		if s.quic != nil && s.quic.track {
			l.quic.cids.learn(s.quic, s, buf[:n], true)
		}
		s.last.Store(time.Now().UnixNano())
		l.deliver(s, buf[:n])
		if s.route.MaxResponses > 0 && l.endIfAnswered(s) {
			return
		}
	}
}

// endIfAnswered ends s once it delivered every reply it expects. It holds
// l.mu, so that a client datagram forwarded meanwhile (which expects its
// own replies) is counted before the decision, never lost to it.
func (l *goUDPListener) endIfAnswered(s *goUDPSession) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.mu.Lock()
	done := s.repliesDone(s.route.MaxResponses)
	s.mu.Unlock()
	if done {
		l.endLocked(s, EndMaxResponses)
	}
	return done
}

// refusedLocked ends a session whose backend answered ICMP port
// unreachable. It stays as a tombstone until session_timeout, so that the
// client's next datagram opens a session on another backend. Called with
// l.mu held.
func (l *goUDPListener) refusedLocked(s *goUDPSession) {
	if s.bc == nil {
		return
	}
	l.srv.log.Debug("udp backend refused (ICMP port unreachable); ending session", "conn", s.id, "rule", s.route.Name,
		"backend", s.b.ID, "client", s.client.String())
	s.b.Health().ReportDial(errRefused)
	l.closeSocket(s, EndBackendRefused)
	if l.closed.Load() {
		l.remove(s)
		return
	}
	s.tomb = time.AfterFunc(l.sessionTimeout(), func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if s.bc == nil {
			l.remove(s)
		}
	})
}

// end ends a session.
func (l *goUDPListener) end(s *goUDPSession, end End) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.endLocked(s, end)
}

func (l *goUDPListener) endLocked(s *goUDPSession, end End) {
	l.closeSocket(s, end)
	l.remove(s)
}

// closeSocket releases the session's socket, backend and access slot; the
// session itself may live on as a tombstone. Called with l.mu held.
func (l *goUDPListener) closeSocket(s *goUDPSession, end End) {
	if s.bc == nil {
		return
	}
	srv := l.srv
	if s.quic != nil {
		l.quic.cids.forget(s.quic, s)
	}
	s.bc.Close()
	s.bc = nil
	s.b.Release(s.idx)
	if s.release != nil {
		s.release()
		s.release = nil
	}
	if s.counted {
		s.counted = false
		srv.UDP.Sessions.Add(-1)
		if l.live.Add(-1) == 0 && l.closed.Load() {
			l.shut() // the last session of a closed listener: release the socket
		}
	}
	s.mu.Lock()
	c := s.udpCounts
	s.mu.Unlock()
	srv.udpSessionEnded(s.idx, s.route, s.id, s.client, s.b, &c, time.Since(s.start), end)
}

// remove forgets s. Called with l.mu held.
func (l *goUDPListener) remove(s *goUDPSession) {
	if l.sessions[s.client] == s {
		delete(l.sessions, s.client)
	}
}
