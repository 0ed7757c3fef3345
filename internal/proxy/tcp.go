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
	"syscall"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// TCPListener accepts client connections on one address and serves them
// with the first route of its current table.
type TCPListener struct {
	srv    *Server
	ln     *net.TCPListener
	routes atomic.Pointer[routeTable]
	closed atomic.Bool
}

// ListenTCP binds addr and starts accepting. Routes must be set with
// SetRoutes; until then connections are closed as unmatched.
func (s *Server) ListenTCP(addr string, routes []*Route) (*TCPListener, error) {
	// No TCP keepalive on accepted connections (nor on backend dials): Go
	// turns it on by default at the cost of four setsockopt calls per
	// socket; idle_timeout is what ends dead connections here, as HAProxy's
	// timeouts do (its clitcpka/srvtcpka are off by default too).
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
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
func (l *TCPListener) SetRoutes(routes []*Route) { l.routes.Store(newRouteTable(routes)) }

// Routes returns the current route table.
func (l *TCPListener) Routes() []*Route { return l.routes.Load().routes }

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
			// EMFILE, ENFILE, ENOBUFS…: back off instead of spinning, and
			// say so once per episode (exhaust.go), not once per attempt.
			backoff = nextBackoff(backoff)
			if resourceError(err) {
				s.exhaust.failed(s.log, false, l.Addr().String(), err)
			} else if !failing {
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
		if max := s.maxConns.Load(); !s.admitConn(max) {
			s.Stats.Rejected.Add(1)
			if rs := l.Routes(); len(rs) > 0 && rs[0].Observer != nil {
				o := rs[0].Observer
				o.ConnOpened()
				o.Rejected(ReasonMaxConnections)
				o.ConnClosed(0)
			}
			c.SetLinger(0)
			c.Close()
			s.log.Debug("connection rejected: max_connections reached", "listener", l.Addr().String(), "max_connections", max)
			continue
		}
		tc := &tcpConn{l: l, client: c, start: time.Now()}
		if !s.track(tc) {
			s.Stats.Active.Add(-1)
			c.Close()
			return
		}
		s.wg.Add(1)
		go l.handle(tc)
	}
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

// tcpConn is one proxied connection.
type tcpConn struct {
	l       *TCPListener
	client  *net.TCPConn
	start   time.Time
	mu      sync.Mutex
	backend *net.TCPConn
	be      *backend.Backend
	forced  bool

	// Set before the two copiers start; read by the last one to finish.
	rt      *Route
	peer    string // the client as logged: the PROXY header's source when trusted
	release func() // access control slot
	prefix  int64  // client bytes read before routing and replayed
	act     activity
	pending atomic.Int32 // copiers still running
	// finToClient and finToBackend are set just before the copies send
	// their FIN (CloseWrite), so that resetByPeer can tell a reset apart.
	finToClient, finToBackend atomic.Bool
	upN                       int64 // client to backend, as copied
	downN                     int64
	upErr                     error
	downErr                   error

	upM, downM meter // byte counting, set once the backend is connected

	// The sockets' RawConns, taken once per connection for the relay's
	// raw system calls (rawio_linux.go).
	clientRC, backendRC syscall.RawConn
	upC, downC          copier // spliceCopy's state, one per direction
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

func (c *tcpConn) isForced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.forced
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

// handle routes a new connection and connects it to a backend. On success
// it hands the connection to two fresh copier goroutines and returns, so the
// deep stack that routing and dialing grew is not kept for the connection's
// life (an idle proxied connection then costs two small stacks).
func (l *TCPListener) handle(c *tcpConn) {
	if !c.connect() {
		c.client.Close()
		c.l.srv.untrackDone(c)
		return
	}
	c.pending.Store(2)
	go c.pump(true)
	go c.pump(false)
}

// connect does everything before the relay: inspect and match, access
// control, dial (with retry elsewhere), the PROXY header and replay of the
// peeked bytes. It reports whether the relay should start; when it returns
// false it has already counted and logged why.
func (c *tcpConn) connect() bool {
	l := c.l
	s := l.srv
	table := l.routes.Load()
	if len(table.routes) == 0 {
		s.Stats.NoRoute.Add(1)
		s.observeUnrouted("tcp", ReasonNoRule)
		s.log.Debug("no rule matches connection; closing", "listener", l.Addr().String(), "client", c.client.RemoteAddr().String())
		return false
	}
	rt, ci, prefix, err := inspect(c.client, table)
	if err != nil || rt == nil {
		reason := ReasonNoRule
		switch {
		case errors.Is(err, ErrUntrustedProxy):
			reason = ReasonUntrustedProxy
		case errors.Is(err, ErrBadProxyHeader):
			reason = ReasonBadProxyHeader
		case err != nil:
			reason = ReasonClientError
		}
		s.Stats.NoRoute.Add(1)
		s.observeUnrouted("tcp", reason)
		s.log.Debug("connection closed before routing", "listener", l.Addr().String(), "client", ci.Client.String(), "reason", reason, "err", err)
		c.client.SetLinger(0)
		return false
	}
	c.peer = ci.Client.String()
	o := rt.Observer
	if o != nil {
		o.ConnOpened()
	}
	closed := func() {
		if o != nil {
			o.ConnClosed(time.Since(c.start))
		}
	}
	release, reason := rt.Access.Admit(ci.Client.Addr())
	if reason != ReasonNone {
		s.Stats.Rejected.Add(1)
		if o != nil {
			o.Rejected(reason)
		}
		closed()
		s.log.Debug("connection refused by access control", "rule", rt.Name, "client", ci.Client.String(), "reason", reason)
		c.client.SetLinger(0)
		return false
	}
	req := router.Request{Client: ci.Client, SNI: ci.SNI}
	b, bc, err := dialBackend(rt, &req, s.log, &s.exhaust, c.isForced)
	if err != nil {
		release()
		s.Stats.NoBackend.Add(1)
		if o != nil {
			if errors.Is(err, router.ErrNoBackend) {
				o.Rejected(ReasonNoBackend)
			} else {
				o.Rejected(ReasonConnectFailed)
			}
		}
		closed()
		if ok, suppressed := s.noBackendLog.allow(time.Second); ok {
			s.log.Warn("no backend reachable; closing client", "rule", rt.Name, "client", c.peer, "err", err, "suppressed", suppressed)
		}
		if rt.AccessLog { // every closed connection, including this one
			s.log.Info("connection closed", "rule", rt.Name, "client", c.peer,
				"backend", "", "backend_addr", "", "bytes_in", int64(0), "bytes_out", int64(0),
				"duration", time.Since(c.start).Round(time.Microsecond), "end", "no_backend")
		}
		c.client.SetLinger(0)
		return false
	}
	fail := func() bool {
		bc.Close()
		b.Release()
		release()
		closed()
		return false
	}
	if !c.setBackend(b, bc) {
		return fail()
	}
	if c.clientRC, err = c.client.SyscallConn(); err == nil {
		c.backendRC, err = bc.SyscallConn()
	}
	if err != nil {
		return fail()
	}
	c.upM, c.downM = meter{be: b, obs: o}, meter{be: b, obs: o, out: true}
	if err := writeFirst(bc, rt, ci, c.client.LocalAddr(), prefix, &c.upM); err != nil {
		s.log.Debug("writing to the backend failed", "rule", rt.Name, "backend", b.ID, "err", err)
		return fail()
	}
	c.rt, c.release, c.prefix = rt, release, int64(len(prefix))
	c.act = activity{idle: rt.IdleTimeout, bufSize: rt.BufferSize}
	c.act.arm(c.client, bc)
	return true
}

// pump copies one direction. When its source ends cleanly it half-closes
// the destination (CloseWrite), so the other direction runs on; an error
// closes both sides. The last pump to finish ends the connection.
func (c *tcpConn) pump(up bool) {
	var err error
	if up {
		c.upN, c.upErr = spliceCopy(c.backend, c.client, c.backendRC, c.clientRC, &c.upC, &c.act, &c.upM)
		if c.upErr == nil && resetByPeer(c.clientRC, &c.finToClient) {
			c.upErr = errPeerReset // the down copy noticed the reset first
		}
		if err = c.upErr; err == nil {
			c.finToBackend.Store(true)
			closeWrite(c.backendRC)
		}
	} else {
		c.downN, c.downErr = spliceCopy(c.client, c.backend, c.clientRC, c.backendRC, &c.downC, &c.act, &c.downM)
		if c.downErr == nil && resetByPeer(c.backendRC, &c.finToBackend) {
			c.downErr = errPeerReset // the up copy noticed the reset first
		}
		if err = c.downErr; err == nil {
			c.finToClient.Store(true)
			closeWrite(c.clientRC)
		}
	}
	if err != nil {
		if abortive(err) {
			// A reset or I/O error on one side is passed on as a reset, so
			// the other peer sees a broken stream as broken (ECONNRESET),
			// never as an orderly end of a truncated one.
			c.client.SetLinger(0)
			c.backend.SetLinger(0)
		}
		c.client.Close()
		c.backend.Close()
	}
	if c.pending.Add(-1) == 0 {
		c.finish()
	}
}

// finish accounts for a relayed connection once both directions ended.
func (c *tcpConn) finish() {
	s, rt, b := c.l.srv, c.rt, c.be
	c.client.Close()
	c.backend.Close()
	b.Release()
	c.release()
	up, down := c.upN+c.prefix, c.downN
	how := endReason(c.upErr, c.downErr)
	if o := rt.Observer; o != nil {
		o.RequestDone(b, time.Since(c.start), up, down)
		if eo, ok := o.(EndObserver); ok {
			eo.Ended(b, how)
		}
		o.ConnClosed(time.Since(c.start))
	}
	if rt.AccessLog {
		s.log.Info("connection closed", "rule", rt.Name, "client", c.peer,
			"backend", b.ID, "backend_addr", b.Address, "bytes_in", up, "bytes_out", down,
			"duration", time.Since(c.start).Round(time.Microsecond), "end", how)
	}
	s.untrackDone(c)
}

// dialBackend picks a backend and dials it; a failed dial tries the next one
// the router offers, at most once per backend. A dial that failed for want
// of descriptors here (exhaust.go) is not the backend's fault: it waits and
// dials the same backend again until connection_timeout, unless gone says
// the connection was closed meanwhile. The returned backend has been
// Acquired: the caller must Release it.
func dialBackend(rt *Route, req *router.Request, log *slog.Logger, ex *exhaustion, gone func() bool) (*backend.Backend, *net.TCPConn, error) {
	d := net.Dialer{Timeout: rt.ConnectTimeout, KeepAlive: -1}
	o := rt.Observer
	var lastErr error
	for range rt.Backends {
		b, err := rt.Router.Pick(req)
		if err != nil {
			if lastErr != nil {
				return nil, nil, lastErr
			}
			if o != nil {
				o.PickFailed(err)
			}
			return nil, nil, err
		}
		var t0 time.Time
		if o != nil {
			o.Picked(b)
			t0 = time.Now()
		}
		b.Acquire()
		c, err := d.DialContext(context.Background(), "tcp", b.Address)
		for backoff, start := time.Duration(0), time.Now(); err != nil && resourceError(err); {
			ex.failed(log, true, rt.Name+"/"+b.ID, err)
			if backoff = nextBackoff(backoff); time.Since(start)+backoff >= rt.ConnectTimeout || gone() {
				break
			}
			time.Sleep(backoff)
			d.Timeout = rt.ConnectTimeout - time.Since(start)
			c, err = d.DialContext(context.Background(), "tcp", b.Address)
		}
		if err != nil && resourceError(err) {
			b.Release() // still short of descriptors: not the backend's fault
			return nil, nil, err
		}
		if o != nil {
			o.Connected(b, time.Since(t0), err)
		}
		b.Health().ReportDial(err) // passive health detection
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

// abortive reports whether a copy error is a peer's reset or an I/O error,
// rather than the proxy closing the connection or the idle timeout.
func abortive(err error) bool {
	return err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded)
}

// dstError marks an error of copyConn that came from writing to its
// destination rather than reading its source, so that endReason blames the
// right side: the client→backend copy failing to write means the backend
// failed (a reset mid-stream), not the client.
type dstError struct{ error }

func (e dstError) Unwrap() error { return e.error }

func endReason(upErr, downErr error) string {
	for _, e := range []struct {
		err        error
		side, peer string // whose fault an error reading (side) or writing (peer) is
	}{{upErr, "client", "backend"}, {downErr, "backend", "client"}} {
		switch {
		case e.err == nil, errors.Is(e.err, net.ErrClosed):
		case errors.Is(e.err, os.ErrDeadlineExceeded):
			return "idle_timeout"
		case errors.As(e.err, new(dstError)):
			return e.peer + "_error"
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
