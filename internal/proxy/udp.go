//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// UDP forwarding.
//
// A session is one client address:port. Its first datagram picks a backend
// with the route's router and opens a connected UDP socket to it; later
// datagrams from that client go out on that socket, and whatever the backend
// sends back on it is written to the client through the listener's own
// socket, so replies come from the address the client sent to (IP_PKTINFO
// keeps that true on a wildcard bind).
//
// Each listener runs one event loop (a shard) per CPU, each with its own
// socket on the address (SO_REUSEPORT; the kernel hashes a client's
// address:port to one of them, so a client always reaches the shard that
// owns its session). A shard is one goroutine that does everything,
// event-loop style, so no lock is taken and no goroutine exists per
// session: the shard's socket and its session sockets sit in one epoll set,
// and the goroutine parks on that epoll descriptor through the Go runtime's
// poller (no thread is blocked while idle). Datagrams are read and written
// in batches with recvmmsg/sendmmsg into buffers allocated once per shard;
// in steady state forwarding a datagram allocates nothing. Session idleness
// is a list ordered by last activity (touching a session moves it to the
// back), swept from the front when the epoll descriptor's read deadline
// fires at the oldest session's expiry. A session costs its socket and about
// 430 bytes of Go memory (BenchmarkSessionCost).
//
// Because only its shard's goroutine opens, uses and closes a session's
// socket, a descriptor number can never be reused under a session that
// still believes it owns it: a datagram is never delivered to the wrong
// client.

// UDPListener serves UDP routes on one address. It runs one event loop
// (a shard) per CPU (GOMAXPROCS), each on its own socket bound to the
// address with SO_REUSEPORT: the kernel hashes a client's address and port
// to one socket, so a client's datagrams always reach the same shard, which
// owns its session.
type UDPListener struct {
	srv    *Server
	shards []*udpShard
	routes atomic.Pointer[[]*Route]

	closed  atomic.Bool  // Close: no new sessions; exit when the last ends
	forced  atomic.Bool  // end every session now
	live    atomic.Int64 // sessions open now (or being opened), all shards
	acks    sync.WaitGroup
	running atomic.Int32  // shards whose loop has not exited
	done    chan struct{} // closed when every shard has exited
}

// udpShard is one event loop of a listener, with its socket and sessions.
type udpShard struct {
	ln     *UDPListener
	srv    *Server
	conn   *net.UDPConn
	idx    int            // the shard's number in the listener
	fd     int            // conn's descriptor, used by the loop only
	family int            // AF_INET or AF_INET6 (dual-stack for a wildcard bind)
	local  netip.AddrPort // conn's address, for router.Request

	epollLoop // its socket and session sockets; parked on between turns

	ctlMu      sync.Mutex
	ctl        []closeRequest // CloseBackendConns requests
	lookedUp   atomic.Bool    // a host name lookup the shard waits for finished
	lookupDone func(resolve.Result)

	maxDatagram int // receive buffer per message; maxDatagram except in tests
	batch       int // messages per batch; batchSize except in benchmarks

	// Owned by the loop goroutine.
	sessions   map[netip.AddrPort]*udpSession
	byFd       []*udpSession
	head, tail *udpSession  // by last activity, oldest first
	open       int          // sessions with a backend socket
	openN      atomic.Int64 // open, readable from other goroutines
	now        int64        // unix nanoseconds, once per loop turn
	timeout    time.Duration
	lastRoutes *[]*Route
	req        router.Request
	held       udpHeld[*udpSession] // new clients whose backend's host name is being looked up
	rot        uint32               // rotation over a resolved backend's addresses
	b          batch
	acked      bool
	st         localStats
	done       chan struct{} // closed when the loop has exited
}

var _ Listener = (*UDPListener)(nil)

// udpSession is one client's session. Its fields are the loop's alone.
type udpSession struct {
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
	release                  func()   // the access control slot, given back when the socket closes
	proxyHdr                 []byte   // PROXY v2 header sent before each datagram (proxy_protocol = "v2")
	start                    int64
	last                     int64
	udpCounts                // datagrams, replies (udppath.go)
	prev, next               *udpSession
	inList, counted, removed bool
}

// batch is the listener's reusable message arena: n buffers of maxDatagram
// bytes with their headers, addresses and control buffers.
type batch struct {
	hs    []unix.Mmsghdr
	iov   []unix.Iovec
	bufs  [][]byte
	names []unix.RawSockaddrInet6
	oob   [][oobSize]byte
	nlen  []uint32      // client phase: each message's address length…
	clen  []int         // …and control length, as received
	sess  []*udpSession // reply phase: the session each message is for
	n     int           // reply phase: messages queued
}

// localStats are counted by the loop and added to the Server's once per turn.
type localStats struct {
	in, out, inB, outB                                               int64
	maxSess, oversize, noRoute, noBackend, shutdown, sendErr, denied int64
	maxResp                                                          int64
}

const (
	batchSize       = 32  // messages per recvmmsg/sendmmsg
	perSessionBurst = 8   // replies read from one backend socket per turn
	maxEvents       = 256 // epoll events per turn
)

// listenUDPEpoll binds addr and starts the listener's shards.
func (s *Server) listenUDPEpoll(addr string, routes []*Route, opt udpOptions) (l *UDPListener, err error) {
	if opt.maxDatagram == 0 {
		opt.maxDatagram = maxDatagram
	}
	if opt.batch == 0 {
		opt.batch = batchSize
	}
	conns, err := bindUDP(addr, s.shardCount())
	if err != nil {
		return nil, err
	}
	l = &UDPListener{srv: s, done: make(chan struct{})}
	l.routes.Store(&routes)
	for i, c := range conns {
		sh := &udpShard{ln: l, srv: s, conn: c, idx: i, fd: -1, done: make(chan struct{}),
			local:       c.LocalAddr().(*net.UDPAddr).AddrPort(),
			maxDatagram: opt.maxDatagram, batch: opt.batch,
			sessions:  map[netip.AddrPort]*udpSession{},
			timeout:   defaultTimeout,
			epollLoop: epollLoop{epfd: -1, evfd: -1}, // closeFds is safe before init
		}
		sh.lookupDone = func(resolve.Result) { sh.lookedUp.Store(true); sh.wake() }
		l.shards = append(l.shards, sh)
	}
	defer func() {
		if err != nil {
			for _, sh := range l.shards {
				sh.closeFds()
			}
		}
	}()
	for _, sh := range l.shards {
		if err := sh.init(); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return nil, errShutdown
	}
	s.startFDWatch()
	s.listeners[l] = struct{}{}
	s.udp[l] = struct{}{}
	s.wg.Add(len(l.shards))
	s.mu.Unlock()
	l.acks.Add(len(l.shards))
	l.running.Store(int32(len(l.shards)))
	for _, sh := range l.shards {
		go sh.run()
	}
	return l, nil
}

// shardCount is how many event loops a UDP listener runs: one per worker,
// at most 16.
func (s *Server) shardCount() int { return min(s.Workers(), 16) }

// bindUDP binds n sockets to addr. With n > 1 they share it through
// SO_REUSEPORT; a plain bind first checks that the address is free (and
// picks the port when addr's is 0), so that an address in use is an error
// as it is for one socket, never a silent share with another process.
func bindUDP(addr string, n int) ([]*net.UDPConn, error) {
	if n == 1 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		return []*net.UDPConn{pc.(*net.UDPConn)}, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return os.NewSyscallError("setsockopt SO_REUSEPORT", serr)
	}}
	for attempt := 0; ; attempt++ {
		probe, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, err
		}
		bound := net.JoinHostPort(host, fmt.Sprint(probe.LocalAddr().(*net.UDPAddr).Port))
		probe.Close()
		conns := make([]*net.UDPConn, 0, n)
		for len(conns) < n {
			pc, err := lc.ListenPacket(context.Background(), "udp", bound)
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				// Port 0: another socket took the port picked between the
				// probe and the bind; pick another.
				if port == "0" && attempt < 5 && errors.Is(err, unix.EADDRINUSE) {
					break
				}
				return nil, err
			}
			conns = append(conns, pc.(*net.UDPConn))
		}
		if len(conns) == n {
			return conns, nil
		}
	}
}

// init prepares the shard's socket options, epoll set and buffers.
func (l *udpShard) init() error {
	rc, err := l.conn.SyscallConn()
	if err != nil {
		return err
	}
	if err := rc.Control(func(fd uintptr) { l.fd = int(fd) }); err != nil {
		return err
	}
	sa, err := unix.Getsockname(l.fd)
	if err != nil {
		return os.NewSyscallError("getsockname", err)
	}
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		l.family = unix.AF_INET6
		err = unix.SetsockoptInt(l.fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
	} else {
		l.family = unix.AF_INET
		err = unix.SetsockoptInt(l.fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	}
	if err != nil {
		return os.NewSyscallError("setsockopt pktinfo", err)
	}
	// Bigger socket buffers absorb bursts of many clients; best effort.
	_ = unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
	_ = unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)

	if err := l.openEpoll("udp-epoll", maxEvents); err != nil {
		return err
	}
	if err := l.control(unix.EPOLL_CTL_ADD, l.fd, unix.EPOLLIN); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	l.b.init(l.maxDatagram, l.batch)
	return nil
}

func (b *batch) init(size, n int) {
	b.hs = make([]unix.Mmsghdr, n)
	b.iov = make([]unix.Iovec, n)
	b.bufs = make([][]byte, n)
	b.names = make([]unix.RawSockaddrInet6, n)
	b.oob = make([][oobSize]byte, n)
	b.sess = make([]*udpSession, n)
	b.nlen = make([]uint32, n)
	b.clen = make([]int, n)
	arena := make([]byte, n*size)
	for i := range b.hs {
		b.bufs[i] = arena[i*size : (i+1)*size : (i+1)*size]
		b.iov[i].Base = &b.bufs[i][0]
		b.hs[i].Hdr.Iov = &b.iov[i]
		b.hs[i].Hdr.SetIovlen(1)
	}
}

// Addr is the bound address.
func (l *UDPListener) Addr() net.Addr { return l.shards[0].conn.LocalAddr() }

// SetRoutes publishes a new route table: new sessions use its first route,
// and its session_timeout applies to every session of the listener.
func (l *UDPListener) SetRoutes(routes []*Route) {
	l.routes.Store(&routes)
	l.wake()
}

// Routes returns the current route table.
func (l *UDPListener) Routes() []*Route { return *l.routes.Load() }

// Sessions is the number of sessions open on this listener now.
func (l *UDPListener) Sessions() int64 { return l.live.Load() }

// Close stops new sessions. Sessions already open run on, and get their
// replies, until they end by session_timeout, max_responses or a backend
// error; the sockets are released when the last has ended. A Server's
// Shutdown cuts them when its context ends.
func (l *UDPListener) Close() {
	if l.closed.Swap(true) {
		return
	}
	l.srv.mu.Lock()
	delete(l.srv.listeners, l)
	l.srv.mu.Unlock()
	l.wake()
	l.acks.Wait() // a listener without sessions has released its port by now
}

// forceClose ends every session now and returns how many there were. It
// does not wait and takes no lock: Shutdown calls it holding srv.mu.
func (l *UDPListener) forceClose() int {
	l.closed.Store(true)
	l.forced.Store(true)
	l.wake()
	return int(l.live.Load())
}

func (l *UDPListener) wake() {
	for _, sh := range l.shards {
		sh.wake()
	}
}

func (l *udpShard) run() {
	s := l.srv
	defer func() {
		l.endAll()
		l.closeFds()
		l.ack() // after the socket is released
		close(l.done)
		if l.ln.running.Add(-1) == 0 {
			s.mu.Lock()
			delete(s.udp, l.ln)
			delete(s.listeners, l.ln)
			s.mu.Unlock()
			close(l.ln.done)
		}
		s.wg.Done()
	}()
	for {
		err := l.wait()
		l.now = time.Now().UnixNano()
		if err != nil {
			s.log.Error("udp listener stopped", "listener", l.conn.LocalAddr().String(), "err", err)
			return
		}
		l.refreshRoutes()
		for i := 0; i < l.nev; i++ {
			ev := &l.events[i]
			switch fd := int(ev.Fd); fd {
			case l.fd:
				l.readClients()
			case l.evfd:
				l.woken()
				if l.lookedUp.Swap(false) {
					l.replayWaiting()
				}
				l.applyCloses()
			default:
				l.readBackend(fd)
			}
		}
		l.flush()
		l.sweep()
		l.publishStats()
		if l.ln.forced.Load() {
			return
		}
		if l.ln.closed.Load() {
			// The shards leave together, once every session of the
			// listener has ended: a socket leaving the SO_REUSEPORT
			// group would send other shards' clients elsewhere.
			if l.ln.live.Load() == 0 {
				return
			}
			l.ack() // draining: Close need not wait for the sessions
		}
		l.arm()
	}
}

// openSessions is the number of sessions the shard has open. Only for tests
// and diagnostics: it reads loop state without synchronisation beyond the
// atomic it is kept in.
func (l *udpShard) openSessions() int64 { return l.openN.Load() }

// ack tells Close that the loop has seen it.
func (l *udpShard) ack() {
	if !l.acked {
		l.acked = true
		l.ln.acks.Done()
	}
}

// refreshRoutes picks up a new route table: its session_timeout.
func (l *udpShard) refreshRoutes() {
	p := l.ln.routes.Load()
	if p == l.lastRoutes {
		return
	}
	l.lastRoutes = p
	if rs := *p; len(rs) > 0 && rs[0].SessionTimeout > 0 {
		if rs[0].SessionTimeout < l.timeout && l.armed > 0 {
			l.armed = 0 // expiries came earlier: re-arm
		}
		l.timeout = rs[0].SessionTimeout
	}
}

// readClients forwards one batch of client datagrams.
func (l *udpShard) readClients() {
	b := &l.b
	l.flush() // replies queued earlier in this turn share the arena
	for i := range b.hs {
		h := &b.hs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Control = &b.oob[i][0]
		h.SetControllen(oobSize)
		h.Flags = 0
		b.iov[i].SetLen(l.maxDatagram)
	}
	n, e := recvmmsg(l.fd, b.hs)
	if e != 0 {
		if e != unix.EAGAIN && e != unix.EINTR {
			if ok, suppressed := l.srv.udpRecvLog.allow(time.Second); ok {
				l.srv.log.Warn("udp receive failed", "listener", l.conn.LocalAddr().String(), "err", e.Error(), "suppressed", suppressed)
			}
		}
		return
	}
	for i := 0; i < n; i++ {
		b.nlen[i], b.clen[i] = b.hs[i].Hdr.Namelen, int(b.hs[i].Hdr.Controllen)
	}
	// Consecutive datagrams of one client (a client that sends several at
	// once) go to its backend in one sendmmsg.
	var run *udpSession
	start := 0
	for i := 0; i < n; i++ {
		s := l.sessionFor(i)
		if s != run {
			l.forwardRun(run, start, i)
			run, start = s, i
		}
	}
	l.forwardRun(run, start, n)
}

// sessionFor returns the open session of message i's client, opening it if
// need be; nil when the datagram is dropped.
func (l *udpShard) sessionFor(i int) *udpSession {
	b := &l.b
	if b.hs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
		l.st.oversize++
		return nil
	}
	client := sockaddrAddrPort(&b.names[i])
	if !client.IsValid() { // not an IPv4 or IPv6 source: nothing to answer
		l.st.sendErr++
		return nil
	}
	s := l.sessions[client]
	if s == nil {
		if w := l.held.waiting(client); w != nil { // its session waits for a lookup: keep the order
			l.hold(w.s, b.bufs[i][:b.hs[i].Len])
			return nil
		}
	}
	if s == nil || s.fd < 0 {
		s = l.newSession(client, s, i)
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
				l.forward(cur, b.bufs[i][:b.hs[i].Len], true)
			}
		}
		return
	}
	for i := from; i < to; i++ {
		h := &b.hs[i].Hdr
		h.Name, h.Namelen, h.Control = nil, 0, nil
		h.SetControllen(0)
		b.iov[i].SetLen(int(b.hs[i].Len))
	}
	n, e := sendmmsg(s.fd, b.hs[from:to])
	if e != 0 {
		n = 0
	}
	for i := from; i < from+n; i++ {
		l.forwarded(s, int(b.iov[i].Len))
	}
	// What was not sent goes one by one, which handles each error (and a
	// refusal, after which the rest opens a new session).
	for i := from + n; i < to; i++ {
		p := b.bufs[i][:b.iov[i].Len]
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
		e = sendWithHeader(s.fd, s.proxyHdr, p)
	} else {
		e = send(s.fd, p)
	}
	switch e {
	case 0:
		l.forwarded(s, len(p))
	case unix.EMSGSIZE:
		l.st.oversize++
		if s.obs != nil {
			s.obs.Datagram(s.b, len(p), e)
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
			s.obs.Datagram(s.b, len(p), e)
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
	rt, release, why := l.srv.admitUDP(*l.ln.routes.Load(), l.ln.closed.Load(), client, &l.ln.live)
	switch why {
	case udpNoRoute:
		l.st.noRoute++
	case udpShutdown:
		l.st.shutdown++
	case udpDenied:
		l.st.denied++
	case udpMaxSessions:
		l.st.maxSess++
	}
	if why != udpAdmitted {
		return nil
	}
	s := &udpSession{client: client, fd: -1, route: rt, obs: rt.Observer, start: l.now, release: release}
	if prev != nil {
		s.sa, s.salen, s.oob, s.ooblen = prev.sa, prev.salen, prev.oob, prev.ooblen
		s.tried = prev.tried
		if prev.b != nil && !slices.Contains(s.tried, prev.b) { // at most one entry per backend
			s.tried = append(s.tried, prev.b)
		}
	} else {
		s.sa, s.salen = l.b.names[i], l.b.nlen[i]
		if local, ifindex, ok := parsePktinfo(l.b.oob[i][:l.b.clen[i]]); ok {
			s.ooblen = putPktinfo(s.oob[:], l.family, local, ifindex)
		}
	}
	if rt.SendProxy == 2 { // the PROXY v2 header sent before each datagram
		if prev != nil && prev.proxyHdr != nil {
			s.proxyHdr = prev.proxyHdr
		} else if i >= 0 {
			s.proxyHdr = l.proxyHeader(client, l.b.oob[i][:l.b.clen[i]])
		}
	}
	b, fd, err := l.connectBackend(rt, client, s.tried)
	if err == errResolving {
		l.ln.live.Add(-1)
		release()
		var p []byte
		if i >= 0 {
			p = l.b.bufs[i][:l.b.hs[i].Len]
		}
		l.hold(s, p)
		return nil
	}
	if s.obs != nil {
		s.obs.ConnOpened()
	}
	if err != nil {
		l.ln.live.Add(-1)
		release()
		l.st.noBackend++
		l.srv.udpNoBackend(rt, client, err)
		return nil
	}
	s.b, s.fd = b, fd
	b.Acquire()
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

// connectBackend picks a backend for client and opens a socket connected
// to it, trying the next pick when that fails. Backends in avoid (they
// refused this client) are skipped while any other is usable.
func (l *udpShard) connectBackend(rt *Route, client netip.AddrPort, avoid []*backend.Backend) (*backend.Backend, int, error) {
	fd := -1
	b, err := pickUDP(rt, &l.req, client, l.local, avoid, func(b *backend.Backend) (err error) {
		fd, err = l.dial(b)
		return err
	})
	return b, fd, err
}

// dial opens a non-blocking UDP socket connected to b and adds it to the
// epoll set. A host name's addresses come from the resolver (resolve.go),
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
	family := addrFamily(ra)
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	var sa unix.RawSockaddrInet6
	n := putSockaddr(&sa, family, ra)
	sa.Scope_id = resolve.ScopeID(ra.Addr())
	// A UDP connect only sets the peer: like the rest of a session's
	// socket calls it never blocks, so it is a raw system call.
	if _, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n)); e != 0 {
		rawClose(fd)
		return -1, os.NewSyscallError("connect", e)
	}
	if err := l.control(unix.EPOLL_CTL_ADD, fd, unix.EPOLLIN); err != nil {
		rawClose(fd)
		return -1, os.NewSyscallError("epoll_ctl", err)
	}
	return fd, nil
}

// readBackend reads what the backend sent on one session socket into the
// reply batch.
func (l *udpShard) readBackend(fd int) {
	if fd >= len(l.byFd) || l.byFd[fd] == nil {
		return
	}
	s := l.byFd[fd]
	b := &l.b
	for budget := perSessionBurst; budget > 0 && s.fd >= 0; {
		if b.n == len(b.hs) {
			l.flush()
		}
		k := min(len(b.hs)-b.n, budget)
		hs := b.hs[b.n : b.n+k]
		for i := range hs {
			h := &hs[i].Hdr
			h.Name, h.Namelen, h.Control, h.Flags = nil, 0, nil, 0
			h.SetControllen(0)
			b.iov[b.n+i].SetLen(l.maxDatagram)
		}
		n, e := recvmmsg(s.fd, hs)
		switch e {
		case 0:
		case unix.EAGAIN, unix.EINTR:
			return
		case unix.ECONNREFUSED:
			l.refused(s)
			return
		default:
			l.srv.log.Debug("udp backend socket error; ending session", "rule", s.route.Name,
				"backend", s.b.ID, "client", s.client.String(), "err", e.Error())
			l.end(s, EndBackendError)
			return
		}
		budget -= n
		base := b.n
		for i := 0; i < n; i++ {
			src := base + i
			if b.hs[src].Hdr.Flags&unix.MSG_TRUNC != 0 {
				l.st.oversize++
				continue
			}
			if s.repliesDone() {
				l.st.maxResp++
				continue
			}
			size := b.hs[src].Len
			s.replied(s.b, s.obs, l.idx, int(size), l.now)
			// Queue it in slot b.n, moving its buffer there if an earlier
			// message of this read was dropped.
			d := b.n
			if d != src {
				b.iov[d], b.iov[src] = b.iov[src], b.iov[d]
				b.bufs[d], b.bufs[src] = b.bufs[src], b.bufs[d]
			}
			h := &b.hs[d].Hdr
			h.Name = (*byte)(unsafe.Pointer(&s.sa))
			h.Namelen = s.salen
			if s.ooblen > 0 {
				h.Control = &s.oob[0]
			}
			h.SetControllen(s.ooblen)
			b.iov[d].SetLen(int(size))
			b.sess[d] = s
			b.n++
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

// flush sends the queued replies to their clients through the listener
// socket, in as few sendmmsg calls as the kernel allows.
func (l *udpShard) flush() {
	b := &l.b
	for off := 0; off < b.n; {
		n, e := sendmmsg(l.fd, b.hs[off:b.n])
		if e != 0 {
			if e == unix.EINTR {
				continue
			}
			// hs[off] failed (EAGAIN: the socket buffer is full; or the
			// client is unreachable): drop it and go on with the rest.
			if e == unix.EMSGSIZE {
				l.st.oversize++
			} else {
				l.st.sendErr++
			}
			off++
			continue
		}
		for i := off; i < off+n; i++ {
			l.st.out++
			l.st.outB += int64(b.iov[i].Len)
		}
		off += n
	}
	for i := 0; i < b.n; i++ {
		b.sess[i] = nil
	}
	b.n = 0
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
	rawClose(s.fd) // also leaves the epoll set
	s.fd = -1
	s.b.Release()
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
	l.srv.udpSessionEnded(s.route, s.client, s.b, &s.udpCounts, time.Duration(l.now-s.start), end)
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
	l.srv.log.Debug("udp backend refused (ICMP port unreachable); ending session", "rule", s.route.Name,
		"backend", s.b.ID, "client", s.client.String())
	s.b.Health().ReportDial(errRefused)
	l.closeSocket(s, EndBackendRefused)
	if l.ln.closed.Load() {
		l.remove(s)
	}
}

// sweep ends the sessions idle for session_timeout.
func (l *udpShard) sweep() {
	t := int64(l.timeout)
	for s := l.head; s != nil && l.now-s.last >= t; s = l.head {
		l.end(s, EndIdleTimeout)
	}
}

// arm sets the epoll descriptor's read deadline to the oldest session's
// expiry, unless an earlier one is set already (then the loop wakes early,
// sweeps nothing and re-arms).
func (l *udpShard) arm() {
	if l.head == nil {
		if l.armed != 0 {
			l.setDeadline(0)
		}
		return
	}
	next := l.head.last + int64(l.timeout)
	if l.armed > 0 && l.armed <= next {
		return
	}
	l.setDeadline(next)
}

// endAll ends every session (the loop is exiting).
func (l *udpShard) endAll() {
	l.now = time.Now().UnixNano()
	l.flush()
	for s := l.head; s != nil; s = l.head {
		l.end(s, EndShutdown)
	}
	for _, s := range l.sessions {
		l.end(s, EndShutdown)
	}
	l.publishStats()
}

// closeFds releases the listener's descriptors.
func (l *udpShard) closeFds() {
	l.closeEpoll()
	l.conn.Close()
}

// publishStats adds the turn's counts to the Server's.
func (l *udpShard) publishStats() {
	st, u := &l.st, &l.srv.UDP
	add := func(c *atomic.Int64, v *int64) {
		if *v != 0 {
			c.Add(*v)
			*v = 0
		}
	}
	add(&u.DatagramsIn, &st.in)
	add(&u.DatagramsOut, &st.out)
	add(&u.BytesIn, &st.inB)
	add(&u.BytesOut, &st.outB)
	add(&u.DroppedMaxSessions, &st.maxSess)
	add(&u.DroppedOversize, &st.oversize)
	add(&u.DroppedNoRoute, &st.noRoute)
	add(&u.DroppedDenied, &st.denied)
	add(&u.DroppedNoBackend, &st.noBackend)
	add(&u.DroppedShutdown, &st.shutdown)
	add(&u.DroppedSendError, &st.sendErr)
	add(&u.DroppedMaxResponse, &st.maxResp)
}

// closeRequest asks the loop to end the sessions on a backend.
type closeRequest struct {
	b     *backend.Backend
	reply chan int
}

// closeUDPSessions ends every UDP session on b (a backend a reload removed,
// once its drain_timeout is over) and returns how many there were.
func (s *Server) closeUDPSessions(b *backend.Backend) int {
	s.mu.Lock()
	ls := make([]*UDPListener, 0, len(s.udp))
	for l := range s.udp {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	n := 0
	for _, l := range ls {
		n += l.closeBackend(b)
	}
	return n
}

// closeBackend has the shards end the sessions on b, and waits for them.
func (l *UDPListener) closeBackend(b *backend.Backend) int {
	n := 0
	for _, sh := range l.shards {
		n += sh.closeBackend(b)
	}
	return n
}

func (l *udpShard) closeBackend(b *backend.Backend) int {
	req := closeRequest{b: b, reply: make(chan int, 1)}
	l.ctlMu.Lock()
	l.ctl = append(l.ctl, req)
	l.ctlMu.Unlock()
	l.wake()
	select {
	case n := <-req.reply:
		return n
	case <-l.done:
		return 0
	}
}

func (l *udpShard) applyCloses() {
	l.ctlMu.Lock()
	reqs := l.ctl
	l.ctl = nil
	l.ctlMu.Unlock()
	for _, req := range reqs {
		n := 0
		for _, s := range l.sessions {
			if s.b == req.b && s.fd >= 0 {
				l.end(s, EndDrained)
				n++
			}
		}
		req.reply <- n
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
	if dst, _, ok := parsePktinfo(oob); ok {
		local = netip.AddrPortFrom(dst, local.Port())
	}
	return udpProxyHeader(client, local)
}
