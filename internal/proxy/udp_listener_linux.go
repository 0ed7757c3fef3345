//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
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
	table  atomic.Pointer[Table]

	closed  atomic.Bool  // Close: no new sessions; exit when the last ends
	forced  atomic.Bool  // end every session now
	live    atomic.Int64 // sessions open now (or being opened), all shards
	acks    sync.WaitGroup
	running atomic.Int32  // shards whose loop has not exited
	done    chan struct{} // closed when every shard has exited

	cids quicCIDs[quicOwner] // its QUIC sessions' connection ids, all shards (udp_quic.go)
}

var _ Listener = (*UDPListener)(nil)

// udpShard is one event loop of a listener, with its socket and sessions.
type udpShard struct {
	ln     *UDPListener
	srv    *Server
	conn   *net.UDPConn
	idx    int            // the shard's number in the listener
	ids    idRange        // session ids taken from the server (Server.nextID)
	fd     int            // conn's descriptor, used by the loop only
	family int            // AF_INET or AF_INET6 (dual-stack for a wildcard bind)
	local  netip.AddrPort // conn's address, for router.Request

	eventloop.Loop // its socket and session sockets, parked on between turns; work posted to it

	lookupDone func(resolve.Result) // posts replayWaiting: a lookup the shard waits for finished
	replay     func()               // replayWaiting, bound once

	maxDatagram int // receive buffer per message; eventloop.MaxDatagram except in tests
	batch       int // messages per batch; batchSize except in benchmarks

	// Owned by the loop goroutine.
	sessions   map[netip.AddrPort]*udpSession
	byFd       []*udpSession
	head, tail *udpSession  // by last activity, oldest first
	open       int          // sessions with a backend socket
	openN      atomic.Int64 // open, readable from other goroutines
	now        int64        // unix nanoseconds, once per loop turn
	timeout    time.Duration
	lastTable  *Table
	req        router.Request
	held       udpHeld[*udpSession] // new clients whose backend's host name is being looked up
	rot        uint32               // rotation over a resolved backend's addresses
	b          batch
	dns        dnsShard // a DNS listener's clients and backend sockets (udp_dns_linux.go)
	acked      bool
	released   bool // the socket is another process's now: not read (handover_linux.go)
	st         localStats
	quic       shardQUIC // ClientHellos being read; what the table needs (udp_quic_linux.go)
}

// batch is the shard's reusable message arena (eventloop.Batch: buffers of
// maxDatagram bytes with their headers, addresses and control buffers) and
// what the shard keeps of each message.
type batch struct {
	eventloop.Batch
	nlen []uint32      // client phase: each message's address length…
	clen []int         // …and control length, as received
	sess []*udpSession // reply phase: the session each message is for
	n    int           // reply phase: messages queued
}

// localStats are counted by the loop and added to the Server's once per turn.
type localStats struct {
	in, out, inB, outB                                               int64
	maxSess, oversize, noRoute, noBackend, shutdown, sendErr, denied int64
	maxResp                                                          int64
}

// countRefusal counts a new client admitUDP refused, by why (udpBudget is
// counted by refuse).
func (st *localStats) countRefusal(why udpRefusal) {
	switch why {
	case udpNoRoute:
		st.noRoute++
	case udpShutdown:
		st.shutdown++
	case udpDenied:
		st.denied++
	case udpMaxSessions:
		st.maxSess++
	}
}

const (
	batchSize       = 32  // messages per recvmmsg/sendmmsg
	perSessionBurst = 8   // replies read from one backend socket per turn
	maxEvents       = 256 // epoll events per turn
)

// listenUDPEpoll binds addr and starts the listener's shards.
func (s *Server) listenUDPEpoll(addr string, t Table, opt udpOptions) (l *UDPListener, err error) {
	if opt.maxDatagram == 0 {
		opt.maxDatagram = eventloop.MaxDatagram
	}
	if opt.batch == 0 {
		opt.batch = batchSize
	}
	// The sockets an upgrade handed over keep their number of shards: a
	// socket leaving or joining the SO_REUSEPORT group would move clients
	// between sockets (inherit.go).
	conns, err := s.inheritedUDP(addr)
	if err == nil && conns == nil {
		conns, err = bindUDP(addr, s.shardCount())
	}
	if err != nil {
		return nil, err
	}
	l = &UDPListener{srv: s, done: make(chan struct{})}
	l.cids.stats = &s.QUIC
	l.table.Store(&t)
	for i, c := range conns {
		sh := &udpShard{ln: l, srv: s, conn: c, idx: i, fd: -1,
			local:       c.LocalAddr().(*net.UDPAddr).AddrPort(),
			maxDatagram: opt.maxDatagram, batch: opt.batch,
			sessions: map[netip.AddrPort]*udpSession{},
			timeout:  defaultTimeout,
		}
		sh.replay = sh.replayWaiting
		sh.lookupDone = func(resolve.Result) { sh.Post(sh.replay) }
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

	if err := l.Open("udp-epoll", maxEvents); err != nil {
		return err
	}
	if err := l.Control(unix.EPOLL_CTL_ADD, l.fd, unix.EPOLLIN); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	l.b.init(l.maxDatagram, l.batch)
	return nil
}

func (b *batch) init(size, n int) {
	b.Init(size, n)
	b.sess = make([]*udpSession, n)
	b.nlen = make([]uint32, n)
	b.clen = make([]int, n)
}

// Addr is the bound address.
func (l *UDPListener) Addr() net.Addr { return l.shards[0].conn.LocalAddr() }

// SetTable publishes a new table: new sessions take the first of its routes
// that matches, and its session timeout applies to every session of the
// listener.
func (l *UDPListener) SetTable(t Table) {
	l.table.Store(&t)
	l.wake()
}

// Routes returns the current table's routes.
func (l *UDPListener) Routes() []*Route { return l.table.Load().Routes }

// Table returns the current table.
func (l *UDPListener) Table() Table { return *l.table.Load() }

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
		sh.Wake()
	}
}

func (l *udpShard) run() {
	s := l.srv
	defer func() {
		l.endAll()
		l.Exit() // the epoll set; posts are no longer run
		l.conn.Close()
		l.ack() // after the socket is released
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
		err := l.Wait()
		l.now = time.Now().UnixNano()
		l.Busy(l.now)
		if err != nil {
			s.log.Error("udp listener stopped", "listener", l.conn.LocalAddr().String(), "err", err)
			return
		}
		l.refreshTable()
		for _, ev := range l.Events() {
			switch fd := int(ev.Fd); fd {
			case l.fd:
				if !l.released {
					l.readClients()
				}
			case l.WakeFD():
				l.RunPosted()
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

// refreshTable picks up a new table: the listener's session_timeout.
func (l *udpShard) refreshTable() {
	p := l.ln.table.Load()
	if p == l.lastTable {
		return
	}
	l.lastTable = p
	l.quic.refresh(p)
	if t := p.Options.SessionTimeout; t > 0 {
		if t < l.timeout && l.Armed() > 0 {
			l.Rearm() // expiries came earlier
		}
		l.timeout = t
	}
}

// readClients forwards one batch of client datagrams.
func (l *udpShard) readClients() {
	b := &l.b
	l.flush() // replies queued earlier in this turn share the arena
	for i := range b.Hdrs {
		h := &b.Hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.Names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Control = &b.OOB[i][0]
		h.SetControllen(eventloop.OOBSize)
		h.Flags = 0
		b.Iov[i].SetLen(l.maxDatagram)
	}
	n, e := eventloop.Recvmmsg(l.fd, b.Hdrs)
	if e != 0 {
		if e != unix.EAGAIN && e != unix.EINTR {
			if ok, suppressed := l.srv.udpRecvLog.allow(time.Second); ok {
				l.srv.log.Warn("udp receive failed", "listener", l.conn.LocalAddr().String(), "err", e.Error(), "suppressed", suppressed)
			}
		}
		return
	}
	for i := 0; i < n; i++ {
		b.nlen[i], b.clen[i] = b.Hdrs[i].Hdr.Namelen, int(b.Hdrs[i].Hdr.Controllen)
	}
	if l.lastTable.Options.DNS { // each datagram a query balanced on its own
		l.dnsQueries(n)
		return
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

// flush sends the queued replies to their clients through the listener
// socket, in as few sendmmsg calls as the kernel allows.
func (l *udpShard) flush() {
	b := &l.b
	for off := 0; off < b.n; {
		n, e := eventloop.Sendmmsg(l.fd, b.Hdrs[off:b.n])
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
			l.st.outB += int64(b.Iov[i].Len)
		}
		off += n
	}
	for i := 0; i < b.n; i++ {
		b.sess[i] = nil
	}
	b.n = 0
}

// sweep ends the sessions idle for session_timeout.
func (l *udpShard) sweep() {
	t := int64(l.timeout)
	for s := l.head; s != nil && l.now-s.last >= t; s = l.head {
		l.end(s, EndIdleTimeout)
	}
	l.quicExpire()
	l.dnsSweep()
}

// arm sets the epoll descriptor's read deadline to the oldest session's
// expiry, unless an earlier one is set already (then the loop wakes early,
// sweeps nothing and re-arms).
func (l *udpShard) arm() {
	next := l.quic.peeks.next() // 0: no ClientHello is being read
	if d := l.dnsNext(); d != 0 && (next == 0 || d < next) {
		next = d
	}
	if l.head != nil {
		if e := l.head.last + int64(l.timeout); next == 0 || e < next {
			next = e
		}
	}
	if next == 0 {
		if l.Armed() != 0 {
			l.SetDeadline(0)
		}
		return
	}
	if a := l.Armed(); a > 0 && a <= next {
		return
	}
	l.SetDeadline(next)
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
	l.dnsEndAll()
	l.publishStats()
}

// closeFds releases the shard's descriptors (its loop never ran).
func (l *udpShard) closeFds() {
	l.Close()
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

// closeDNSBackendEpoll has every shard of the epoll engine's DNS listeners
// end the clients whose last query went to b and close its socket to b (a
// backend a reload removed), and returns how many clients there were.
func (s *Server) closeDNSBackendEpoll(b *backend.Backend) int {
	ls := keysOf(&s.mu, s.udp)
	n := 0
	for _, l := range ls {
		for _, sh := range l.shards {
			sh.Call(func() { n += sh.dnsCloseBackend(b) })
		}
	}
	return n
}
