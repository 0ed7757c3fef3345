//go:build linux

package proxy

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

var _ Listener = (*TCPListener)(nil)

// TCPListener accepts client connections on one address and serves them
// with the first route of its current table. Its listening socket sits in
// every event loop of the server (tcploop.go).
type TCPListener struct {
	srv    *Server
	fd     int
	addr   net.Addr
	local  netip.AddrPort // addr, for router.Request
	routes atomic.Pointer[routeTable]
	closed atomic.Bool
}

// listenTCPEpoll binds addr and starts accepting in the TCP event loops.
func (s *Server) listenTCPEpoll(addr string, routes []*Route) (*TCPListener, error) {
	// The net package binds (address forms, IPv6, SO_REUSEADDR, the
	// backlog); the loops then own a duplicate of the socket, which the
	// runtime poller does not know of.
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
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
	l.SetRoutes(routes)
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

// SetRoutes publishes a new route table for new connections.
func (l *TCPListener) SetRoutes(routes []*Route) { l.routes.Store(newRouteTable(routes)) }

// Routes returns the current route table.
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
