package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// The goroutine engine's TCP path.
//
// A listener has one goroutine that accepts; each connection has one
// goroutine that inspects, routes, dials and relays client to backend, and
// a second one, started once the backend answers, that relays backend to
// client. A direction reads into a buffer of buffer_size bytes and writes
// what it read at once, so the bytes of a request or a reply are counted as
// they move; after a read that fills the buffer, what the socket has queued
// beyond another buffer's worth goes by (*net.TCPConn).ReadFrom, which the
// net package runs as splice(2) on Linux, exactly as many bytes as are
// queued so that no pipe is held while a connection waits. The net
// package's deadlines carry idle_timeout and connect_timeout.

var _ Listener = (*goTCPListener)(nil)

// bulkChunk is the most a direction moves by one ReadFrom before it counts
// the bytes.
const bulkChunk = 1 << 20

type goTCPListener struct {
	srv    *Server
	ln     *net.TCPListener
	addr   net.Addr
	local  netip.AddrPort // addr, for router.Request
	routes atomic.Pointer[routeTable]
	rot    atomic.Uint32 // rotation over a resolved backend's addresses
	ids    atomic.Uint32 // numbers connections, for their per-worker byte counts

	closed atomic.Bool
	stop   chan struct{} // closed by Close
	done   chan struct{} // closed when the accept goroutine has left
}

// listenTCPGo binds addr and starts accepting on a goroutine.
func (s *Server) listenTCPGo(addr string, t Table) (*goTCPListener, error) {
	ln, err := s.listenTCP(addr) // or the socket an upgrade handed over (inherit.go)
	if err != nil {
		return nil, err
	}
	l := &goTCPListener{srv: s, ln: ln.(*net.TCPListener), addr: ln.Addr(), local: addrPort(ln.Addr()),
		stop: make(chan struct{}), done: make(chan struct{})}
	l.SetTable(t)
	if !s.register(l, nil) { // counted in wg until Close, as the epoll engine's listener
		ln.Close()
		return nil, errShutdown
	}
	go l.serve()
	return l, nil
}

// Addr is the bound address.
func (l *goTCPListener) Addr() net.Addr { return l.addr }

// SetTable publishes a new table for new connections.
func (l *goTCPListener) SetTable(t Table) { l.routes.Store(newRouteTable(t)) }

// Routes returns the current table's routes.
func (l *goTCPListener) Routes() []*Route { return l.routes.Load().routes }

// Close stops accepting. Connections already accepted run on.
func (l *goTCPListener) Close() {
	if l.closed.Swap(true) {
		return
	}
	l.srv.unregister(l)
	close(l.stop)
	l.ln.Close()
	<-l.done
	l.srv.wg.Done()
}

// wait waits d, or until Close; false when the listener closed.
func (l *goTCPListener) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.stop:
		return false
	}
}

// serve accepts connections until Close. Failures back off as in the epoll
// engine (exhaust.go): 5 ms doubling to 1 s, logged once per episode.
func (l *goTCPListener) serve() {
	defer close(l.done)
	s, where := l.srv, l.addr.String()
	var backoff time.Duration
	failing := false
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			if resourceError(err) {
				s.exhaust.failed(s.log, false, where, err)
			} else if !failing {
				s.log.Error("accept failed; backing off until it succeeds", "listener", where, "err", err)
				failing = true
			}
			backoff = nextBackoff(backoff)
			if !l.wait(backoff) {
				return
			}
			continue
		}
		if failing {
			s.log.Info("accept recovered", "listener", where)
			failing = false
		}
		backoff = 0
		// At the descriptor budget (fdbudget.go) the client waits, as it
		// would in the backlog under the epoll engine, until there is room.
		for refused := false; !s.fdRoom(2); {
			if !refused {
				s.refuse(RefusedAccept, where)
				refused = true
			}
			backoff = nextBackoff(backoff)
			if !l.wait(backoff) {
				c.Close()
				return
			}
		}
		backoff = 0
		s.Stats.Accepted.Add(1)
		// A client accepted as closing began (the listener's Close has
		// not reached its socket yet) is served, not dropped: the
		// listener's count in wg keeps Shutdown waiting for it.
		if !s.admitConn() {
			s.tcpMaxConnections(l.routes.Load().opts.Observer, where, s.maxConns.Load())
			c.SetLinger(0)
			c.Close()
			continue
		}
		s.wg.Add(1)
		gc := &goConn{l: l, srv: s, rot: &l.rot, c: c, ConnIdent: s.newIdent(time.Now()), idx: int(l.ids.Add(1)) % s.Workers()}
		gc.ci.Client = addrPort(c.RemoteAddr())
		s.connMu.Lock()
		s.conns[gc] = struct{}{}
		s.connMu.Unlock()
		go gc.serve()
	}
}

// goConn is one proxied TCP connection of the goroutine engine.
type goConn struct {
	l         *goTCPListener // nil for a connection the epoll engine handed over (tls.go)
	srv       *Server
	rot       *atomic.Uint32 // rotation over a resolved backend's addresses (the listener's)
	c         *net.TCPConn
	ConnIdent     // its id and when it was accepted (conns.go)
	idx       int // AddBytesIn's worker index

	mu     sync.Mutex // guards what forceClose and the admin API's list touch
	ci     ConnInfo   // written under mu (the list reads it); its own goroutines read it without
	rt     *Route     // likewise
	cut    End        // why forceClose ended it (EndEOF: not forced)
	be     *backend.Backend
	bc     *net.TCPConn
	cancel context.CancelFunc // ends a dial or lookup in progress

	last     atomic.Int64 // unix ns of the last byte moved either way
	up, down atomic.Int64 // bytes moved; each added to by its direction's goroutine, read by the access log's progress records and the admin API's list
}

func (c *goConn) forced() End {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cut
}

// forceClose ends the connection now: its backend's drain_timeout is over
// (EndDrained) or the shutdown timeout (EndShutdown). Whatever the
// connection's goroutines wait on fails, and they account for the end.
func (c *goConn) forceClose(end End) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut == EndEOF {
		c.cut = end
	}
	if c.cancel != nil {
		c.cancel()
	}
	c.c.Close()
	if c.bc != nil {
		c.bc.Close()
	}
}

func (c *goConn) untrack() {
	s := c.srv
	s.connMu.Lock()
	delete(s.conns, c)
	s.connMu.Unlock()
	s.Stats.Active.Add(-1)
	s.slots.give(1)
	s.wg.Done()
}

// reset closes the client socket with a reset.
func (c *goConn) reset() {
	c.c.SetLinger(0)
	c.c.Close()
}

func (c *goConn) serve() {
	defer c.untrack()
	s, l := c.srv, c.l
	table := l.routes.Load()
	if len(table.routes) == 0 {
		s.tcpNoRoutes(l.addr.String(), table.opts.Observer, c.ID, c.ci.Client)
		c.c.Close()
		return
	}
	rt, ci, first, err := inspect(c.c, table)
	c.mu.Lock()
	c.ci = ci
	c.mu.Unlock()
	if c.forced() != EndEOF {
		c.c.Close()
		return
	}
	if err != nil || rt == nil {
		s.tcpUnrouted(l.addr.String(), table.opts.Observer, c.ID, c.ci.Client, inspectReason(err), err)
		c.reset()
		return
	}
	c.mu.Lock()
	c.rt = rt
	c.mu.Unlock()
	release, ok := s.admitTCP(c.idx, rt, c.ci.Client, c.ConnIdent)
	if !ok {
		c.reset()
		return
	}
	c.routed(l.local, first, release)
}

// routed serves a connection admitted to c.rt, whose first bytes (read
// while inspecting) are first: TLS termination when the route has it,
// then the dial and the relay.
func (c *goConn) routed(local netip.AddrPort, first []byte, release func()) {
	s, rt := c.srv, c.rt
	req := s.tcpRequest(c.ID, rt, &c.ci, local, func() (netip.AddrPort, bool) {
		ap := addrPort(c.c.LocalAddr())
		return ap, ap.IsValid()
	})
	var client stream = c.c
	if rt.TLS != nil {
		tc, ok := c.terminate(first, release) // (tls.go)
		if !ok {
			return
		}
		client, first = tc, nil
	}
	b, bc, err := c.dial(&req)
	switch {
	case bc != nil:
		c.relay(b, client, bc, first, release)
	case err == nil: // drained or shut down while dialling
		release()
		if o := rt.Observer; o != nil {
			o.ConnClosed(c.idx, nil, c.forced(), time.Since(c.Start), 0, 0)
		}
		c.c.Close()
	default:
		release()
		s.tcpNoBackend(c.idx, rt, c.ci.Client, c.ConnIdent, err)
		c.reset()
	}
}

// errGaveUp marks a dial that failed for want of local resources until
// connect_timeout: not the backend's fault, so it is not counted against it.
type errGaveUp struct{ error }

func (e errGaveUp) Unwrap() error { return e.error }

// dial picks a backend and connects to it; a failed dial tries the next one
// the router offers, at most once per backend. It returns the backend and
// its connection; no connection and a nil error mean the connection was
// forced closed meanwhile.
func (c *goConn) dial(req *router.Request) (*backend.Backend, stream, error) {
	s, rt := c.srv, c.rt
	o := rt.Observer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.mu.Lock()
	c.cancel = cancel
	if c.cut != EndEOF {
		cancel()
	}
	c.mu.Unlock()
	var lastErr error
	for tries := 0; tries < len(rt.Backends); {
		tries++
		b, err := rt.Router.Pick(req)
		if err != nil {
			if lastErr != nil {
				err = lastErr
			} else if o != nil {
				o.PickFailed(c.idx, err)
			}
			return nil, nil, err
		}
		if o != nil {
			o.Picked(c.idx, b)
		}
		b.Acquire(c.idx)
		c.mu.Lock()
		c.be = b
		c.mu.Unlock()
		dialT0 := time.Now()
		bc, err := c.dialBackend(ctx, b, dialT0)
		var bs stream
		if bc != nil {
			c.mu.Lock()
			c.bc = bc // forceClose closes it, TLS handshake or not
			c.mu.Unlock()
			if bs, err = c.originate(ctx, b, bc); err != nil { // (tls.go)
				bc.Close()
				bc = nil
			}
		}
		c.mu.Lock()
		if bc != nil && c.cut == EndEOF {
			c.cancel = nil
			c.mu.Unlock()
			tcpConnected(c.idx, rt, b, dialT0)
			return b, bs, nil
		}
		c.bc = nil
		c.be = nil
		forced := c.cut != EndEOF
		c.mu.Unlock()
		if forced {
			if bc != nil {
				bc.Close()
			}
			b.Release(c.idx)
			return nil, nil, nil
		}
		if errors.As(err, new(errGaveUp)) {
			b.Release(c.idx)
			return nil, nil, err
		}
		s.tcpDialFailed(c.idx, rt, c.ID, req, tries, b, dialT0, err)
		lastErr = err
	}
	if lastErr == nil {
		lastErr = router.NoBackend(len(rt.Backends))
	}
	return nil, nil, lastErr
}

// dialBackend connects to b: to its address, or to each address its host
// name resolves to in turn, from the listener's rotation so that every
// address takes its share, until one answers.
func (c *goConn) dialBackend(ctx context.Context, b *backend.Backend, dialT0 time.Time) (*net.TCPConn, error) {
	tg := b.Target()
	if tg.Addr.IsValid() {
		return c.connect(ctx, b, tg.Addr, dialT0, dialT0)
	}
	res, ok := c.lookup(ctx, tg.Host)
	if !ok {
		return nil, ctx.Err()
	}
	if res.Err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: res.Err}
	}
	n := uint32(len(res.Addrs))
	start := c.rot.Add(1) - 1
	var err error
	for k := range n {
		ap := netip.AddrPortFrom(res.Addrs[(start+k)%n], tg.Port)
		t0 := dialT0 // each address has connect_timeout
		if k > 0 {
			t0 = time.Now()
		}
		bc, e := c.connect(ctx, b, ap, dialT0, t0)
		if bc != nil || ctx.Err() != nil || errors.As(e, new(errGaveUp)) {
			return bc, e
		}
		err = e
	}
	return nil, err
}

// lookup asks the resolver for host's addresses, waiting off any other
// connection's path when the cache has no answer; false: ctx ended first.
func (c *goConn) lookup(ctx context.Context, host string) (resolve.Result, bool) {
	rsv := c.srv.resolver
	if res, ok := rsv.Lookup(host, nil); ok {
		return res, true
	}
	ch := make(chan resolve.Result, 1)
	if res, ok := rsv.Lookup(host, func(r resolve.Result) { ch <- r }); ok {
		return res, true
	}
	select {
	case res := <-ch:
		return res, true
	case <-ctx.Done():
		return resolve.Result{}, false
	}
}

// connect dials ap within connect_timeout from t0. A failure for want of
// local resources (exhaust.go) dials again after a backoff, until
// connect_timeout from the backend's first attempt (dialT0).
func (c *goConn) connect(ctx context.Context, b *backend.Backend, ap netip.AddrPort, dialT0, t0 time.Time) (*net.TCPConn, error) {
	s, rt := c.srv, c.rt
	addr := netip.AddrPortFrom(resolve.NumericZone(ap.Addr()), ap.Port()).String() // no interface lookup for a zone
	var backoff time.Duration
	for {
		dctx, cancel := ctx, context.CancelFunc(func() {})
		if rt.ConnectTimeout > 0 {
			dctx, cancel = context.WithDeadline(ctx, t0.Add(rt.ConnectTimeout))
		}
		nc, err := (&net.Dialer{KeepAlive: -1}).DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil {
			return nc.(*net.TCPConn), nil
		}
		if ctx.Err() != nil || !resourceError(err) {
			return nil, err
		}
		s.exhaust.failed(s.log, true, rt.Name+"/"+b.ID, err)
		backoff = nextBackoff(backoff)
		if time.Since(dialT0)+backoff >= rt.ConnectTimeout {
			return nil, errGaveUp{err}
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		t0 = time.Now()
	}
}

// relay copies both ways until both directions ended, then accounts for
// the connection.
func (c *goConn) relay(b *backend.Backend, client, bc stream, first []byte, release func()) {
	s, rt := c.srv, c.rt
	c.last.Store(time.Now().UnixNano())
	var upErr, downErr error
	pend, skip, err := tcpPreamble(rt, c.ci.Client, c.c.LocalAddr(), first)
	if err != nil {
		s.log.Debug("writing to the backend failed", "conn", c.ID, "rule", rt.Name, "backend", b.ID, "err", err)
		upErr = dstError{err}
	} else if len(pend) > 0 {
		if _, err := c.write(b, &c.up, bc, pend, skip); err != nil {
			upErr = dstError{err}
		}
	}
	if upErr != nil {
		c.abort(bc, upErr)
	} else {
		done := make(chan struct{})
		go func() {
			downErr = c.pipe(b, &c.down, bc, client)
			close(done)
		}()
		upErr = c.pipe(b, &c.up, client, bc)
		<-done
	}
	client.Close()
	bc.Close()
	s.tcpFinished(c.idx, rt, b, c.ci.Client, c.ConnIdent, release, upErr, downErr, c.forced(), c.up.Load(), c.down.Load())
}

// abort ends both sides after an error in one direction: a reset or an
// I/O error is passed on as a reset, so the other peer sees a broken
// stream as broken, never as an orderly end of a truncated one.
func (c *goConn) abort(bc stream, err error) {
	if abortive(err) {
		c.c.SetLinger(0)
		resetOnClose(bc)
	}
	c.c.Close()
	bc.Close()
}

// pipe copies src to dst until src ends (then dst is sent a FIN and pipe
// returns nil) or fails. n is the direction's byte count.
func (c *goConn) pipe(b *backend.Backend, n *atomic.Int64, src, dst stream) (err error) {
	bc := dst
	if n == &c.down {
		bc = src
	}
	defer func() {
		if err != nil {
			c.abort(bc, err)
		}
	}()
	size := c.rt.BufferSize
	if size <= 0 {
		size = defaultBufSize
	}
	tsrc, fromTLS := src.(*tls.Conn)
	var tlsRaw *net.TCPConn // the socket under a TLS src, for gatherRecords
	if fromTLS {
		tlsRaw = tlsSocket(tsrc)
	}
	if _, toTLS := dst.(*tls.Conn); fromTLS || toTLS {
		size = max(size, tlsRecord) // a whole record per read and per write
	}
	st, sok := src.(*net.TCPConn)
	dt, dok := dst.(*net.TCPConn)
	spliceable := sok && dok // splice between plain sockets; TLS is copied
	bp := getBuf(size)
	defer putBuf(bp)
	buf := *bp
	idle := int64(c.rt.IdleTimeout)
	for {
		if idle > 0 {
			src.SetReadDeadline(time.Unix(0, c.last.Load()+idle))
		}
		r, rerr := src.Read(buf)
		if r > 0 {
			out, gp := buf[:r], (*[]byte)(nil)
			// Only a whole record hints at a burst: a short one (interactive
			// traffic) is written as it is, with no queue check.
			if fromTLS && rerr == nil && r == tlsRecord {
				out, gp, rerr = gatherRecords(tsrc, tlsRaw, out)
			}
			_, werr := c.write(b, n, dst, out, 0)
			if gp != nil {
				putBuf(gp)
			}
			if werr != nil {
				return dstError{werr}
			}
			if r == size && spliceable {
				if err := c.splice(b, n, st, dt, size); err != nil {
					return err
				}
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF):
			dst.CloseWrite()
			return nil
		case c.stillActive(rerr):
		default:
			return rerr
		}
	}
}

// splice moves what src has queued beyond a buffer's worth to dst by
// ReadFrom (splice(2) on Linux), exactly that many bytes at a time, so that
// it never waits for more data holding a pipe; false when nothing more is
// queued (back to reading into the buffer).
func (c *goConn) splice(b *backend.Backend, n *atomic.Int64, src, dst *net.TCPConn, size int) error {
	idle := int64(c.rt.IdleTimeout)
	lr := &io.LimitedReader{R: src}
	for {
		q := queued(src)
		if q < size {
			return nil
		}
		if idle > 0 {
			dst.SetWriteDeadline(time.Unix(0, c.last.Load()+idle))
		}
		lr.N = int64(min(q, bulkChunk))
		w, err := dst.ReadFrom(lr)
		c.moved(b, n, w)
		if err != nil {
			if c.stillActive(err) {
				continue
			}
			// ReadFrom does not say which side failed: a broken pipe is
			// the destination's, anything else is taken as the source's.
			if errors.Is(err, syscall.EPIPE) {
				return dstError{err}
			}
			return err
		}
	}
}

// write writes p to dst; its first skip bytes are not traffic (a PROXY
// header). A write that blocks past idle_timeout of no traffic either way
// fails.
func (c *goConn) write(b *backend.Backend, n *atomic.Int64, dst stream, p []byte, skip int) (int, error) {
	idle := int64(c.rt.IdleTimeout)
	total := 0
	for len(p) > 0 {
		if idle > 0 {
			dst.SetWriteDeadline(time.Unix(0, c.last.Load()+idle))
		}
		w, err := dst.Write(p)
		total += w
		counted := w
		if skip > 0 {
			k := min(skip, w)
			skip -= k
			counted -= k
		}
		c.moved(b, n, int64(counted))
		p = p[w:]
		if err != nil && !c.stillActive(err) {
			return total, err
		}
	}
	return total, nil
}

// stillActive reports whether err is a deadline that passed while the
// other direction moved bytes: then the connection is not idle and the
// wait goes on.
func (c *goConn) stillActive(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) || c.forced() != EndEOF {
		return false
	}
	return time.Now().UnixNano() < c.last.Load()+int64(c.rt.IdleTimeout)
}

// moved accounts k bytes written in direction n: the direction's count,
// the backend's, the route's metrics and the activity idle_timeout watches.
func (c *goConn) moved(b *backend.Backend, n *atomic.Int64, k int64) {
	if k <= 0 {
		return
	}
	c.last.Store(time.Now().UnixNano())
	n.Add(k)
	o := c.rt.Observer
	if n == &c.up {
		b.AddBytesIn(c.idx, k)
		if o != nil {
			o.BytesIn(c.idx, k)
		}
		return
	}
	b.AddBytesOut(c.idx, k)
	if o != nil {
		o.BytesOut(c.idx, k)
	}
}
