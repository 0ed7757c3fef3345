//go:build linux

package proxy

import (
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// TCP listeners: a listening socket sits in every loop's epoll set
// (tcp_loop_linux.go); the loop a new connection wakes accepts it, admits
// it against max_connections and the descriptor budget, and starts routing
// it (tcp_conn_linux.go).

var _ Listener = (*TCPListener)(nil)

// TCPListener accepts client connections on one address and serves them
// with the first route of its current table. Its listening socket sits in
// every event loop of the server (tcp_loop_linux.go).
type TCPListener struct {
	srv    *Server
	fd     int
	addr   net.Addr
	local  netip.AddrPort // addr, for router.Request
	routes atomic.Pointer[routeTable]
	closed atomic.Bool
}

// listenTCPEpoll binds addr and starts accepting in the TCP event loops.
func (s *Server) listenTCPEpoll(addr string, t Table) (*TCPListener, error) {
	// The net package binds (address forms, IPv6, SO_REUSEADDR, the
	// backlog); the loops then own a duplicate of the socket, which the
	// runtime poller does not know of.
	ln, err := s.listenTCP(addr) // or the socket an upgrade handed over (inherit.go)
	if err != nil {
		return nil, err
	}
	fd, err := dupSocket(ln.(*net.TCPListener))
	bound := ln.Addr()
	ln.Close()
	if err != nil {
		return nil, err
	}
	// Accepted sockets inherit TCP_NODELAY from the listening socket, so
	// setting it here once spares a setsockopt per connection.
	eventloop.SetNoDelay(fd)
	l := &TCPListener{srv: s, fd: fd, addr: bound, local: addrPort(bound)}
	l.SetTable(t)
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		unix.Close(fd)
		return nil, errShutdown
	}
	if err := s.startLoops(); err != nil {
		s.mu.Unlock()
		unix.Close(fd)
		return nil, err
	}
	s.startFDWatch()
	s.listeners[l] = struct{}{}
	s.wg.Add(1) // until Close: connections are counted while the listener is
	loops := s.loops
	s.mu.Unlock()
	for _, lp := range loops {
		lp.Post(func() { lp.addListener(l) })
	}
	return l, nil
}

// Addr is the bound address.
func (l *TCPListener) Addr() net.Addr { return l.addr }

// SetTable publishes a new table for new connections.
func (l *TCPListener) SetTable(t Table) { l.routes.Store(newRouteTable(t)) }

// Routes returns the current table's routes.
func (l *TCPListener) Routes() []*Route { return l.routes.Load().routes }

// Close stops accepting. Connections already accepted run on.
func (l *TCPListener) Close() {
	if l.closed.Swap(true) {
		return
	}
	s := l.srv
	s.mu.Lock()
	delete(s.listeners, l)
	loops := s.loops
	s.mu.Unlock()
	for _, lp := range loops {
		lp.Call(func() { lp.removeListener(l) })
	}
	unix.Close(l.fd) // no loop has it any more
	s.wg.Done()
}

// loopListener is a TCPListener's state in one loop.
type loopListener struct {
	l       *TCPListener
	fd      int
	on      bool  // in the epoll set
	retry   int64 // when to put it back after an accept failure (0: not waiting)
	backoff time.Duration
	failing bool
}

// addListener puts l's listening socket in the loop.
func (lp *tcpLoop) addListener(l *TCPListener) {
	ll := &loopListener{l: l, fd: l.fd}
	lp.lsns = append(lp.lsns, ll)
	lp.own(l.fd, fdOwner{ln: ll})
	lp.listen(ll)
}

func (lp *tcpLoop) listen(ll *loopListener) {
	if err := lp.Control(unix.EPOLL_CTL_ADD, ll.fd, unix.EPOLLIN|unix.EPOLLEXCLUSIVE); err != nil {
		lp.srv.log.Error("listener not added to the event loop", "listener", ll.l.addr.String(), "err", err)
		return
	}
	ll.on = true
}

// removeListener takes l's listening socket out of the loop (before it is
// closed).
func (lp *tcpLoop) removeListener(l *TCPListener) {
	for i, ll := range lp.lsns {
		if ll.l != l {
			continue
		}
		if ll.on {
			_ = lp.Control(unix.EPOLL_CTL_DEL, ll.fd, 0)
		}
		lp.disown(ll.fd)
		lp.lsns = append(lp.lsns[:i], lp.lsns[i+1:]...)
		return
	}
}

// accept takes the connections waiting on a listener, a bounded number per
// turn so that one busy listener does not starve the loop's connections.
func (lp *tcpLoop) accept(ll *loopListener) {
	s, l := lp.srv, ll.l
	for range 16 {
		if s.closing.Load() {
			// The listener is being closed (shutdown, or an upgrade whose
			// new process shares the socket): leave the clients in the
			// backlog for whoever still serves it rather than accept them
			// here only to close them. Its removal from the loop follows.
			lp.pause(ll)
			return
		}
		if !s.fdRoom(2) {
			// The data path is at its descriptor budget (fdbudget.go):
			// the clients wait in the backlog, as on EMFILE. (Unless
			// another loop took the connection that woke this one.)
			if eventloop.AcceptPending(ll.fd) {
				s.refuse(RefusedAccept, l.addr.String())
				lp.pause(ll)
			}
			return
		}
		var sa unix.RawSockaddrInet6
		fd, err := eventloop.Accept4(ll.fd, &sa)
		if err != 0 {
			switch err {
			case unix.EAGAIN:
				return
			case unix.EINTR, unix.ECONNABORTED:
				continue
			}
			// EMFILE, ENFILE, ENOBUFS…: leave the listener out of the epoll
			// set for a backoff instead of spinning, and say so once per
			// episode (exhaust.go), not once per attempt.
			serr := os.NewSyscallError("accept4", err)
			if resourceError(serr) {
				s.exhaust.failed(s.log, false, l.addr.String(), serr)
			} else if !ll.failing {
				s.log.Error("accept failed; backing off until it succeeds", "listener", l.addr.String(), "err", serr)
				ll.failing = true
			}
			lp.pause(ll)
			return
		}
		if ll.failing {
			s.log.Info("accept recovered", "listener", l.addr.String())
			ll.failing = false
		}
		ll.backoff = 0
		lp.accepted.Store(lp.accepted.Load() + 1) // the loop's own
		// A client accepted as closing began is served: the listener's
		// count in wg (until Close) keeps Shutdown waiting for it until
		// the loop holds its own (link).
		if !lp.takeSlot() {
			s.tcpMaxConnections(l.routes.Load().opts.Observer, l.addr.String(), s.maxConns.Load())
			eventloop.ResetClose(fd)
			continue
		}
		// (TCP_NODELAY comes from the listening socket: ListenTCP.)
		c := &lconn{lp: lp, l: l, cfd: fd, bfd: -1, ConnIdent: ConnIdent{ID: s.nextID(&lp.ids), Start: time.Now()}}
		c.timer.Owner = c
		c.ci.Client = eventloop.SockaddrAddrPort(&sa)
		lp.link(c)
		c.begin()
	}
}

// pause takes a listener out of the epoll set for a backoff that doubles
// from 5 ms to 1 s while accepting keeps failing.
func (lp *tcpLoop) pause(ll *loopListener) {
	ll.backoff = nextBackoff(ll.backoff)
	if ll.on {
		_ = lp.Control(unix.EPOLL_CTL_DEL, ll.fd, 0)
		ll.on = false
	}
	ll.retry = lp.now + int64(ll.backoff)
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

// Table returns the current table.
func (l *TCPListener) Table() Table {
	t := l.routes.Load()
	return Table{Options: t.opts, Routes: t.routes}
}
