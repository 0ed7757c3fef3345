package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// TCPListener accepts client connections on one address and serves them
// with the first route of its current table.
type TCPListener struct {
	srv    *Server
	ln     *net.TCPListener
	routes atomic.Pointer[[]*Route]
	closed atomic.Bool
}

// ListenTCP binds addr and starts accepting. Routes must be set with
// SetRoutes; until then connections are closed as unmatched.
func (s *Server) ListenTCP(addr string, routes []*Route) (*TCPListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &TCPListener{srv: s, ln: ln.(*net.TCPListener)}
	l.SetRoutes(routes)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return nil, errShutdown
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go l.serve()
	return l, nil
}

// Addr is the bound address.
func (l *TCPListener) Addr() net.Addr { return l.ln.Addr() }

// SetRoutes publishes a new route table for new connections.
func (l *TCPListener) SetRoutes(routes []*Route) { l.routes.Store(&routes) }

// Routes returns the current route table.
func (l *TCPListener) Routes() []*Route { return *l.routes.Load() }

// Close stops accepting. Connections already accepted run on.
func (l *TCPListener) Close() {
	if l.closed.Swap(true) {
		return
	}
	l.ln.Close()
	l.srv.mu.Lock()
	delete(l.srv.listeners, l)
	l.srv.mu.Unlock()
}

func (l *TCPListener) serve() {
	s := l.srv
	defer s.wg.Done()
	var backoff time.Duration
	var failing bool
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE, ENFILE, ENOBUFS…: back off instead of spinning, and say so once.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			if !failing {
				s.log.Error("accept failed; backing off until it succeeds", "listener", l.Addr().String(), "err", err)
				failing = true
			}
			time.Sleep(backoff)
			continue
		}
		if failing {
			s.log.Info("accept recovered", "listener", l.Addr().String())
			failing = false
		}
		backoff = 0
		s.Stats.Accepted.Add(1)
		if max := s.maxConns.Load(); max > 0 && s.Stats.Active.Load() >= max {
			s.Stats.Rejected.Add(1)
			c.SetLinger(0)
			c.Close()
			s.log.Debug("connection rejected: max_connections reached", "listener", l.Addr().String(), "max_connections", max)
			continue
		}
		tc := &tcpConn{client: c, start: time.Now()}
		if !s.track(tc) {
			c.Close()
			return
		}
		s.Stats.Active.Add(1)
		s.wg.Add(1)
		go l.handle(tc)
	}
}

// tcpConn is one proxied connection.
type tcpConn struct {
	client  *net.TCPConn
	start   time.Time
	mu      sync.Mutex
	backend *net.TCPConn
	be      *backend.Backend
	forced  bool
}

func (c *tcpConn) setBackend(be *backend.Backend, b *net.TCPConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forced {
		return false
	}
	c.be, c.backend = be, b
	return true
}

func (c *tcpConn) forceClose() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forced = true
	c.client.Close()
	if c.backend != nil {
		c.backend.Close()
	}
}

func (l *TCPListener) handle(c *tcpConn) {
	s := l.srv
	defer func() {
		c.client.Close()
		s.untrack(c)
		s.Stats.Active.Add(-1)
		s.wg.Done()
	}()
	routes := l.Routes()
	if len(routes) == 0 {
		s.Stats.NoRoute.Add(1)
		s.log.Debug("no rule matches connection; closing", "listener", l.Addr().String(), "client", c.client.RemoteAddr().String())
		return
	}
	rt := routes[0]
	req := router.Request{Client: addrPort(c.client.RemoteAddr())}
	b, bc, err := dialBackend(rt, &req, s.log)
	if err != nil {
		s.Stats.NoBackend.Add(1)
		if ok, suppressed := s.noBackendLog.allow(time.Second); ok {
			s.log.Warn("no backend reachable; closing client", "rule", rt.Name, "client", c.client.RemoteAddr().String(), "err", err, "suppressed", suppressed)
		}
		c.client.SetLinger(0)
		return
	}
	defer b.Release()
	if !c.setBackend(b, bc) {
		bc.Close()
		return
	}
	up, down, how := relay(c.client, bc, rt.IdleTimeout)
	if rt.AccessLog {
		s.log.Info("connection closed", "rule", rt.Name, "client", c.client.RemoteAddr().String(),
			"backend", b.ID, "backend_addr", b.Address, "bytes_in", up, "bytes_out", down,
			"duration", time.Since(c.start).Round(time.Microsecond), "end", how)
	}
}

// dialBackend picks a backend and dials it; a failed dial tries the next one
// the router offers, at most once per backend. The returned backend has been
// Acquired: the caller must Release it.
func dialBackend(rt *Route, req *router.Request, log *slog.Logger) (*backend.Backend, *net.TCPConn, error) {
	d := net.Dialer{Timeout: rt.ConnectTimeout}
	var lastErr error
	for range rt.Backends {
		b, err := rt.Router.Pick(req)
		if err != nil {
			if lastErr != nil {
				return nil, nil, lastErr
			}
			return nil, nil, err
		}
		b.Acquire()
		c, err := d.DialContext(context.Background(), "tcp", b.Address)
		if err == nil {
			return b, c.(*net.TCPConn), nil
		}
		b.Release()
		req.Tried(b)
		lastErr = err
		log.Warn("backend dial failed; trying another", "rule", rt.Name, "backend", b.ID, "err", err)
	}
	if lastErr == nil {
		lastErr = router.NoBackend(len(rt.Backends))
	}
	return nil, nil, lastErr
}

// relay copies both ways until both directions end, propagating half-close.
// An error on either side closes both. It returns the bytes sent to the
// backend (up) and to the client (down) and how the connection ended.
func relay(client, server *net.TCPConn, idle time.Duration) (up, down int64, how string) {
	a := &activity{idle: idle}
	a.arm(client, server)
	type result struct {
		n   int64
		err error
	}
	upc := make(chan result, 1)
	go func() {
		n, err := copyConn(server, client, a)
		if err == nil {
			server.CloseWrite()
		} else {
			client.Close()
			server.Close()
		}
		upc <- result{n, err}
	}()
	down, derr := copyConn(client, server, a)
	if derr == nil {
		client.CloseWrite()
	} else {
		client.Close()
		server.Close()
	}
	r := <-upc
	server.Close()
	return r.n, down, endReason(r.err, derr)
}

func endReason(upErr, downErr error) string {
	for _, e := range []struct {
		err  error
		side string
	}{{upErr, "client"}, {downErr, "backend"}} {
		switch {
		case e.err == nil, errors.Is(e.err, net.ErrClosed):
		case errors.Is(e.err, os.ErrDeadlineExceeded):
			return "idle_timeout"
		default:
			return e.side + "_error"
		}
	}
	if upErr != nil || downErr != nil {
		return "closed"
	}
	return "eof"
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}

// copyConn copies src to dst: splice on Linux, a pooled buffer elsewhere.
func copyConn(dst, src *net.TCPConn, a *activity) (int64, error) {
	return spliceCopy(dst, src, a)
}
