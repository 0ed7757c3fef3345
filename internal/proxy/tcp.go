package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

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

// ListenTCP binds addr and starts accepting. Routes must be set with
// SetRoutes; until then connections are closed as unmatched.
func (s *Server) ListenTCP(addr string, routes []*Route) (*TCPListener, error) {
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
	setNoDelay(fd)
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
		lp.post(func() { lp.addListener(l) })
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
		lp.call(func() { lp.removeListener(l) })
	}
	unix.Close(l.fd) // no loop has it any more
	s.wg.Done()
}

// admitConn counts a new connection in Stats.Active unless that would take
// it beyond max (0: no limit). The check and the count are one atomic step,
// so listeners accepting at the same moment cannot overshoot the cap together.
func (s *Server) admitConn(max int64) bool {
	for {
		n := s.Stats.Active.Load()
		if max > 0 && n >= max {
			return false
		}
		if s.Stats.Active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// abortive reports whether a copy error is a peer's reset or an I/O error,
// rather than the proxy closing the connection or the idle timeout.
func abortive(err error) bool {
	return err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded)
}

// dstError marks a relay error that came from writing to a direction's
// destination rather than reading its source, so that endReason blames the
// right side: the client→backend copy failing to write means the backend
// failed (a reset mid-stream), not the client.
type dstError struct{ error }

func (e dstError) Unwrap() error { return e.error }

// endReason says how a relayed connection ended from its two directions'
// errors; cut is the end a drain or a shutdown forced (EndEOF: none).
func endReason(upErr, downErr error, cut End) End {
	if cut != EndEOF {
		return cut
	}
	for _, e := range []struct {
		err        error
		side, peer End // whose fault an error reading (side) or writing (peer) is
	}{{upErr, EndClientError, EndBackendError}, {downErr, EndBackendError, EndClientError}} {
		switch {
		case e.err == nil, errors.Is(e.err, net.ErrClosed):
		case errors.Is(e.err, os.ErrDeadlineExceeded):
			return EndIdleTimeout
		case errors.As(e.err, new(dstError)):
			return e.peer
		default:
			return e.side
		}
	}
	return EndEOF
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}
