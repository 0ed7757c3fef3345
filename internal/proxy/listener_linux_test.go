package proxy

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestMaxConnectionsCountedOnListener: a connection refused by the
// server's max_connections belongs to no rule. On a listener with two
// rules it is counted on the listener's observer, not on the first rule's
// (which sees only the connection it served) nor the second's.
func TestMaxConnectionsCountedOnListener(t *testing.T) {
	s, _ := newTestServer(t)
	b := backend.New("first", "b", startBackend(t, echo).addr, 1, nil)
	o1, o2, lo := newRecObserver(), newRecObserver(), newRecObserver()
	first, second := obsRoute(t, o1, b), obsRoute(t, o2, backend.New("second", "b", startBackend(t, echo).addr, 1, nil))
	first.Name, second.Name = "first", "second"
	addr := listenTable(t, s, Table{Options: ListenOptions{Observer: recListener{lo}}, Routes: []*Route{first, second}})
	s.SetMaxConnections(1)

	held := dial(t, addr)
	defer held.Close()
	o1.waitFor(t, "the held connection", func() bool { return len(o1.connected[b]) == 1 })
	// The connection beyond max_connections is reset at once (the reset can
	// beat connect's return on loopback).
	if refused, err := net.Dial("tcp", addr); err == nil {
		refused.SetReadDeadline(time.Now().Add(deadline))
		_, err := refused.Read(make([]byte, 1))
		refused.Close()
		if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
			t.Fatalf("the connection beyond max_connections was not closed: %v", err)
		}
	}
	lo.waitFor(t, "max_connections on the listener", func() bool { return lo.rejected[ReasonMaxConnections] == 1 })
	for name, o := range map[string]*recObserver{"first": o1, "second": o2} {
		o.mu.Lock()
		if len(o.rejected) != 0 {
			t.Errorf("rule %s counted rejections %v", name, o.rejected)
		}
		o.mu.Unlock()
	}
	o1.mu.Lock()
	if o1.opened != 1 {
		t.Errorf("the first rule saw %d connections, want 1 (the held one)", o1.opened)
	}
	o1.mu.Unlock()
	o2.mu.Lock()
	if o2.opened != 0 {
		t.Errorf("the second rule saw %d connections, want 0", o2.opened)
	}
	o2.mu.Unlock()
}

// TestListenerOptionsFromTable: accept_proxy_protocol is the table's
// option, not a route's: with it a client that sends no PROXY header is
// refused and counted on the listener; a new table without it serves the
// same bytes.
func TestListenerOptionsFromTable(t *testing.T) {
	s, _ := newTestServer(t)
	lo := newRecObserver()
	rt := newRoute(t, "r", startBackend(t, echo).addr)
	withProxy := ListenOptions{AcceptProxy: true, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		PeekTimeout: deadline, Observer: recListener{lo}}
	l, err := s.ListenTCP("127.0.0.1:0", Table{Options: withProxy, Routes: []*Route{rt}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	send := func() (string, error) {
		c := dial(t, l.Addr().String())
		defer c.Close()
		c.SetDeadline(time.Now().Add(deadline))
		if _, err := io.WriteString(c, "hello, no header\r\n"); err != nil {
			return "", err
		}
		c.CloseWrite()
		got, err := io.ReadAll(c)
		return string(got), err
	}
	if got, _ := send(); got != "" {
		t.Errorf("without a PROXY header the listener served %q", got)
	}
	lo.waitFor(t, "bad_proxy_header on the listener", func() bool { return lo.rejected[ReasonBadProxyHeader] == 1 })

	l.SetTable(Table{Options: ListenOptions{Observer: recListener{lo}}, Routes: []*Route{rt}})
	if got, err := send(); got != "hello, no header\r\n" || err != nil {
		t.Errorf("without accept_proxy: got %q, %v", got, err)
	}
}

// TestUDPShutdownCountedOnListener: a new client's datagram dropped while
// the listener drains belongs to no rule: the listener counts it.
func TestUDPShutdownCountedOnListener(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	o, lo := newRecObserver(), newRecObserver()
	rt := newUDPRoute(t, "r", be.addr)
	rt.Observer = o
	l := listenUDPTable(t, s, Table{Options: ListenOptions{Observer: recListener{lo}}, Routes: []*Route{rt}})
	old, late := udpClient(t, l.Addr()), udpClient(t, l.Addr())
	mustRoundTrip(t, old, []byte("before"), []byte("before"))
	l.Close() // draining: the open session runs on
	if _, err := late.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the new client's datagram to be dropped", func() bool { return s.UDP.DroppedShutdown.Load() == 1 })
	lo.waitFor(t, "shutdown on the listener", func() bool { return lo.rejected[ReasonShutdown] == 1 })
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.rejected) != 0 || o.opened != 1 {
		t.Errorf("the rule saw %d sessions and rejections %v; want 1 and none", o.opened, o.rejected)
	}
}
