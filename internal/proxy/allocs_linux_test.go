package proxy

import (
	"io"
	"net"
	"testing"
	"time"
)

// connectionOnce proxies one short connection: connect, 64 bytes each way,
// close, and waits until the proxy has accounted for it.
func connectionOnce(t testing.TB, s *Server, addr string) {
	c, err := net.DialTimeout("tcp", addr, deadline)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(deadline))
	var msg, buf [64]byte
	if _, err := c.Write(msg[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// The proxy finishes its side asynchronously. BenchmarkTCPConnection
	// measures this function, so it polls finely: harness.Eventually's first
	// pause (a millisecond) would be most of what it measures.
	for end := time.Now().Add(deadline); s.Active() != 0; {
		if time.Now().After(end) {
			t.Fatal("the proxy did not finish the connection")
		}
		time.Sleep(50 * time.Microsecond) // the polling interval, not a synchronisation
	}
}

// maxAllocsPerConnection bounds the heap allocations of one proxied
// connection, counted over the whole process: the test client's dial and
// the test backend's accept plus the proxy's. Measured 37 with Go 1.26
// (`go test -run TestConnectionAllocations -memprofile m.out
// -memprofilerate 1 ./internal/proxy`): all but one are the test's own
// (netFD and TCPConn per socket, sockaddrs, the dial's deadline context and
// address list, the backend's goroutine). The proxy's event loop allocates
// one object per connection, its lconn; a read or a write allocates
// nothing. The bound catches a per-connection allocation creeping into the
// path (a log call, a closure, a buffer).
const maxAllocsPerConnection = 42

// TestConnectionAllocations: allocations do not flake the way times do, so
// the per-connection path's allocation count is asserted here (issue 9).
func TestConnectionAllocations(t *testing.T) {
	be := startBackend(t, func(c *net.TCPConn) {
		var buf [64]byte
		if _, err := io.ReadFull(c, buf[:]); err == nil {
			c.Write(buf[:])
		}
	})
	s, _ := newTestServer(t)
	addr := listen(t, s, newRoute(t, "allocs", be.addr))
	connectionOnce(t, s, addr) // warm the pools
	allocs := testing.AllocsPerRun(200, func() { connectionOnce(t, s, addr) })
	t.Logf("%.1f allocations per proxied connection (client and backend sides included)", allocs)
	if allocs > maxAllocsPerConnection {
		t.Fatalf("%.1f allocations per connection, want at most %d", allocs, maxAllocsPerConnection)
	}
}

// tcpEchoPath is a client with an open connection through a proxy to an
// echo backend, warmed up.
func tcpEchoPath(t testing.TB, size int) *net.TCPConn {
	be := startBackend(t, echo)
	s, _ := newTestServer(t)
	c := dial(t, listen(t, s, newRoute(t, "rt", be.addr)))
	c.SetDeadline(time.Now().Add(time.Hour))
	p, buf := make([]byte, size), make([]byte, size)
	for range 3 {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// TestTCPRequestNoAllocs: on an open connection, a request and its reply
// through the proxy (client → backend → client) allocate nothing — in the
// whole process, client and echo backend included.
func TestTCPRequestNoAllocs(t *testing.T) {
	c := tcpEchoPath(t, 512)
	p, buf := make([]byte, 512), make([]byte, 512)
	var failed error
	allocs := testing.AllocsPerRun(500, func() {
		if _, err := c.Write(p); err != nil {
			failed = err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("%.2f allocations per request round trip, want 0", allocs)
	}
}

// BenchmarkTCPConnection is the per-connection path: connect, 64 bytes
// each way, close, one at a time, until the proxy has accounted for it.
func BenchmarkTCPConnection(b *testing.B) {
	be := startBackend(b, func(c *net.TCPConn) {
		var buf [64]byte
		if _, err := io.ReadFull(c, buf[:]); err == nil {
			c.Write(buf[:])
		}
	})
	s, _ := newTestServer(b)
	addr := listen(b, s, newRoute(b, "bench", be.addr))
	b.ReportAllocs()
	for b.Loop() {
		connectionOnce(b, s, addr)
	}
}

// BenchmarkTCPRequest is the per-request path on an open connection: a
// 64-byte request and its echo, one at a time (latency-bound).
func BenchmarkTCPRequest(b *testing.B) {
	c := tcpEchoPath(b, 64)
	p, buf := make([]byte, 64), make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}
