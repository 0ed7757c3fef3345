package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// TLS on the data path. A route that terminates TLS (Route.TLS) or dials
// its backends with TLS (Route.BackendTLS) is served by the goroutine
// engine, whichever engine accepted the connection: a handshake and the
// record layer are work for a goroutine and crypto/tls, not for an event
// loop, and plain TCP keeps the epoll engine's splice path untouched. The
// epoll engine hands such a connection over once it is routed and admitted
// (handOff in tcp_dial_linux.go).

// Terminator runs the server side of a TLS handshake on a client
// connection (tlsconf.Server): the plaintext is relayed through the
// returned connection. On failure conn is left open for the caller.
type Terminator interface {
	Handshake(ctx context.Context, conn net.Conn) (*tls.Conn, error)
}

// tlsRoute reports whether rt's connections need TLS on either side.
func (rt *Route) tlsRoute() bool { return rt.TLS != nil || rt.BackendTLS != nil }

// backendTLS is the TLS client config for backend b of rt; nil: plain TCP.
func (rt *Route) backendTLS(b *backend.Backend) *tls.Config {
	if rt.BackendTLS == nil {
		return nil
	}
	for i, x := range rt.Backends {
		if x == b {
			return rt.BackendTLS[i]
		}
	}
	return nil
}

// stream is one side of a relayed connection: a TCP socket, or a TLS
// connection over one.
type stream interface {
	net.Conn
	CloseWrite() error
}

// resetOnClose makes s's socket send a reset when it is closed.
func resetOnClose(s stream) {
	switch c := s.(type) {
	case *net.TCPConn:
		c.SetLinger(0)
	case *tls.Conn:
		if tc, ok := c.NetConn().(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
	}
}

// replayConn is a client socket whose first bytes, read while inspecting,
// are read again first: the ClientHello the matchers saw is the one the
// handshake reads.
type replayConn struct {
	*net.TCPConn
	first []byte
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.first) > 0 {
		n := copy(p, r.first)
		r.first = r.first[n:]
		return n, nil
	}
	return r.TCPConn.Read(p)
}

// terminate runs the route's TLS handshake with the client (its first
// bytes replayed). A failed handshake is counted (the route's
// tls_handshake rejection; the handshake metrics count it too), logged at
// debug with its reason, and ends the connection before any backend is
// dialled; ok is false then, the connection accounted for.
func (c *goConn) terminate(first []byte, release func()) (*tls.Conn, bool) {
	s, rt := c.srv, c.rt
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.mu.Lock()
	c.cancel = cancel
	if c.cut != EndEOF {
		cancel()
	}
	c.mu.Unlock()
	tc, err := rt.TLS.Handshake(ctx, &replayConn{TCPConn: c.c, first: first})
	c.mu.Lock()
	c.cancel = nil
	c.mu.Unlock()
	if err == nil {
		return tc, true
	}
	var chal interface{ ACMEChallenge() bool }
	if errors.As(err, &chal) && chal.ACMEChallenge() {
		// An ACME TLS-ALPN-01 validation, answered by the handshake itself:
		// nothing to relay, no backend to dial.
		release()
		if o := rt.Observer; o != nil {
			o.ConnClosed(c.idx, nil, EndEOF, time.Since(c.Start), 0, 0)
		}
		s.log.Debug("acme tls-alpn-01 challenge answered", "conn", c.ID, "rule", rt.Name, "client", c.ci.Client.String())
		c.c.Close()
		return nil, false
	}
	release()
	s.Stats.Rejected.Add(1)
	if o := rt.Observer; o != nil {
		o.Rejected(c.idx, ReasonTLSHandshake)
		o.ConnClosed(c.idx, nil, EndClientError, time.Since(c.Start), 0, 0)
	}
	s.log.Debug("tls handshake failed; closing client", "conn", c.ID, "rule", rt.Name, "client", c.ci.Client.String(), "err", err)
	c.reset()
	return nil, false
}

// originate runs the TLS handshake with backend b over bc when the route
// dials b with TLS, within connect_timeout; it returns bc itself
// otherwise. A failed handshake is the backend's dial failing.
func (c *goConn) originate(ctx context.Context, b *backend.Backend, bc *net.TCPConn) (stream, error) {
	cfg := c.rt.backendTLS(b)
	if cfg == nil {
		return bc, nil
	}
	if d := c.rt.ConnectTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	tc := tls.Client(bc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, &net.OpError{Op: "tls handshake", Net: "tcp", Addr: bc.RemoteAddr(), Err: err}
	}
	return tc, nil
}

// adoptTLS takes over a connection the epoll engine accepted, routed to rt
// and admitted (release is its access slot, its observer opened) and
// serves it on the calling goroutine (the hand-off's, tcp_dial_linux.go),
// as the goroutine engine does, counted in the Server's Active and wg as
// before; idx is the accepting loop's, for its byte counts.
func (s *Server) adoptTLS(nc *net.TCPConn, rt *Route, ci ConnInfo, id ConnIdent, local netip.AddrPort, idx int, first []byte, release func()) {
	gc := &goConn{srv: s, rot: &s.tlsRot, c: nc, ConnIdent: id, ci: ci, rt: rt, idx: idx}
	s.connMu.Lock()
	s.conns[gc] = struct{}{}
	s.connMu.Unlock()
	defer gc.untrack()
	gc.routed(local, first, release)
}

// A terminated stream is read a TLS record at a time: crypto/tls returns
// at most one record's plaintext per Read.
const (
	tlsRecord     = 16 << 10        // the largest record's plaintext
	tlsRecordWire = tlsRecord + 256 // bounds a record on the wire: header, padding, tag
	tlsGather     = 256 << 10       // the most one gathered write carries
)

// tlsSocket is the TCP socket under tc (a replayed client socket's too);
// nil when it has none.
func tlsSocket(tc *tls.Conn) *net.TCPConn {
	switch c := tc.NetConn().(type) {
	case *net.TCPConn:
		return c
	case *replayConn:
		return c.TCPConn
	}
	return nil
}

// gatherRecords follows a record just read from tc (in first) with the
// records its socket raw (tlsSocket(tc); nil: no gathering) already holds
// whole, so that a burst reaches the backend in a few large writes instead
// of one per record. It reads only what the socket's queue proves is there
// (one record fewer, for a control record such as a key update), so it
// never waits. bp, when not nil, holds out and goes back to the pool after
// the write.
func gatherRecords(tc *tls.Conn, raw *net.TCPConn, first []byte) (out []byte, bp *[]byte, err error) {
	if raw == nil {
		return first, nil, nil
	}
	k := queued(raw)/tlsRecordWire - 1
	if k <= 0 {
		return first, nil, nil
	}
	bp = getBuf(tlsGather)
	out = append((*bp)[:0], first...)
	for ; k > 0 && len(out)+tlsRecord <= cap(out); k-- {
		n, rerr := tc.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if rerr != nil {
			return out, bp, rerr
		}
	}
	return out, bp, nil
}
