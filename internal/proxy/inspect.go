package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/peek"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
	"github.com/pires/go-proxyproto"
)

// routeTable is a TCP listener's Table as published by SetTable, with
// what its matchers and routers need peeked, worked out once per table
// rather than once per connection.
type routeTable struct {
	opts   ListenOptions
	routes []*Route
	need   Need
}

func newRouteTable(tb Table) *routeTable {
	t := &routeTable{opts: tb.Options, routes: tb.Routes}
	for _, r := range tb.Routes {
		t.need |= routeNeed(r)
	}
	return t
}

// routeNeed is what a listener must peek at for r: what its matcher and
// its router read.
func routeNeed(r *Route) Need {
	need := peekNeed(router.NeedsOf(r.Router))
	if r.Match != nil {
		need |= r.Match.Needs()
	}
	return need
}

// peekNeed is what the listener must peek at for a router's needs.
func peekNeed(n router.Needs) Need {
	var need Need
	if n&(router.NeedSNI|router.NeedALPN) != 0 {
		need |= NeedTLS
	}
	if n&router.NeedHost != 0 {
		need |= NeedHTTP
	}
	return need
}

// Errors of inspection, counted as rejection reasons.
var (
	ErrUntrustedProxy = errors.New("PROXY header from an untrusted peer")
	ErrBadProxyHeader = errors.New("malformed PROXY header")
)

// inspect prepares a new connection for routing: it reads a PROXY header when
// the listener accepts one, then — only when some route's matcher needs it —
// peeks at the TLS ClientHello or HTTP request head, waiting at most
// PeekTimeout. It returns the first route that matches (nil if none), what
// the matchers saw, and the client bytes it read, which the caller must
// replay to the backend before splicing the rest.
func inspect(c *net.TCPConn, table *routeTable) (*Route, ConnInfo, []byte, error) {
	ci := ConnInfo{Client: addrPort(c.RemoteAddr())}
	routes, need := table.routes, table.need
	if len(routes) == 0 {
		return nil, ci, nil, nil
	}
	opts := table.opts
	if !opts.AcceptProxy && need == 0 {
		return firstMatch(routes, &ci), ci, nil, nil
	}
	timeout := opts.PeekTimeout
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	deadline := time.Now().Add(timeout)
	c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})

	var buf []byte
	if opts.AcceptProxy {
		if !ContainsAddr(opts.Trusted, ci.Client.Addr()) {
			return nil, ci, nil, ErrUntrustedProxy
		}
		client, rest, err := readProxyHeader(c)
		if err != nil {
			return nil, ci, nil, err
		}
		if client.IsValid() {
			ci.Client = client
		}
		buf = rest
	}
	if need != 0 {
		var err error
		buf, err = peekFor(c, buf, need, &ci)
		if err != nil {
			return nil, ci, buf, err
		}
	}
	return firstMatch(routes, &ci), ci, buf, nil
}

// peekFor reads until every parser in need has decided, the peek timeout
// passes (the deadline is already set), or the size bound is reached. A
// timeout or an unparseable message is not an error: the matchers that
// needed it simply do not match. EOF or a reset is.
func peekFor(c *net.TCPConn, buf []byte, need Need, ci *ConnInfo) ([]byte, error) {
	tls, http := need&NeedTLS != 0, need&NeedHTTP != 0
	decide := func() {
		if tls {
			if h, err := peek.ClientHello(buf); !errors.Is(err, peek.ErrNeedMore) {
				tls = false
				if err == nil {
					ci.SNI, ci.ALPN = h.ServerName, h.ALPN
				}
			}
		}
		if http {
			if host, err := peek.HTTPHost(buf); !errors.Is(err, peek.ErrNeedMore) {
				http = false
				if err == nil {
					ci.Host = host
				}
			}
		}
	}
	decide()
	tmp := make([]byte, 2048)
	for (tls || http) && len(buf) < peek.MaxHelloSize {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return buf, nil // silent or slow client: route on what we have
			}
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				decide()
				return buf, nil // client sent everything and half-closed
			}
			return buf, err
		}
		decide()
	}
	return buf, nil
}

// readProxyHeader reads a PROXY protocol v1 or v2 header from r. It returns
// the client address the header carries (invalid for a LOCAL header, which
// health checkers of upstream balancers send) and the bytes read past the
// header, which belong to the stream.
func readProxyHeader(r io.Reader) (netip.AddrPort, []byte, error) {
	br := bufio.NewReaderSize(r, 512)
	h, err := proxyproto.Read(br)
	if err != nil {
		return netip.AddrPort{}, nil, fmt.Errorf("%w: %v", ErrBadProxyHeader, err)
	}
	var client netip.AddrPort
	if src, _, ok := h.TCPAddrs(); ok && h.Command.IsProxy() {
		client = src.AddrPort()
	}
	var rest []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		rest = append(rest, b...)
	}
	return client, rest, nil
}

func firstMatch(routes []*Route, ci *ConnInfo) *Route {
	for _, r := range routes {
		if r.Match == nil || r.Match.Match(ci) {
			return r
		}
	}
	return nil
}

// proxyHeader formats a PROXY protocol header (version 1 or 2) telling the
// backend that client connected to local.
func proxyHeader(version int, client netip.AddrPort, local net.Addr) ([]byte, error) {
	src := net.TCPAddrFromAddrPort(client)
	return proxyproto.HeaderProxyFromAddrs(byte(version), src, local).Format()
}
