//go:build linux

package proxy

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// lconn is one proxied TCP connection, owned by one event loop
// (tcploop.go): only that loop's goroutine reads or writes it.
//
// Its life: accepted → (inspected by a goroutine, only when a route needs
// the first bytes) → routed and admitted → (a backend host name resolved
// off the loop, when the cache has no answer) → dialled (a non-blocking
// connect; the backend's next address, then the next backend the router
// offers, after a failure) → relayed → closed. While relaying, each direction (ldir) reads its source when
// the epoll set says it is readable and writes what it read to its
// destination at once; what the destination does not take is kept until it
// is writable again, and the source is not read meanwhile. A read that fills
// the buffer (buffer_size) switches the direction to splice(2) through a
// pooled pipe for the rest of the burst, so bulk data is not copied through
// user space. An idle connection holds neither a buffer nor a pipe.
//
// The epoll set is level-triggered: a direction stops reading after a short
// read and the next wait reports the socket again if more came (or its FIN
// did), so no read is spent to learn that a socket is empty — the read that
// Go's edge-triggered netpoller needs before every wait.
type lconn struct {
	lp *tcpLoop
	l  *TCPListener

	cfd, bfd     int    // client and backend sockets; -1: none
	cmask, bmask uint32 // events registered in the epoll set
	creg, breg   bool   // in the epoll set

	state  uint8
	forced bool // closed by drain or shutdown while routing or dialling
	cut    End  // why forceClose ended it (EndEOF: it was not forced)

	start   time.Time
	ci      ConnInfo
	rt      *Route
	release func()      // access control slot
	first   []byte      // bytes read while inspecting, for the backend
	insp    *inspection // while a goroutine inspects the first bytes

	be      *backend.Backend
	req     router.Request
	tries   int
	lastErr error
	ap      netip.AddrPort // the backend address being dialled
	addrs   []netip.Addr   // the backend's resolved addresses (nil: an IP literal)
	astart  int            // the first of addrs tried
	ak      int            // addrs[(astart+ak)%len] is ap
	dialT0  time.Time      // the first attempt on this backend
	backoff time.Duration

	up, down       ldir
	upErr, downErr error
	idle           int64 // idle_timeout in ns; 0: none
	last           int64 // unix ns of the last byte moved

	due        int64 // timer (timerHeap)
	hidx       int
	prev, next *lconn // the loop's list
}

const (
	stRoute      uint8 = iota // before routing
	stInspect                 // a goroutine inspects the first bytes
	stResolve                 // the resolver looks the backend's host name up
	stDialWait                // waiting out a resource backoff before dialling again
	stConnecting              // non-blocking connect in progress
	stRelay
	stDone
)

// ldir is one direction of a relayed connection.
type ldir struct {
	pend   []byte  // read but not yet written to the destination
	pbuf   *[]byte // pend's pooled buffer, nil when pend is not pooled
	skip   int     // bytes at the front of pend not counted as traffic (PROXY header)
	pipe   *pipe
	inPipe int  // bytes in pipe not yet spliced to the destination
	bulk   bool // the last read filled the buffer: splice
	eof    bool // the source ended
	shut   bool // the destination was sent a FIN
	n      int64
}

func (d *ldir) pending() bool { return len(d.pend) > 0 || d.inPipe > 0 }

// readable: the direction may read its source.
func (d *ldir) readable() bool { return !d.eof && !d.pending() }

// begin routes a freshly accepted connection.
func (c *lconn) begin() {
	s, l := c.lp.srv, c.l
	table := l.routes.Load()
	if len(table.routes) == 0 {
		s.tcpNoRoutes(l.addr.String(), c.ci.Client)
		c.drop(false)
		return
	}
	if table.routes[0].Listen.AcceptProxy || table.need != 0 {
		c.inspect(table)
		return
	}
	rt := firstMatch(table.routes, &c.ci)
	if rt == nil {
		c.unrouted(ReasonNoRule, nil)
		return
	}
	c.routed(rt)
}

// inspection is a connection's socket while a goroutine inspects it.
type inspection struct {
	mu     sync.Mutex
	nc     *net.TCPConn
	cancel bool // forceClose: give up
}

// abort makes the inspecting goroutine give up and report back.
func (in *inspection) abort() {
	in.mu.Lock()
	in.cancel = true
	if in.nc != nil {
		in.nc.Close()
	}
	in.mu.Unlock()
}

// inspect hands the client socket to a goroutine that reads what routing
// needs (inspect.go) with the net package's deadlines, then gives it back.
// The goroutine also makes the net.Conn (a dup and a runtime poller
// registration, not raw system calls), so the loop makes none of those.
func (c *lconn) inspect(table *routeTable) {
	fd := c.cfd
	c.cfd = -1 // the goroutine's now; not in the loop's epoll set
	in := &inspection{}
	c.insp, c.state = in, stInspect
	ci := c.ci
	lp := c.lp
	go func() {
		f := os.NewFile(uintptr(fd), "")
		nc, err := net.FileConn(f) // a duplicate; the original goes
		f.Close()
		if err != nil {
			lp.post(func() { c.inspected(-1, nil, ci, nil, err) })
			return
		}
		tc := nc.(*net.TCPConn)
		in.mu.Lock()
		in.nc = tc
		if in.cancel {
			tc.Close()
		}
		in.mu.Unlock()
		rt, ci, first, err := inspect(tc, table)
		fd := -1
		if err == nil && rt != nil {
			fd, err = dupSocket(tc)
		} else {
			tc.SetLinger(0)
		}
		tc.Close()
		lp.post(func() { c.inspected(fd, rt, ci, first, err) })
	}()
}

// dupSocket duplicates a net socket's descriptor, which then outlives the
// socket's Close without the runtime poller knowing of it.
func dupSocket(sc syscall.Conn) (int, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, os.NewSyscallError("fcntl", err)
	}
	return fd, nil
}

// inspected takes the connection back from the inspecting goroutine.
func (c *lconn) inspected(fd int, rt *Route, ci ConnInfo, first []byte, err error) {
	c.insp = nil
	c.ci = ci
	if c.forced {
		if fd >= 0 {
			rawClose(fd)
		}
		c.drop(false)
		return
	}
	if err != nil || rt == nil {
		c.unrouted(inspectReason(err), err)
		return
	}
	c.cfd, c.first = fd, first
	c.routed(rt)
}

// unrouted ends a connection no route takes.
func (c *lconn) unrouted(reason Reason, err error) {
	c.lp.srv.tcpUnrouted(c.l.addr.String(), c.ci.Client, reason, err)
	c.drop(true)
}

// routed admits the connection to rt and starts dialling.
func (c *lconn) routed(rt *Route) {
	c.rt = rt
	release, ok := c.lp.srv.admitTCP(rt, c.ci.Client, c.start)
	if !ok {
		c.drop(true)
		return
	}
	c.release = release
	c.req = tcpRequest(rt, &c.ci, c.l.local, func() (netip.AddrPort, bool) { return localAddrPort(c.cfd) })
	c.dial()
}

// dial picks a backend and connects to it; a failed dial tries the next one
// the router offers, at most once per backend.
func (c *lconn) dial() {
	rt := c.rt
	o := rt.Observer
	for c.tries < len(rt.Backends) {
		c.tries++
		b, err := rt.Router.Pick(&c.req)
		if err != nil {
			if c.lastErr != nil {
				err = c.lastErr
			} else if o != nil {
				o.PickFailed(err)
			}
			c.noBackend(err)
			return
		}
		if o != nil {
			o.Picked(b)
		}
		b.Acquire()
		c.be, c.backoff = b, 0
		c.dialT0 = time.Now()
		tg := b.Target()
		if !tg.Addr.IsValid() {
			if c.resolve(tg.Host) {
				return
			}
			continue
		}
		c.addrs, c.ak = nil, 0
		c.ap = tg.Addr
		if c.tryAddrs() {
			return
		}
	}
	if c.lastErr == nil {
		c.lastErr = router.NoBackend(len(rt.Backends))
	}
	c.noBackend(c.lastErr)
}

// resolve finds the addresses of the backend's host name (resolve.go): from
// the cache at once, or by a lookup off the loop, after which the
// connection carries on in resolved. It reports false when the backend
// failed and was accounted for: the caller tries another.
func (c *lconn) resolve(host string) bool {
	rsv := c.lp.srv.resolver
	res, ok := rsv.Lookup(host, nil)
	if !ok {
		lp := c.lp
		res, ok = rsv.Lookup(host, func(res resolve.Result) { lp.post(func() { c.resolved(res) }) })
		if !ok {
			c.state = stResolve
			return true
		}
	}
	return c.useAddrs(res)
}

func (c *lconn) resolved(res resolve.Result) {
	if c.forced {
		c.abandonDial()
		return
	}
	if !c.useAddrs(res) {
		c.dial()
	}
}

// useAddrs connects to the backend's resolved addresses in turn, starting
// at the next in the loop's rotation so that every address takes its share.
func (c *lconn) useAddrs(res resolve.Result) bool {
	if res.Err != nil {
		c.dialFailed(&net.OpError{Op: "dial", Net: "tcp", Err: res.Err})
		return false
	}
	n := len(res.Addrs)
	c.addrs, c.ak = res.Addrs, 0
	c.astart = int(c.lp.rot % uint32(n))
	c.lp.rot++
	c.ap = netip.AddrPortFrom(c.addrs[c.astart], c.be.Target().Port)
	return c.tryAddrs()
}

// tryAddrs connects to the backend's current address, and to its next ones
// while a connect fails at once. It reports false when every address failed
// and the backend's failure was accounted for.
func (c *lconn) tryAddrs() bool {
	for {
		err := c.connect()
		if err == nil {
			return true
		}
		if !c.nextAddr() {
			c.dialFailed(err)
			return false
		}
	}
}

// nextAddr moves on to the backend's next address; false when it has none.
func (c *lconn) nextAddr() bool {
	if c.ak+1 >= len(c.addrs) {
		return false
	}
	c.ak++
	c.ap = netip.AddrPortFrom(c.addrs[(c.astart+c.ak)%len(c.addrs)], c.be.Target().Port)
	return true
}

// connectFailed: the connect to c.ap failed after it started (refused,
// unreachable, timed out). The backend's next address is tried before the
// backend counts as failed.
func (c *lconn) connectFailed(err error) {
	if c.bfd >= 0 {
		c.closeFd(true, false)
	}
	c.lp.timers.remove(c)
	if c.nextAddr() {
		if c.tryAddrs() {
			return
		}
		c.dial()
		return
	}
	c.dialFailed(err)
	c.dial()
}

// connect starts a non-blocking connect to c.ap. It returns the error of a
// connect that failed at once (its socket closed, nothing accounted for);
// nil when the connect is under way, done, or waiting out a resource
// backoff.
func (c *lconn) connect() error {
	fd, e := tcpSocket(c.ap)
	call := "socket"
	if e == 0 {
		call = "connect"
		e = connectTo(fd, c.ap)
	}
	switch e {
	case 0, unix.EINPROGRESS:
		c.bfd = fd
		c.lp.own(fd, fdOwner{c: c, backend: true})
		c.setMask(true, unix.EPOLLOUT)
		if e == 0 {
			c.connected()
			return nil
		}
		c.state = stConnecting
		if c.rt.ConnectTimeout > 0 {
			t0 := c.dialT0 // each address has connect_timeout
			if c.ak > 0 {
				t0 = time.Now()
			}
			c.lp.timers.set(c, t0.Add(c.rt.ConnectTimeout).UnixNano())
		}
		return nil
	}
	if fd >= 0 {
		rawClose(fd)
	}
	err := c.dialError(os.NewSyscallError(call, e))
	if resourceError(err) {
		c.resourceWait(err)
		return nil
	}
	return err
}

func (c *lconn) dialError(err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(c.ap), Err: err}
}

// resourceWait handles a dial that failed for want of descriptors or
// socket resources here (exhaust.go): not the backend's fault, so the same
// backend is dialled again after a backoff, until connection_timeout.
func (c *lconn) resourceWait(err error) {
	s, rt, b := c.lp.srv, c.rt, c.be
	s.exhaust.failed(s.log, true, rt.Name+"/"+b.ID, err)
	c.backoff = nextBackoff(c.backoff)
	if time.Since(c.dialT0)+c.backoff >= rt.ConnectTimeout {
		b.Release()
		c.be = nil
		c.noBackend(err)
		return
	}
	c.state = stDialWait
	c.lp.timers.set(c, time.Now().Add(c.backoff).UnixNano())
}

// dialFailed accounts for a failed dial of c.be and forgets it.
func (c *lconn) dialFailed(err error) {
	if c.bfd >= 0 {
		c.closeFd(true, false)
	}
	c.lp.timers.remove(c)
	b := c.be
	c.be = nil
	c.lastErr = err
	c.lp.srv.tcpDialFailed(c.rt, &c.req, c.tries, b, c.dialT0, err)
}

// connected: the backend accepted; start relaying.
func (c *lconn) connected() {
	rt, b := c.rt, c.be
	c.lp.timers.remove(c)
	tcpConnected(rt, b, c.dialT0)
	var local net.Addr
	if rt.SendProxy != 0 {
		local = localAddr(c.cfd)
	}
	pend, skip, err := tcpPreamble(rt, c.ci.Client, local, c.first)
	if err != nil {
		c.lp.srv.log.Debug("writing to the backend failed", "rule", rt.Name, "backend", b.ID, "err", err)
		c.upErr = dstError{err}
		c.finish(true)
		return
	}
	if len(pend) > 0 {
		c.up.pend, c.up.skip = pend, skip
	}
	c.first = nil
	c.state = stRelay
	c.lp.own(c.cfd, fdOwner{c: c})
	if c.idle = int64(rt.IdleTimeout); c.idle > 0 {
		c.last = c.lp.now
		c.lp.timers.set(c, c.last+c.idle)
	}
	if c.up.pending() && !c.flush(&c.up) {
		return
	}
	c.interest()
}

// noBackend ends a routed connection that reached no backend.
func (c *lconn) noBackend(err error) {
	c.release()
	c.lp.srv.tcpNoBackend(c.rt, c.ci.Client, c.start, err)
	c.drop(true)
}

// abandonDial ends a connection closed by drain or shutdown before it was
// relayed.
func (c *lconn) abandonDial() {
	if c.bfd >= 0 {
		c.closeFd(true, false)
	}
	if c.be != nil {
		c.be.Release()
		c.be = nil
	}
	c.release()
	if o := c.rt.Observer; o != nil {
		o.ConnClosed(nil, c.cut, time.Since(c.start), 0, 0)
	}
	c.drop(false)
}

// drop closes the client socket of a connection that is not relayed and
// forgets the connection; reset sends the client a reset.
func (c *lconn) drop(reset bool) {
	if c.cfd >= 0 {
		c.closeFd(false, reset)
	}
	c.state = stDone
	c.untrack()
}

func (c *lconn) untrack() {
	lp := c.lp
	lp.timers.remove(c)
	lp.unlink(c)
	lp.srv.Stats.Active.Add(-1)
	lp.srv.wg.Done()
}

// closeFd closes the backend (or client) socket, resetting it if asked.
func (c *lconn) closeFd(backend, reset bool) {
	fd := &c.cfd
	if backend {
		fd = &c.bfd
		c.breg, c.bmask = false, 0
	} else {
		c.creg, c.cmask = false, 0
	}
	c.lp.disown(*fd)
	if reset { // (closing also leaves the epoll set)
		resetClose(*fd)
	} else {
		rawClose(*fd)
	}
	*fd = -1
}

// forceClose ends the connection now: its backend's drain_timeout is over
// (EndDrained) or the shutdown timeout (EndShutdown).
func (c *lconn) forceClose(end End) {
	c.cut = end
	switch c.state {
	case stInspect:
		c.forced = true
		c.insp.abort() // the inspecting goroutine gives up and reports back
	case stResolve:
		c.forced = true
	case stDialWait, stConnecting:
		c.abandonDial()
	case stRelay:
		c.upErr = net.ErrClosed
		c.finish(false)
	}
}

// timeout: the connection's timer fired.
func (c *lconn) timeout() {
	switch c.state {
	case stDialWait:
		if !c.tryAddrs() {
			c.dial()
		}
	case stConnecting:
		c.connectFailed(c.dialError(os.ErrDeadlineExceeded))
	case stRelay:
		if next := c.last + c.idle; next > c.lp.now {
			c.lp.timers.set(c, next) // bytes moved meanwhile
			return
		}
		c.upErr = os.ErrDeadlineExceeded
		c.finish(false)
	}
}

// event handles readiness of one of the connection's sockets.
func (c *lconn) event(backend bool, ev uint32) {
	switch c.state {
	case stConnecting:
		if backend {
			c.connectDone()
		}
		return
	case stRelay:
	default:
		return
	}
	// in reads from this socket, out writes to it.
	in, out := &c.up, &c.down
	if backend {
		in, out = &c.down, &c.up
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && out.pending() {
		if !c.flush(out) {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0 && in.readable() {
		if !c.pump(in, ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0) {
			return
		}
	}
	c.interest()
}

// connectDone: the backend socket became writable or failed while connecting.
func (c *lconn) connectDone() {
	if e := soError(c.bfd); e != 0 {
		c.connectFailed(c.dialError(os.NewSyscallError("connect", e)))
		return
	}
	c.connected()
}

// pump reads d's source and writes to its destination, a bounded number of
// times per event so that other connections get their turn. hup says the
// peer's FIN is known to be queued: read on to it rather than wait for
// another event.
func (c *lconn) pump(d *ldir, hup bool) bool {
	src, dst := c.cfd, c.bfd
	if d == &c.down {
		src, dst = c.bfd, c.cfd
	}
	size := c.rt.BufferSize
	if size <= 0 {
		size = defaultBufSize
	}
	lp := c.lp
	if len(lp.buf) < size {
		lp.buf = make([]byte, size)
	}
	for range 8 {
		if d.bulk {
			more, ok := c.spliceIn(d, src, dst, size)
			if !ok {
				return false
			}
			if !more {
				return true
			}
			continue
		}
		buf := lp.buf[:size]
		n, err := rawRecv(src, buf)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return true
		}
		if err != nil {
			c.fail(d, os.NewSyscallError("recvfrom", err))
			return false
		}
		if n == 0 {
			return c.sourceEnded(d)
		}
		c.last = lp.now
		w, werr := writeSome(dst, buf[:n])
		if werr != nil {
			c.fail(d, dstError{os.NewSyscallError("sendto", werr)})
			return false
		}
		c.moved(d, int64(w))
		if w < n {
			d.keep(buf[w:n], size)
			return true
		}
		if n == size {
			d.bulk = true
			continue
		}
		if !hup {
			return true // a short read: the next wait says when there is more
		}
	}
	return true
}

// spliceIn moves one pipeful from src to dst. more reports that the source
// may have more right away; ok false that the connection ended.
func (c *lconn) spliceIn(d *ldir, src, dst, size int) (more, ok bool) {
	if d.pipe == nil {
		p, err := getPipe(c.lp.srv)
		if err == errPipeBudget { // (fdbudget.go)
			c.lp.srv.fds.refused[RefusedPipe].Add(1)
		}
		if err == errPipeBudget || resourceError(err) {
			d.bulk = false // copy this burst through the buffer instead
			return true, true
		}
		if err != nil {
			c.fail(d, err)
			return false, false
		}
		d.pipe = p
	}
	in, err := rawSplice(src, d.pipe.w, pipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	switch {
	case err == unix.EINTR:
		return true, true
	case err == unix.EAGAIN:
		d.bulk = false
		c.putPipe(d)
		return false, true
	case err != nil:
		c.fail(d, os.NewSyscallError("splice", err))
		return false, false
	case in == 0:
		c.putPipe(d)
		return false, c.sourceEnded(d)
	}
	c.last = c.lp.now
	if in < int64(size) {
		d.bulk = false
	}
	d.inPipe = int(in)
	if !c.flushPipe(d, dst) {
		return false, false
	}
	return d.inPipe == 0 && d.bulk, true
}

// flushPipe splices what the pipe holds to dst; it reports false when the
// connection ended.
func (c *lconn) flushPipe(d *ldir, dst int) bool {
	for d.inPipe > 0 {
		out, err := rawSplice(d.pipe.r, dst, d.inPipe, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return true // wait for dst to be writable, holding the pipe
		}
		if err != nil {
			c.fail(d, dstError{os.NewSyscallError("splice", err)})
			return false
		}
		d.inPipe -= int(out)
		c.moved(d, out)
	}
	c.putPipe(d)
	return true
}

// putPipe gives an empty pipe back to the pool.
func (c *lconn) putPipe(d *ldir) {
	if d.pipe != nil && d.inPipe == 0 {
		putPipe(d.pipe)
		d.pipe = nil
	}
}

// keep saves bytes the destination did not take.
func (d *ldir) keep(b []byte, size int) {
	d.pbuf = getBuf(size)
	d.pend = (*d.pbuf)[:copy(*d.pbuf, b)]
}

// flush writes what d holds to its destination. It reports false when the
// connection ended.
func (c *lconn) flush(d *ldir) bool {
	dst := c.bfd
	if d == &c.down {
		dst = c.cfd
	}
	if d.inPipe > 0 {
		if !c.flushPipe(d, dst) {
			return false
		}
	}
	for len(d.pend) > 0 {
		w, err := writeSome(dst, d.pend)
		if err != nil {
			c.fail(d, dstError{os.NewSyscallError("sendto", err)})
			return false
		}
		if w == 0 {
			return true
		}
		counted := w
		if d.skip > 0 {
			s := min(d.skip, w)
			d.skip -= s
			counted -= s
		}
		c.moved(d, int64(counted))
		d.pend = d.pend[w:]
	}
	if d.pbuf != nil {
		putBuf(d.pbuf)
		d.pbuf = nil
	}
	d.pend = nil
	if d.eof && !d.pending() {
		return c.sourceEnded(d)
	}
	return true
}

// sourceEnded: d's source sent its FIN. Once d's destination has taken
// everything it is sent a FIN too; when both directions ended the
// connection is over.
func (c *lconn) sourceEnded(d *ldir) bool {
	d.eof = true
	if d.pending() {
		return true
	}
	if !d.shut {
		d.shut = true
		if d == &c.up {
			shutdownWR(c.bfd)
		} else {
			shutdownWR(c.cfd)
		}
	}
	if c.up.shut && c.down.shut {
		c.finish(false)
		return false
	}
	return true
}

// moved accounts n bytes written in direction d: the direction's count,
// the backend's (this loop's share, for the admin API), the route's
// metrics, and the activity idle_timeout watches.
func (c *lconn) moved(d *ldir, n int64) {
	c.last = c.lp.now
	if n <= 0 {
		return
	}
	d.n += n
	o := c.rt.Observer
	if d == &c.up {
		c.be.AddBytesIn(c.lp.idx, n)
		if o != nil {
			o.BytesIn(n)
		}
		return
	}
	c.be.AddBytesOut(c.lp.idx, n)
	if o != nil {
		o.BytesOut(n)
	}
}

// fail ends the connection on an error in direction d: a reset or I/O
// error on one side is passed on as a reset, so the other peer sees a
// broken stream as broken (ECONNRESET), never as an orderly end of a
// truncated one.
func (c *lconn) fail(d *ldir, err error) {
	if d == &c.up {
		c.upErr = err
	} else {
		c.downErr = err
	}
	c.finish(abortive(err))
}

// writeSome writes b without blocking: the bytes written (0 when the socket
// would block) or an error.
func writeSome(fd int, b []byte) (int, error) {
	for {
		w, err := rawSend(fd, b)
		switch err {
		case nil:
			return w, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		}
		return 0, err
	}
}

// interest registers in the epoll set what each socket waits for now: a
// direction reads its source unless it ended or holds unwritten bytes, and
// waits for its destination to be writable while it holds some.
func (c *lconn) interest() {
	var cm, bm uint32
	if c.up.readable() {
		cm |= unix.EPOLLIN | unix.EPOLLRDHUP
	}
	if c.down.pending() {
		cm |= unix.EPOLLOUT
	}
	if c.down.readable() {
		bm |= unix.EPOLLIN | unix.EPOLLRDHUP
	}
	if c.up.pending() {
		bm |= unix.EPOLLOUT
	}
	c.setMask(false, cm)
	c.setMask(true, bm)
}

func (c *lconn) setMask(backend bool, m uint32) {
	fd, reg, mask := c.cfd, &c.creg, &c.cmask
	if backend {
		fd, reg, mask = c.bfd, &c.breg, &c.bmask
	}
	if *reg && *mask == m {
		return
	}
	if m == 0 {
		// Out of the set rather than registered for nothing: the set
		// would still report an error or hang-up of the socket, and
		// being level-triggered, report it again on every wait. A hang-up
		// comes with the peer's FIN while unread data may remain.
		if *reg {
			_ = c.lp.control(unix.EPOLL_CTL_DEL, fd, 0)
			*reg, *mask = false, 0
		}
		return
	}
	op := unix.EPOLL_CTL_MOD
	if !*reg {
		op = unix.EPOLL_CTL_ADD
	}
	if err := c.lp.control(op, fd, m); err != nil {
		c.lp.srv.log.Error("epoll_ctl failed", "err", err)
		return
	}
	*reg, *mask = true, m
}

// finish closes a relayed connection and accounts for it.
func (c *lconn) finish(reset bool) {
	rt, b := c.rt, c.be
	c.state = stDone
	for _, d := range []*ldir{&c.up, &c.down} {
		if d.pbuf != nil {
			putBuf(d.pbuf)
			d.pbuf, d.pend = nil, nil
		}
		if d.pipe != nil {
			if d.inPipe == 0 {
				putPipe(d.pipe)
			} else {
				d.pipe.close()
			}
			d.pipe = nil
		}
	}
	if c.cfd >= 0 {
		c.closeFd(false, reset)
	}
	if c.bfd >= 0 {
		c.closeFd(true, reset)
	}
	c.lp.srv.tcpFinished(rt, b, c.ci.Client, c.start, c.release, c.upErr, c.downErr, c.cut, c.up.n, c.down.n)
	c.untrack()
}
