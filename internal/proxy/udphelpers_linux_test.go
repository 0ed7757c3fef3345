package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
	"golang.org/x/sys/unix"
)

// udpBackend is a UDP server on 127.0.0.1. For every datagram it calls
// reply, which returns the datagrams to answer with (nil: none). It records
// the source address of every datagram it got.
type udpBackend struct {
	addr string
	conn *net.UDPConn
	done chan struct{}
	got  atomic.Int64

	mu      sync.Mutex
	sources map[netip.AddrPort]int
}

func startUDPBackend(t testing.TB, reply func(p []byte) [][]byte) *udpBackend {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	b := &udpBackend{addr: c.LocalAddr().String(), conn: c, done: make(chan struct{}), sources: map[netip.AddrPort]int{}}
	go func() {
		defer close(b.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b.mu.Lock()
			b.sources[from]++
			b.mu.Unlock()
			b.got.Add(1)
			for _, r := range reply(buf[:n]) {
				c.WriteToUDPAddrPort(r, from)
			}
		}
	}()
	t.Cleanup(b.close)
	return b
}

func (b *udpBackend) close() {
	b.conn.Close()
	<-b.done
}

func (b *udpBackend) sourceCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.sources)
}

// echoReply answers with the datagram itself.
func echoReply(p []byte) [][]byte { return [][]byte{append([]byte(nil), p...)} }

// namedEcho answers with "name:" and the datagram.
func namedEcho(name string) func([]byte) [][]byte {
	return func(p []byte) [][]byte { return [][]byte{append([]byte(name+":"), p...)} }
}

// refusingUDPAddr returns a loopback address where datagrams are answered by
// ICMP port unreachable: a UDP socket holds the port (so no one else takes
// it) but is connected elsewhere, so it accepts nothing from anyone else.
func refusingUDPAddr(t testing.TB) string {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().String()
}

// newUDPRoute returns a round-robin UDP route over backends at addrs (ids b0, b1...).
func newUDPRoute(t testing.TB, name string, addrs ...string) *Route {
	t.Helper()
	bs := make([]*backend.Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = backend.New(name, fmt.Sprintf("b%d", i), a, 1, nil)
	}
	r, err := router.New("round_robin", map[string]any{}, bs)
	if err != nil {
		t.Fatal(err)
	}
	return &Route{Name: name, Protocol: "udp", RouterName: "round_robin", Router: r, Backends: bs,
		ConnectTimeout: 30 * time.Second, MaxSessions: 10000}
}

// udpTestListener is what the tests use of either engine's UDP listener.
type udpTestListener interface {
	Listener
	Routes() []*Route
	Sessions() int64
	forceClose() int
	finished() <-chan struct{}
	isClosed() bool
}

func (l *UDPListener) isClosed() bool   { return l.closed.Load() }
func (l *goUDPListener) isClosed() bool { return l.closed.Load() }

func (l *UDPListener) finished() <-chan struct{}   { return l.done }
func (l *goUDPListener) finished() <-chan struct{} { return l.done }

// listenUDPTest binds a UDP listener on 127.0.0.1 serving routes, on the
// engine testEngine says.
func listenUDPTest(t testing.TB, s *Server, routes ...*Route) udpTestListener {
	t.Helper()
	return listenUDPTable(t, s, Table{Routes: routes})
}

// listenUDPTable binds a UDP listener on 127.0.0.1 serving tb, on the
// engine testEngine says.
func listenUDPTable(t testing.TB, s *Server, tb Table) udpTestListener {
	t.Helper()
	var l udpTestListener
	var err error
	if testEngine == EngineGoroutine {
		l, err = s.listenUDPGo("127.0.0.1:0", tb)
	} else {
		l, err = s.listenUDPEpoll("127.0.0.1:0", tb, udpOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	cutOnCleanup(t, l)
	return l
}

// cutOnCleanup ends l's sessions when the test ends: sessions outlive Close
// (they drain until session_timeout), and the test server's Shutdown would
// wait for them.
func cutOnCleanup(t testing.TB, l udpTestListener) {
	t.Cleanup(func() {
		l.forceClose()
		<-l.finished()
	})
}

// udpClient is a client socket connected to the proxy: it only receives
// datagrams from the address it sends to.
func udpClient(t testing.TB, addr net.Addr) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends p and returns the first reply, resending every resend
// (a lost datagram is UDP's normal; 0: never) until deadline.
func roundTrip(c *net.UDPConn, p []byte, resend time.Duration) ([]byte, error) {
	if _, err := c.Write(p); err != nil {
		return nil, err
	}
	end := time.Now().Add(deadline)
	buf := make([]byte, 65536)
	for {
		wait := end
		if resend > 0 {
			wait = time.Now().Add(resend)
			if wait.After(end) {
				wait = end
			}
		}
		c.SetReadDeadline(wait)
		n, err := c.Read(buf)
		if err == nil {
			return append([]byte(nil), buf[:n]...), nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || time.Now().After(end) {
			return nil, err
		}
		if _, err := c.Write(p); err != nil {
			return nil, err
		}
	}
}

// read returns the next datagram, failing the test after deadline.
func readDatagram(t testing.TB, c *net.UDPConn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(deadline))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reading a datagram: %v", err)
	}
	return append([]byte(nil), buf[:n]...)
}

func mustRoundTrip(t testing.TB, c *net.UDPConn, p []byte, want []byte) {
	t.Helper()
	got, err := roundTrip(c, p, 0)
	if err != nil {
		t.Fatalf("round trip of %d bytes: %v", len(p), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("round trip of %d bytes: got %d bytes %.40q, want %d bytes %.40q", len(p), len(got), got, len(want), want)
	}
}

// openFds counts this process's open UDP sockets: the descriptors a UDP
// session holds. (Other descriptors are left out: the net package keeps
// splice pipes of earlier TCP tests in a pool, and their sockets, that the
// garbage collector closes at any time.)
func openFds(t testing.TB) int {
	t.Helper()
	// The process's UDP sockets only: a TCP socket of an earlier test that
	// the garbage collector closes meanwhile must not move the count. Each
	// descriptor is asked its own type and family: /proc/net/udp is the
	// whole machine's table, and reading it while other processes open and
	// close sockets can skip entries.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_DGRAM {
			continue
		}
		if dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil && (dom == unix.AF_INET || dom == unix.AF_INET6) {
			n++
		}
	}
	return n
}

// udpSessionsEnded is a match for the access log of a UDP session that
// ended for reason.
func udpSessionEnded(reason string) func(logRec) bool {
	return func(r logRec) bool { return r.msg == "udp session closed" && r.attrs["end"] == reason }
}

// checkNoDrops fails the test if the server dropped any datagram.
func checkNoDrops(t testing.TB, s *Server) {
	t.Helper()
	u := &s.UDP
	for name, c := range map[string]*atomic.Int64{
		"max_sessions": &u.DroppedMaxSessions, "oversize": &u.DroppedOversize, "no route": &u.DroppedNoRoute,
		"no backend": &u.DroppedNoBackend, "shutdown": &u.DroppedShutdown, "send error": &u.DroppedSendError,
		"max_responses": &u.DroppedMaxResponse,
	} {
		if n := c.Load(); n != 0 {
			t.Errorf("%d datagrams dropped (%s)", n, name)
		}
	}
}
