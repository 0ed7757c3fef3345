//go:build linux

package proxy

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
)

// UDP sessions: opening one for a new client (route, access, max_sessions,
// the router's pick, a connected socket to the backend, or a wait for the
// backend's host name), forwarding its datagrams, reading its replies into
// the shard's batch, and ending it.

// udpSession is one client's session. Its fields are the loop's alone.
type udpSession struct {
	id     uint64 // (conns.go)
	client netip.AddrPort
	sa     unix.RawSockaddrInet6 // the client's sockaddr as received
	salen  uint32
	oob    [40]byte // pktinfo control message: the reply's source address
	ooblen int

	fd    int // backend socket; -1 once ended (a refusal's tombstone)
	route *Route
	b     *backend.Backend
	tried []*backend.Backend // backends that refused this client (tombstone)

	obs                      Observer // the route's metrics hooks; nil: off
	quic                     *udpQUIC // QUIC: the ClientHello read, connection ids (udp_quic.go); nil: none
	release                  func()   // the access control slot, given back when the socket closes
	proxyHdr                 []byte   // PROXY v2 header sent before each datagram (proxy_protocol = "v2")
	start                    int64
	last                     int64
	udpCounts                // datagrams, replies (udppath.go)
	prev, next               *udpSession
	inList, counted, removed bool
}

// sessionFor returns the open session of message i's client, opening it if
// need be; nil when the datagram is dropped.
func (l *udpShard) sessionFor(i int) *udpSession {
	b := &l.b
	if b.Hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
		l.st.oversize++
		return nil
	}
	client := eventloop.SockaddrAddrPort(&b.Names[i])
	if !client.IsValid() { // not an IPv4 or IPv6 source: nothing to answer
		l.st.sendErr++
		return nil
	}
	s := l.sessions[client]
	if s == nil {
		if w := l.held.waiting(client); w != nil { // its session waits for a lookup: keep the order
			l.hold(w.s, b.Bufs[i][:b.Hdrs[i].Len])
			return nil
		}
		if l.quic.on() || l.quic.peeks.peeking(client) { // a QUIC client: a known connection id, or its ClientHello to read
			if qs, handled := l.quicNew(client, i); handled {
				return qs
			}
		}
	}
	if s == nil || s.fd < 0 {
		s = l.newSession(client, s, i)
	}
	if s != nil && s.quic != nil && s.quic.track {
		l.ln.cids.learn(s.quic, quicOwner{l, s}, b.Bufs[i][:b.Hdrs[i].Len], false)
	}
	return s
}

// hold keeps a copy of datagram p (nil: none) of s's client until the
// lookup its session waits for is done; beyond the shard's bounds the
// datagram is dropped.
func (l *udpShard) hold(s *udpSession, p []byte) {
	if !l.held.hold(s.client, s, p) {
		l.st.noBackend++
	}
}

// replayWaiting opens the sessions that waited for a lookup (one finished;
// those still looked up wait on) and forwards what their clients sent.
func (l *udpShard) replayWaiting() {
	l.st.noBackend += int64(l.held.replay(func(client netip.AddrPort, ws *udpSession) (func([]byte) bool, bool) {
		s := l.sessions[client]
		if s == nil || s.fd < 0 {
			s = l.newSession(client, ws, -1)
		}
		if s == nil {
			return nil, false
		}
		return func(p []byte) bool {
			if s.fd < 0 {
				return false
			}
			l.forward(s, p, false)
			return true
		}, true
	}))
}

// forwardRun sends messages [from, to) of the batch, all for session s, to
// its backend.
func (l *udpShard) forwardRun(s *udpSession, from, to int) {
	b := &l.b
	switch {
	case s == nil || from == to:
		return
	case to-from == 1, s.proxyHdr != nil: // a PROXY header goes before each datagram: one by one
		for i := from; i < to; i++ {
			if cur := l.sessionFor(i); cur != nil {
				l.forward(cur, b.Bufs[i][:b.Hdrs[i].Len], true)
			}
		}
		return
	}
	for i := from; i < to; i++ {
		h := &b.Hdrs[i].Hdr
		h.Name, h.Namelen, h.Control = nil, 0, nil
		h.SetControllen(0)
		b.Iov[i].SetLen(int(b.Hdrs[i].Len))
	}
	n, e := eventloop.Sendmmsg(s.fd, b.Hdrs[from:to])
	if e != 0 {
		n = 0
	}
	for i := from; i < from+n; i++ {
		l.forwarded(s, int(b.Iov[i].Len))
	}
	// What was not sent goes one by one, which handles each error (and a
	// refusal, after which the rest opens a new session).
	for i := from + n; i < to; i++ {
		p := b.Bufs[i][:b.Iov[i].Len]
		if cur := l.sessionFor(i); cur != nil {
			l.forward(cur, p, true)
		}
	}
}

// forward sends p on the session's backend socket. A refusal pending on the
// socket ends the session, and the datagram opens a new one once.
func (l *udpShard) forward(s *udpSession, p []byte, retry bool) {
	var e unix.Errno
	if s.proxyHdr != nil {
		e = eventloop.SendWithHeader(s.fd, s.proxyHdr, p)
	} else {
		e = eventloop.SendDatagram(s.fd, p)
	}
	switch e {
	case 0:
		l.forwarded(s, len(p))
	case unix.EMSGSIZE:
		l.st.oversize++
		if s.obs != nil {
			s.obs.Datagram(l.idx, s.b, len(p), e)
		}
	case unix.ECONNREFUSED:
		l.refused(s)
		if retry && !l.ln.closed.Load() {
			if ns := l.newSession(s.client, s, -1); ns != nil {
				l.forward(ns, p, false)
			}
		}
	default:
		l.st.sendErr++
		if s.obs != nil {
			s.obs.Datagram(l.idx, s.b, len(p), e)
		}
		if e != unix.EAGAIN && e != unix.ENOBUFS {
			l.end(s, EndBackendError)
		}
	}
}

// repliesDone reports whether s has delivered every reply it expects:
// max_responses per datagram the client sent (nginx's proxy_responses), so
// a client that sends two queries before the first answer (glibc's A and
// AAAA) gets both answers.
func (s *udpSession) repliesDone() bool { return s.udpCounts.repliesDone(s.route.MaxResponses) }

// forwarded counts a datagram of n bytes sent to s's backend.
func (l *udpShard) forwarded(s *udpSession, n int) {
	s.udpCounts.forwarded(s.b, s.obs, l.idx, n, l.now)
	l.st.in++
	l.st.inB += int64(n)
	l.touch(s)
}

// newSession opens a session for client, whose datagram is message i of the
// batch (-1: a retry, whose addresses prev already has). prev is the
// client's tombstone, if any: the backends that refused it are not picked
// again while others are usable.
func (l *udpShard) newSession(client netip.AddrPort, prev *udpSession, i int) *udpSession {
	// All shards share the listener's live count (max_sessions); the place
	// reserved is given back if the session does not open.
	var prevQUIC *udpQUIC
	if prev != nil {
		prevQUIC = prev.quic
	}
	ci := quicConnInfo(client, prevQUIC)
	rt, release, why := l.srv.admitUDP(l.idx, l.ln.table.Load(), l.ln.closed.Load(), &ci, &l.ln.live)
	if why != udpAdmitted {
		l.st.countRefusal(why)
		return nil
	}
	s := &udpSession{id: l.srv.nextID(&l.ids), client: client, fd: -1, route: rt, obs: rt.Observer, start: l.now, release: release,
		quic: newQUICState(rt, prevQUIC)}
	if prev != nil {
		s.sa, s.salen, s.oob, s.ooblen = prev.sa, prev.salen, prev.oob, prev.ooblen
		s.tried = prev.tried
		if prev.b != nil && !slices.Contains(s.tried, prev.b) { // at most one entry per backend
			s.tried = append(s.tried, prev.b)
		}
	} else {
		s.sa, s.salen = l.b.Names[i], l.b.nlen[i]
		if local, ifindex, ok := eventloop.ParsePktinfo(l.b.OOB[i][:l.b.clen[i]]); ok {
			s.ooblen = eventloop.PutPktinfo(s.oob[:], l.family, local, ifindex)
		}
	}
	if rt.SendProxy == 2 { // the PROXY v2 header sent before each datagram
		if prev != nil && prev.proxyHdr != nil {
			s.proxyHdr = prev.proxyHdr
		} else if i >= 0 {
			s.proxyHdr = l.proxyHeader(client, l.b.OOB[i][:l.b.clen[i]])
		}
	}
	b, fd, err := l.connectBackend(rt, &ci, s.tried)
	if err == errResolving {
		l.ln.live.Add(-1)
		release()
		var p []byte
		if i >= 0 {
			p = l.b.Bufs[i][:l.b.Hdrs[i].Len]
		}
		l.hold(s, p)
		return nil
	}
	if s.obs != nil {
		s.obs.ConnOpened(l.idx)
	}
	if err != nil {
		l.ln.live.Add(-1)
		release()
		l.st.noBackend++
		l.srv.udpNoBackend(l.idx, rt, client, err)
		return nil
	}
	s.b, s.fd = b, fd
	b.Acquire(l.idx)
	if prev != nil {
		l.remove(prev)
	}
	l.sessions[client] = s
	for fd >= len(l.byFd) {
		l.byFd = append(l.byFd, make([]*udpSession, len(l.byFd)+64)...)
	}
	l.byFd[fd] = s
	l.open++
	l.openN.Store(int64(l.open))
	s.counted = true
	l.srv.UDP.Sessions.Add(1)
	l.srv.UDP.SessionsTotal.Add(1)
	return s
}

// connectBackend picks a backend for the client of ci and opens a socket
// connected to it, trying the next pick when that fails. Backends in avoid
// (they refused this client) are skipped while any other is usable.
func (l *udpShard) connectBackend(rt *Route, ci *ConnInfo, avoid []*backend.Backend) (*backend.Backend, int, error) {
	fd := -1
	b, err := pickUDP(l.idx, rt, &l.req, ci, l.local, avoid, func(b *backend.Backend) (err error) {
		fd, err = l.dial(b)
		return err
	})
	return b, fd, err
}

// dial opens a non-blocking UDP socket connected to b and adds it to the
// epoll set. A host name's addresses come from the resolver (internal/resolve),
// each in turn from the shard's rotation until one connects; while the name
// is being looked up dial returns errResolving, never waiting for it.
func (l *udpShard) dial(b *backend.Backend) (int, error) {
	tg := b.Target()
	if tg.Addr.IsValid() {
		return l.dialAddr(tg.Addr)
	}
	rsv := l.srv.resolver
	res, ok := rsv.Lookup(tg.Host, l.lookupDone) // the shard's own callback: nothing to build on a hit
	if !ok {
		return -1, errResolving
	}
	if res.Err != nil {
		return -1, res.Err
	}
	n := uint32(len(res.Addrs))
	start := l.rot % n
	l.rot++
	var err error
	for k := range n {
		fd, e := l.dialAddr(netip.AddrPortFrom(res.Addrs[(start+k)%n], tg.Port))
		if e == nil {
			return fd, nil
		}
		err = e
	}
	return -1, err
}

// dialAddr opens a non-blocking UDP socket connected to ra and adds it to
// the epoll set.
func (l *udpShard) dialAddr(ra netip.AddrPort) (int, error) {
	family := eventloop.AddrFamily(ra)
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	var sa unix.RawSockaddrInet6
	n := eventloop.PutSockaddr(&sa, family, ra)
	sa.Scope_id = resolve.ScopeID(ra.Addr())
	// A UDP connect only sets the peer: like the rest of a session's
	// socket calls it never blocks, so it is a raw system call.
	if _, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n)); e != 0 {
		eventloop.Close(fd)
		return -1, os.NewSyscallError("connect", e)
	}
	if err := l.Control(unix.EPOLL_CTL_ADD, fd, unix.EPOLLIN); err != nil {
		eventloop.Close(fd)
		return -1, os.NewSyscallError("epoll_ctl", err)
	}
	return fd, nil
}

// readBackend reads what the backend sent on one session socket into the
// reply batch.
func (l *udpShard) readBackend(fd int) {
	if fd >= len(l.byFd) || l.byFd[fd] == nil {
		l.dnsReplies(fd) // a DNS listener's backend socket, if it is one
		return
	}
	s := l.byFd[fd]
	b := &l.b
	for budget := perSessionBurst; budget > 0 && s.fd >= 0; {
		hs := l.replySlots(budget)
		k := len(hs)
		n, e := eventloop.Recvmmsg(s.fd, hs)
		switch e {
		case 0:
		case unix.EAGAIN, unix.EINTR:
			return
		case unix.ECONNREFUSED:
			l.refused(s)
			return
		default:
			l.srv.log.Debug("udp backend socket error; ending session", "conn", s.id, "rule", s.route.Name,
				"backend", s.b.ID, "client", s.client.String(), "err", e.Error())
			l.end(s, EndBackendError)
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
			if s.repliesDone() {
				l.st.maxResp++
				continue
			}
			size := b.Hdrs[src].Len
			if s.quic != nil && s.quic.track {
				l.ln.cids.learn(s.quic, quicOwner{l, s}, b.Bufs[src][:size], true)
			}
			s.replied(s.b, s.obs, l.idx, int(size), l.now)
			b.sess[b.queueReply(src, int(size), &s.sa, s.salen, s.oob[:s.ooblen])] = s
		}
		l.touch(s)
		if s.repliesDone() {
			l.end(s, EndMaxResponses)
			return
		}
		if n < k {
			return // drained
		}
	}
}

// touch records activity on s: it moves to the back of the expiry list.
func (l *udpShard) touch(s *udpSession) {
	s.last = l.now
	if s.inList {
		if l.tail == s {
			return
		}
		l.unlink(s)
	}
	s.prev, s.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = s
	} else {
		l.head = s
	}
	l.tail = s
	s.inList = true
}

func (l *udpShard) unlink(s *udpSession) {
	if !s.inList {
		return
	}
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		l.head = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		l.tail = s.prev
	}
	s.prev, s.next, s.inList = nil, nil, false
}

// closeSocket releases the session's socket and backend; the session
// itself may live on as a tombstone.
func (l *udpShard) closeSocket(s *udpSession, end End) {
	if s.fd < 0 {
		return
	}
	l.byFd[s.fd] = nil
	if s.quic != nil {
		l.ln.cids.forget(s.quic, quicOwner{l, s})
	}
	eventloop.Close(s.fd) // also leaves the epoll set
	s.fd = -1
	s.b.Release(l.idx)
	if s.release != nil {
		s.release()
		s.release = nil
	}
	if s.counted {
		s.counted = false
		l.open--
		l.openN.Store(int64(l.open))
		if l.ln.live.Add(-1) == 0 && l.ln.closed.Load() {
			l.ln.wake() // the last session of a closed listener: every shard may leave
		}
		l.srv.UDP.Sessions.Add(-1)
	}
	l.srv.udpSessionEnded(l.idx, s.route, s.id, s.client, s.b, &s.udpCounts, time.Duration(l.now-s.start), end)
}

// remove forgets s entirely.
func (l *udpShard) remove(s *udpSession) {
	if s.removed {
		return
	}
	s.removed = true
	l.unlink(s)
	if l.sessions[s.client] == s {
		delete(l.sessions, s.client)
	}
}

// end ends a session.
func (l *udpShard) end(s *udpSession, end End) {
	l.closeSocket(s, end)
	l.remove(s)
}

// refused ends a session whose backend answered ICMP port unreachable. It
// stays as a tombstone until session_timeout, so that the client's next
// datagram opens a session on another backend.
func (l *udpShard) refused(s *udpSession) {
	l.srv.log.Debug("udp backend refused (ICMP port unreachable); ending session", "conn", s.id, "rule", s.route.Name,
		"backend", s.b.ID, "client", s.client.String())
	s.b.Health().ReportDial(errRefused)
	l.closeSocket(s, EndBackendRefused)
	if l.ln.closed.Load() {
		l.remove(s)
	}
}

// proxyHeader is the PROXY protocol v2 header (transport DGRAM) telling the
// backend which client sent a session's datagrams and to which address (from
// the received datagram's pktinfo, or the listener's address).
func (l *udpShard) proxyHeader(client netip.AddrPort, oob []byte) []byte {
	var local netip.AddrPort
	if a, ok := l.ln.Addr().(*net.UDPAddr); ok {
		local = a.AddrPort()
	}
	if dst, _, ok := eventloop.ParsePktinfo(oob); ok {
		local = netip.AddrPortFrom(dst, local.Port())
	}
	return udpProxyHeader(client, local)
}

// replySlots readies the reply batch's free slots, at most budget of them
// (flushing the batch first when it is full), for a recvmmsg of replies and
// returns their headers.
func (l *udpShard) replySlots(budget int) []unix.Mmsghdr {
	b := &l.b
	if b.n == len(b.Hdrs) {
		l.flush()
	}
	hs := b.Hdrs[b.n : b.n+min(len(b.Hdrs)-b.n, budget)]
	for i := range hs {
		h := &hs[i].Hdr
		h.Name, h.Namelen, h.Control, h.Flags = nil, 0, nil, 0
		h.SetControllen(0)
		b.Iov[b.n+i].SetLen(l.maxDatagram)
	}
	return hs
}

// queueReply queues message src of a read of replies (readied by
// replySlots), size bytes, to the client at sa with the pktinfo control
// message oob, in slot b.n, moving its buffer there if an earlier message
// of the read was dropped. It returns the slot.
func (b *batch) queueReply(src, size int, sa *unix.RawSockaddrInet6, salen uint32, oob []byte) int {
	d := b.n
	if d != src {
		b.Iov[d], b.Iov[src] = b.Iov[src], b.Iov[d]
		b.Bufs[d], b.Bufs[src] = b.Bufs[src], b.Bufs[d]
	}
	h := &b.Hdrs[d].Hdr
	h.Name = (*byte)(unsafe.Pointer(sa))
	h.Namelen = salen
	if len(oob) > 0 {
		h.Control = &oob[0]
	}
	h.SetControllen(len(oob))
	b.Iov[d].SetLen(size)
	b.n++
	return d
}
