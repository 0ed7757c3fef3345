package proxy

import (
	"context"
	"errors"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
)

// fakeNames is a lookup the tests inject into the server's resolver: fixed
// answers, lookups of a held name wait for release, a name can be made to
// fail.
type fakeNames struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	fail    map[string]bool
	hold    map[string]chan struct{}
	calls   map[string]int
}

func newFakeNames() *fakeNames {
	return &fakeNames{answers: map[string][]netip.Addr{}, fail: map[string]bool{}, hold: map[string]chan struct{}{}, calls: map[string]int{}}
}

func (f *fakeNames) set(host string, ips ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[host] = nil
	for _, ip := range ips {
		f.answers[host] = append(f.answers[host], netip.MustParseAddr(ip))
	}
}

func (f *fakeNames) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	f.calls[host]++
	h := f.hold[host]
	f.mu.Unlock()
	if h != nil {
		select {
		case <-h:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[host] {
		return nil, errors.New("SERVFAIL")
	}
	return f.answers[host], nil
}

func (f *fakeNames) count(host string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[host]
}

// testClock is the resolver's time, moved by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// withResolver gives s a resolver of f's answers; its clock is returned.
func withResolver(s *Server, f *fakeNames) *testClock {
	c := &testClock{t: time.Unix(1000, 0)}
	s.resolver = resolve.New(resolve.Options{Lookup: f.lookup, Now: c.now})
	return c
}

// oneWorker makes s run one event loop (per UDP listener too), so that a
// loop held up by a lookup would hold up every connection of the test.
func oneWorker(s *Server) { s.workersOnce.Do(func() { s.workers = 1 }) }

// backendsOnLoopbacks starts a greeting TCP backend on each of ips, all on
// one port, and returns the port.
func backendsOnLoopbacks(t *testing.T, ips ...string) string {
	t.Helper()
	port := "0"
	for _, ip := range ips {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, port))
		if err != nil {
			t.Fatal(err)
		}
		port = strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					greetEcho(ip)(c.(*net.TCPConn))
					c.Close() // not left to the garbage collector: later tests count sockets
				}()
			}
		}()
	}
	return port
}

// TestTCPResolvedAddressesAllUsed: every address of a backend's name takes
// connections.
func TestTCPResolvedAddressesAllUsed(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	port := backendsOnLoopbacks(t, ips...)
	s, _ := newTestServer(t)
	f := newFakeNames()
	f.set("svc.test", ips...)
	withResolver(s, f)
	addr := listen(t, s, newRoute(t, "names", "svc.test:"+port))
	checkEveryAddressUsed(t, s, addr, ips)
	if n := f.count("svc.test"); n != 1 {
		t.Errorf("%d lookups, want 1 (cached)", n)
	}
}

// TestTCPNextAddressOnRefused: a refused connect to one address of the
// backend moves on to its next address; the backend does not count as
// failed and the client is served.
func TestTCPNextAddressOnRefused(t *testing.T) {
	port := backendsOnLoopbacks(t, "127.0.0.6")
	s, logs := newTestServer(t)
	oneWorker(s)
	f := newFakeNames()
	f.set("svc.test", "127.0.0.5", "127.0.0.6") // nothing listens on 127.0.0.5
	withResolver(s, f)
	rt := newRoute(t, "next", "svc.test:"+port) // one backend: no other to fall back on
	addr := listen(t, s, rt)
	for i := range 6 { // the rotation starts at each address in turn
		c := dial(t, addr)
		if got := readLine(t, c); got != "127.0.0.6" {
			t.Fatalf("connection %d greeted by %q", i, got)
		}
		c.Close()
	}
	if n := s.Stats.NoBackend.Load(); n != 0 {
		t.Errorf("NoBackend = %d, want 0", n)
	}
	if n := logs.count(func(r logRec) bool { return r.msg == "backend dial failed; no backend left" }); n != 0 {
		t.Errorf("%d dial failures logged; a refused address with another left is no backend failure", n)
	}
	if !rt.Backends[0].Health().Up() {
		t.Error("the backend was marked down")
	}
}

// TestTCPFirstLookupDoesNotBlock: while a backend's first lookup is under
// way, the loop serves other connections; the waiting one is served once
// the lookup answers.
func TestTCPFirstLookupDoesNotBlock(t *testing.T) {
	port := backendsOnLoopbacks(t, "127.0.0.7")
	live := startBackend(t, greetEcho("literal"))
	s, _ := newTestServer(t)
	oneWorker(s)
	f := newFakeNames()
	f.set("slow.test", "127.0.0.7")
	release := make(chan struct{})
	f.hold["slow.test"] = release
	withResolver(s, f)
	// Round robin: the first connection goes to the held name, the second
	// to the literal address.
	addr := listen(t, s, newRoute(t, "slow", "slow.test:"+port, live.addr))
	waiting := dial(t, addr)
	harness.Eventually(t, "the lookup to start", func() bool { return f.count("slow.test") == 1 })
	other := dial(t, addr)
	if got := readLine(t, other); got != "literal" {
		t.Fatalf("second connection greeted by %q", got)
	}
	other.Close()
	close(release)
	if got := readLine(t, waiting); got != "127.0.0.7" {
		t.Fatalf("the connection that waited for the lookup was greeted by %q", got)
	}
	waiting.Close()
}

// TestTCPStaleAnswerKept: when a refresh fails, connections go on to the
// last good addresses.
func TestTCPStaleAnswerKept(t *testing.T) {
	port := backendsOnLoopbacks(t, "127.0.0.8")
	s, _ := newTestServer(t)
	f := newFakeNames()
	f.set("svc.test", "127.0.0.8")
	clock := withResolver(s, f)
	addr := listen(t, s, newRoute(t, "stale", "svc.test:"+port))
	c := dial(t, addr)
	if got := readLine(t, c); got != "127.0.0.8" {
		t.Fatal(got)
	}
	c.Close()
	f.mu.Lock()
	f.fail["svc.test"] = true
	f.mu.Unlock()
	clock.add(time.Hour) // every cached answer has expired
	for i := range 4 {
		c := dial(t, addr)
		if got := readLine(t, c); got != "127.0.0.8" {
			t.Fatalf("connection %d after a failed refresh greeted by %q", i, got)
		}
		c.Close()
	}
	harness.Eventually(t, "the refresh to be tried", func() bool { return f.count("svc.test") >= 2 })
	c = dial(t, addr)
	if got := readLine(t, c); got != "127.0.0.8" {
		t.Fatalf("after the refresh failed: greeted by %q", got)
	}
	c.Close()
}

// TestUDPFirstLookupDoesNotBlock: a new UDP client whose backend's name is
// being looked up holds up no other client of the shard, and its datagram
// is forwarded once the lookup answers.
func TestUDPFirstLookupDoesNotBlock(t *testing.T) {
	named := startUDPBackend(t, namedEcho("named"))
	literal := startUDPBackend(t, namedEcho("literal"))
	_, port, _ := net.SplitHostPort(named.addr)
	s, _ := newTestServer(t)
	oneWorker(s)
	f := newFakeNames()
	f.set("slow.test", "127.0.0.1")
	release := make(chan struct{})
	f.hold["slow.test"] = release
	withResolver(s, f)
	l := listenUDPTest(t, s, newUDPRoute(t, "slow", "slow.test:"+port, literal.addr))
	first := udpClient(t, l.Addr())
	if _, err := first.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the lookup to start", func() bool { return f.count("slow.test") == 1 })
	second := udpClient(t, l.Addr())
	mustRoundTrip(t, second, []byte("y"), []byte("literal:y"))
	close(release)
	if got := string(readDatagram(t, first)); got != "named:x" {
		t.Fatalf("the held datagram came back as %q", got)
	}
}

// TestUDPResolvedAddressesAllUsed: new sessions go to every address of a
// backend's name in turn.
func TestUDPResolvedAddressesAllUsed(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3"}
	var port string
	for _, ip := range ips {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, cmpOr(port, "0")))
		if err != nil {
			t.Fatal(err)
		}
		port = strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(append([]byte(ip+":"), buf[:n]...), from)
			}
		}()
	}
	s, _ := newTestServer(t)
	oneWorker(s)
	f := newFakeNames()
	f.set("svc.test", ips...)
	withResolver(s, f)
	l := listenUDPTest(t, s, newUDPRoute(t, "all", "svc.test:"+port))
	seen := map[string]bool{}
	for range 4 {
		c := udpClient(t, l.Addr())
		got, err := roundTrip(c, []byte("p"), 0)
		if err != nil {
			t.Fatal(err)
		}
		seen[string(got)] = true
	}
	for _, ip := range ips {
		if !seen[ip+":p"] {
			t.Errorf("address %s took no session: %v", ip, seen)
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// checkEveryAddressUsed makes connections through addr, four per address
// per event loop, and checks that each of ips (the backends answer with
// their address) took at least one.
func checkEveryAddressUsed(t *testing.T, s *Server, addr string, ips []string) {
	t.Helper()
	seen := map[string]int{}
	for range 4 * len(ips) * s.Workers() {
		c := dial(t, addr)
		seen[readLine(t, c)]++
		c.Close()
	}
	for _, ip := range ips {
		if seen[ip] == 0 {
			t.Errorf("address %s took no connection: %v", ip, seen)
		}
	}
}
