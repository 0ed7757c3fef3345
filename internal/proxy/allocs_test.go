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
	end := time.Now().Add(deadline)
	for s.Active() != 0 { // the proxy finishes its side asynchronously
		if time.Now().After(end) {
			t.Fatal("the proxy did not finish the connection")
		}
		time.Sleep(50 * time.Microsecond)
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
