//go:build linux

package proxy

import (
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// lconn is one proxied TCP connection, owned by one event loop
// (tcp_loop_linux.go): only that loop's goroutine reads or writes it.
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
// The sockets are in the epoll set edge-triggered, registered once each
// (tcp_relay_linux.go: interest). A direction remembers what the edges
// said (ldir.rd, ldir.wr): it stops reading after a short read, which
// drained the socket (a byte that comes later is a new edge), so no read is
// spent to learn that a socket is empty — the read that Go's netpoller
// needs before every wait.
type lconn struct {
	lp *tcpLoop
	l  *TCPListener

	cfd, bfd     int    // client and backend sockets; -1: none
	cmask, bmask uint32 // events registered in the epoll set
	creg, breg   bool   // in the epoll set

	state  uint8
	queued bool // in the loop's list of connections to drive again next turn
	forced bool // closed by drain or shutdown while routing or dialling
	cut    End  // why forceClose ended it (EndEOF: it was not forced)

	ConnIdent // its id and when it was accepted (conns.go)
	ci        ConnInfo
	rt        *Route
	release   func()      // access control slot
	first     []byte      // bytes read while inspecting, for the backend
	insp      *inspection // while a goroutine inspects the first bytes

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

	timer      eventloop.Timer[*lconn] // its one deadline at a time: connect, dial retry or idle
	prev, next *lconn                  // the loop's list
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

// begin routes a freshly accepted connection.
func (c *lconn) begin() {
	s, l := c.lp.srv, c.l
	table := l.routes.Load()
	if len(table.routes) == 0 {
		s.tcpNoRoutes(l.addr.String(), table.opts.Observer, c.ID, c.ci.Client)
		c.drop(false)
		return
	}
	if table.opts.AcceptProxy || table.need != 0 {
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
	lp.timers.Stop(&c.timer)
	lp.unlink(c)
	lp.giveSlot()
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
		eventloop.ResetClose(*fd)
	} else {
		eventloop.Close(*fd)
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
			c.lp.timers.Set(&c.timer, next) // bytes moved meanwhile
			return
		}
		c.upErr = os.ErrDeadlineExceeded
		c.finish(false)
	}
}
