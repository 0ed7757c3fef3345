package proxy

import (
	"crypto/tls"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// seenRouter is a router that needs what it is told to and reports each
// Request it is given (copied, ALPN included) before picking its first
// usable backend.
type seenRouter struct {
	needs    router.Needs
	backends []*backend.Backend
	seen     chan router.Request
}

func (r *seenRouter) Needs() router.Needs { return r.needs }

func (r *seenRouter) Pick(req *router.Request) (*backend.Backend, error) {
	cp := *req
	cp.ALPN = slices.Clone(req.ALPN)
	r.seen <- cp
	for _, b := range r.backends {
		if req.Usable(b) {
			return b, nil
		}
	}
	return nil, router.NoBackend(len(r.backends))
}

// needsRoute is a route without a matcher whose router needs needs.
func needsRoute(t *testing.T, needs router.Needs, addr string) (*Route, *seenRouter) {
	t.Helper()
	rt := newRoute(t, "needs", addr)
	sr := &seenRouter{needs: needs, backends: rt.Backends, seen: make(chan router.Request, 4)}
	rt.Router = sr
	return rt, sr
}

func waitSeen(t *testing.T, sr *seenRouter) router.Request {
	t.Helper()
	select {
	case req := <-sr.seen:
		return req
	case <-time.After(deadline):
		t.Fatal("the router was never asked to pick")
	}
	return router.Request{}
}

// TestRouterNeedsHost: a route whose router needs the Host (and no matcher
// that does) makes its listener peek at the HTTP request head of a real
// connection; the router's Request carries the Host, the client and the
// local address, and the backend still receives every byte the client sent.
func TestRouterNeedsHost(t *testing.T) {
	s, _ := newTestServer(t)
	be := startBackend(t, echo)
	rt, sr := needsRoute(t, router.NeedHost, be.addr)
	addr := listen(t, s, rt)
	c := dial(t, addr)
	const head = "GET / HTTP/1.1\r\nHost: Shop.Example.COM:8080\r\nUser-Agent: test\r\n\r\n"
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	req := waitSeen(t, sr)
	if req.Host != "shop.example.com" {
		t.Errorf("Request.Host = %q, want shop.example.com", req.Host)
	}
	if want := netip.MustParseAddrPort(addr); req.Local != want {
		t.Errorf("Request.Local = %v, want the listener's %v", req.Local, want)
	}
	if want := c.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort(); req.Client != want {
		t.Errorf("Request.Client = %v, want %v", req.Client, want)
	}
	if req.SNI != "" || req.ALPN != nil {
		t.Errorf("SNI %q, ALPN %q from an HTTP request", req.SNI, req.ALPN)
	}
	c.SetReadDeadline(time.Now().Add(deadline))
	got := make([]byte, len(head))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != head {
		t.Fatalf("echoed %q (%v), want the request head the proxy peeked at", got, err)
	}
}

// TestRouterNeedsSNIAndALPN: a router needing the SNI and ALPN gets them
// from a real TLS ClientHello.
func TestRouterNeedsSNIAndALPN(t *testing.T) {
	s, _ := newTestServer(t)
	be := startBackend(t, sink)
	rt, sr := needsRoute(t, router.NeedSNI|router.NeedALPN, be.addr)
	c := dial(t, listen(t, s, rt))
	tc := tls.Client(c, &tls.Config{ServerName: "API.example.com", NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true})
	done := make(chan error, 1)
	go func() { done <- tc.Handshake() }() // never answered: ends when c closes
	req := waitSeen(t, sr)
	c.Close()
	<-done
	if req.SNI != "api.example.com" || !slices.Equal(req.ALPN, []string{"h2", "http/1.1"}) {
		t.Errorf("Request SNI %q, ALPN %q; want api.example.com, [h2 http/1.1]", req.SNI, req.ALPN)
	}
	if req.Host != "" {
		t.Errorf("Host %q from a ClientHello", req.Host)
	}
}

// TestRouterNeedsNothing: a router that needs nothing (and no matcher that
// does) is not given what the client sends: the listener does not peek.
func TestRouterNeedsNothing(t *testing.T) {
	s, _ := newTestServer(t)
	be := startBackend(t, echo)
	rt, sr := needsRoute(t, 0, be.addr)
	c := dial(t, listen(t, s, rt))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if req := waitSeen(t, sr); req.Host != "" || !req.Local.IsValid() || !req.Client.IsValid() {
		t.Errorf("a router needing nothing got Host %q, Local %v, Client %v", req.Host, req.Local, req.Client)
	}
}
