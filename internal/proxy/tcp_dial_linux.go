//go:build linux

package proxy

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// A connection's way to its backend: inspection of the first bytes when a
// route needs them, the first matching route and its access control, the
// router's pick, the backend's host name from the resolver, and a
// non-blocking connect, trying the next address and then the next backend
// after a failure.

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
			lp.Post(func() { c.inspected(-1, nil, ci, nil, err) })
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
		lp.Post(func() { c.inspected(fd, rt, ci, first, err) })
	}()
}

// inspected takes the connection back from the inspecting goroutine.
func (c *lconn) inspected(fd int, rt *Route, ci ConnInfo, first []byte, err error) {
	c.insp = nil
	c.ci = ci
	if c.forced {
		if fd >= 0 {
			eventloop.Close(fd)
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
	c.lp.srv.tcpUnrouted(c.l.addr.String(), c.l.routes.Load().opts.Observer, c.ID, c.ci.Client, reason, err)
	c.drop(true)
}

// routed admits the connection to rt and starts dialling.
func (c *lconn) routed(rt *Route) {
	c.rt = rt
	release, ok := c.lp.srv.admitTCP(c.lp.idx, rt, c.ci.Client, c.ConnIdent)
	if !ok {
		c.drop(true)
		return
	}
	if rt.tlsRoute() {
		c.handOff(release)
		return
	}
	c.release = release
	c.req = c.lp.srv.tcpRequest(c.ID, rt, &c.ci, c.l.local, func() (netip.AddrPort, bool) { return eventloop.LocalAddrPort(c.cfd) })
	c.dial()
}

// handOff gives a connection of a TLS route to the goroutine engine
// (tls.go): the loop forgets it, and a goroutine makes its socket a
// net.Conn (a dup and a runtime poller registration, off the loop) and
// serves it to the end, counted in Stats.Active, with the slot of
// max_connections it holds and a count of its own in wg (taken before the
// loop may give up the loop's).
func (c *lconn) handOff(release func()) {
	lp := c.lp
	s, rt, ci, id, local, fd, first, idx := lp.srv, c.rt, c.ci, c.ConnIdent, c.l.local, c.cfd, c.first, lp.idx
	c.cfd, c.first, c.state = -1, nil, stDone
	lp.timers.Stop(&c.timer)
	s.wg.Add(1)
	s.Stats.Active.Add(1)
	lp.unlink(c)
	go func() {
		f := os.NewFile(uintptr(fd), "")
		nc, err := net.FileConn(f) // a duplicate; the original goes
		f.Close()
		if err != nil {
			release()
			if o := rt.Observer; o != nil {
				o.ConnClosed(idx, nil, EndClientError, time.Since(id.Start), 0, 0)
			}
			s.log.Debug("tls connection not handed over; closing", "conn", id.ID, "rule", rt.Name, "client", ci.Client.String(), "err", err)
			s.Stats.Active.Add(-1)
			s.slots.give(1)
			s.wg.Done()
			return
		}
		s.adoptTLS(nc.(*net.TCPConn), rt, ci, id, local, idx, first, release)
	}()
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
				o.PickFailed(c.lp.idx, err)
			}
			c.noBackend(err)
			return
		}
		if o != nil {
			o.Picked(c.lp.idx, b)
		}
		b.Acquire(c.lp.idx)
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

// resolve finds the addresses of the backend's host name (internal/resolve): from
// the cache at once, or by a lookup off the loop, after which the
// connection carries on in resolved. It reports false when the backend
// failed and was accounted for: the caller tries another.
func (c *lconn) resolve(host string) bool {
	rsv := c.lp.srv.resolver
	res, ok := rsv.Lookup(host, nil)
	if !ok {
		lp := c.lp
		res, ok = rsv.Lookup(host, func(res resolve.Result) { lp.Post(func() { c.resolved(res) }) })
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
	c.lp.timers.Stop(&c.timer)
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
	fd, e := eventloop.TCPSocket(c.ap)
	call := "socket"
	if e == 0 {
		call = "connect"
		e = eventloop.Connect(fd, c.ap, resolve.ScopeID(c.ap.Addr()))
	}
	switch e {
	case 0, unix.EINPROGRESS:
		c.bfd = fd
		c.down.rd, c.down.hup = false, false // (what an earlier attempt's socket said)
		c.lp.own(fd, fdOwner{c: c, backend: true})
		c.register(true, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET)
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
			c.lp.timers.Set(&c.timer, t0.Add(c.rt.ConnectTimeout).UnixNano())
		}
		return nil
	}
	if fd >= 0 {
		eventloop.Close(fd)
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
		b.Release(c.lp.idx)
		c.be = nil
		c.noBackend(err)
		return
	}
	c.state = stDialWait
	c.lp.timers.Set(&c.timer, time.Now().Add(c.backoff).UnixNano())
}

// dialFailed accounts for a failed dial of c.be and forgets it.
func (c *lconn) dialFailed(err error) {
	if c.bfd >= 0 {
		c.closeFd(true, false)
	}
	c.lp.timers.Stop(&c.timer)
	b := c.be
	c.be = nil
	c.lastErr = err
	c.lp.srv.tcpDialFailed(c.lp.idx, c.rt, c.ID, &c.req, c.tries, b, c.dialT0, err)
}

// connectDone: the backend socket became writable or failed while
// connecting (ev: its events). A connect that failed reports EPOLLERR (and
// EPOLLHUP), so only then is SO_ERROR read; writable alone is connected.
func (c *lconn) connectDone(ev uint32) {
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		if ev&unix.EPOLLOUT != 0 {
			c.connected()
		}
		return
	}
	e := eventloop.SoError(c.bfd)
	if e == 0 {
		e = unix.ECONNREFUSED // (a hang-up with no error recorded)
	}
	c.connectFailed(c.dialError(os.NewSyscallError("connect", e)))
}

// connected: the backend accepted; start relaying.
func (c *lconn) connected() {
	rt, b := c.rt, c.be
	c.lp.timers.Stop(&c.timer)
	tcpConnected(c.lp.idx, rt, b, c.dialT0)
	var local net.Addr
	if rt.SendProxy != 0 {
		local = localAddr(c.cfd)
	}
	pend, skip, err := tcpPreamble(rt, c.ci.Client, local, c.first)
	if err != nil {
		c.lp.srv.log.Debug("writing to the backend failed", "conn", c.ID, "rule", rt.Name, "backend", b.ID, "err", err)
		c.upErr = dstError{err}
		c.finish(true)
		return
	}
	if len(pend) > 0 {
		c.up.pend, c.up.skip = pend, skip
	}
	c.first = nil
	c.state = stRelay
	c.up.wr, c.down.wr = true, true // a connected socket takes bytes until it says it is full
	c.lp.own(c.cfd, fdOwner{c: c})
	c.last = c.lp.now // (idle time, and the admin API's)
	if c.idle = int64(rt.IdleTimeout); c.idle > 0 {
		c.lp.timers.Set(&c.timer, c.last+c.idle)
	}
	if c.up.pending() && !c.flush(&c.up) {
		return
	}
	c.interest()
}

// noBackend ends a routed connection that reached no backend.
func (c *lconn) noBackend(err error) {
	c.release()
	c.lp.srv.tcpNoBackend(c.lp.idx, c.rt, c.ci.Client, c.ConnIdent, err)
	c.drop(true)
}

// abandonDial ends a connection closed by drain or shutdown before it was
// relayed.
func (c *lconn) abandonDial() {
	if c.bfd >= 0 {
		c.closeFd(true, false)
	}
	if c.be != nil {
		c.be.Release(c.lp.idx)
		c.be = nil
	}
	c.release()
	if o := c.rt.Observer; o != nil {
		o.ConnClosed(c.lp.idx, nil, c.cut, time.Since(c.Start), 0, 0)
	}
	c.drop(false)
}

// localAddr is a socket's own address.
func localAddr(fd int) net.Addr {
	ap, ok := eventloop.LocalAddrPort(fd)
	if !ok {
		return &net.TCPAddr{}
	}
	return net.TCPAddrFromAddrPort(ap)
}
