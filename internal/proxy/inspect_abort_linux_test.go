package proxy

import (
	"context"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
	"net/netip"
	"testing"
	"time"
)

// TestShutdownAbortsInspection: a client that never sends the PROXY header
// its listener waits for is cut by a shutdown whose context ended, long
// before its peek_timeout.
func TestShutdownAbortsInspection(t *testing.T) {
	be := startBackend(t, echo)
	s, _ := newTestServer(t)
	rt := newRoute(t, "insp", be.addr)
	opts := ListenOptions{AcceptProxy: true, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, PeekTimeout: time.Hour}
	addr := listenTable(t, s, Table{Options: opts, Routes: []*Route{rt}})
	c := dial(t, addr) // sends nothing
	defer c.Close()
	harness.Eventually(t, "the connection to be accepted", func() bool { return s.Active() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // cut at once
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Shutdown reported no connection cut")
		}
	case <-time.After(deadline):
		t.Fatal("Shutdown did not abort the inspecting connection")
	}
	if n := s.Active(); n != 0 {
		t.Errorf("%d connections left", n)
	}
}
