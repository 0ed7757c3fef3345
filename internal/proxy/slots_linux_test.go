package proxy

import (
	"bufio"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestMaxConnectionsBatched: with a cap large enough for the loops to take
// its slots in batches, clients dialling at once are served up to exactly
// the cap, never beyond it and never refused below it (a loop out of room
// takes another's spare slots); one more is refused; the slots of
// connections that end are there again, each at the first dial; and a
// lowered cap holds as exactly.
func TestMaxConnectionsBatched(t *testing.T) {
	const limit = 512
	be := startBackend(t, greetEcho("be"))
	s, _ := newTestServer(t)
	s.SetMaxConnections(limit)
	if b := s.slots.batch.Load(); b < 2 && s.Workers() > 1 {
		t.Logf("batch %d: the cap is exact here, as with one loop", b)
	}
	addr := listen(t, s, newRoute(t, "batched", be.addr))

	// served dials until it gets the greeting (a connection held open) or
	// is closed (refused at the cap): nil then.
	served := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, deadline)
		if err != nil {
			return nil // reset before the dial returned
		}
		c.SetReadDeadline(time.Now().Add(deadline))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.SetReadDeadline(time.Time{})
		if err != nil || line != "be\n" {
			c.Close()
			return nil
		}
		return c
	}
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		for _, c := range open {
			c.Close()
		}
	})
	held := func() int { mu.Lock(); defer mu.Unlock(); return len(open) }
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range (limit + 100) / 8 {
				if c := served(); c != nil {
					mu.Lock()
					open = append(open, c)
					mu.Unlock()
				}
				if a := s.Active(); a > limit {
					t.Errorf("%d connections open, beyond the cap of %d", a, limit)
				}
			}
		}()
	}
	wg.Wait()
	if n := held(); n != limit {
		t.Fatalf("%d connections served of %d dialled; want exactly the cap of %d", n, 8*((limit+100)/8), limit)
	}
	dialClosed(t, addr) // one more: refused
	if n := be.accepted.Load(); n != limit {
		t.Errorf("the backend saw %d connections, want %d", n, limit)
	}
	// fill dials n clients one after another, each of which must be served.
	fill := func(n int, what string) {
		t.Helper()
		for i := range n {
			c := served()
			if c == nil {
				t.Fatalf("%s: client %d of %d refused with %d open", what, i+1, n, held())
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
		}
	}
	closeFirst := func(n int) {
		mu.Lock()
		for _, c := range open[:n] {
			c.Close()
		}
		open = open[n:]
		mu.Unlock()
	}
	closeFirst(100)
	harness.Eventually(t, "the closed connections to end", func() bool { return s.Active() == limit-100 })
	fill(100, "their slots taken again")
	if a := s.Active(); a != limit {
		t.Errorf("Active = %d, want %d", a, limit)
	}
	dialClosed(t, addr)

	// Lowered below what is open: nothing new until enough have ended.
	s.SetMaxConnections(limit - 50)
	dialClosed(t, addr)
	closeFirst(60)
	harness.Eventually(t, "the closed connections to end", func() bool { return s.Active() == limit-60 })
	fill(10, "the lowered cap")
	dialClosed(t, addr)
}
