package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

func TestUDPEchoRoundTrip(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	l := listenUDPTest(t, s, newUDPRoute(t, "echo", be.addr))

	// The reply must come from the address the client sent to.
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := l.Addr().(*net.UDPAddr).AddrPort()
	if _, err := c.WriteToUDPAddrPort([]byte("hello"), to); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(deadline))
	buf := make([]byte, 100)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "hello" || from != to {
		t.Fatalf("got %q from %v, want %q from %v", buf[:n], from, "hello", to)
	}

	// More datagrams of the same client: the same session, the same
	// backend socket.
	cc := udpClient(t, l.Addr())
	for i := 0; i < 5; i++ {
		p := []byte(fmt.Sprintf("datagram %d", i))
		mustRoundTrip(t, cc, p, p)
	}
	// A zero-length datagram is forwarded as one, and its echo comes back.
	mustRoundTrip(t, cc, []byte{}, []byte{})

	if got := s.UDP.SessionsTotal.Load(); got != 2 {
		t.Errorf("sessions opened: %d, want 2 (one per client)", got)
	}
	if got := be.sourceCount(); got != 2 {
		t.Errorf("backend saw %d source addresses, want 2 (one socket per session)", got)
	}
	if got := s.UDP.DatagramsIn.Load(); got != 7 {
		t.Errorf("datagrams in: %d, want 7", got)
	}
	harness.Eventually(t, "7 datagrams out", func() bool { return s.UDP.DatagramsOut.Load() == 7 })
	if got := l.Sessions(); got != 2 {
		t.Errorf("open sessions: %d, want 2", got)
	}
	if a := l.Routes()[0].Backends[0].Active(); a != 2 {
		t.Errorf("backend active count %d, want 2 (a session is Acquired like a connection)", a)
	}
	checkNoDrops(t, s)
}

// TestUDPManyClientsOwnReplies runs 1,000 clients at once, each sending
// datagrams only it sends, through two backends: every client must get its
// own datagrams back and nobody else's.
func TestUDPManyClientsOwnReplies(t *testing.T) {
	s, _ := newTestServer(t)
	b0, b1 := startUDPBackend(t, namedEcho("b0")), startUDPBackend(t, namedEcho("b1"))
	l := listenUDPTest(t, s, newUDPRoute(t, "many", b0.addr, b1.addr))

	const clients, each = 1000, 3
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		conns[i] = udpClient(t, l.Addr())
	}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine string
			for j := 0; j < each; j++ {
				p := []byte(fmt.Sprintf("client %d datagram %d", i, j))
				got, err := roundTrip(c, p, time.Second)
				// A resend may bring back an earlier datagram's answer
				// twice; anything not ours is a misdelivery. Each answer
				// comes from the client's one backend, b0 or b1.
				for err == nil && !bytes.Equal(got[3:], p) {
					if len(got) < 3 || !bytes.HasPrefix(got[3:], []byte(fmt.Sprintf("client %d ", i))) {
						errs <- fmt.Errorf("client %d got %q, which is not its own", i, got)
						return
					}
					got, err = roundTrip(c, p, time.Second)
				}
				if err == nil && j == 0 {
					mine = string(got[:3])
				}
				if err == nil && string(got[:3]) != mine {
					errs <- fmt.Errorf("client %d got %q: not from its session's backend %s", i, got, mine)
					return
				}
				if err != nil {
					errs <- fmt.Errorf("client %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := s.UDP.SessionsTotal.Load(); got != clients {
		t.Errorf("sessions opened: %d, want %d", got, clients)
	}
	if n0, n1 := b0.sourceCount(), b1.sourceCount(); n0 != clients/2 || n1 != clients/2 {
		t.Errorf("round robin spread sessions %d/%d, want %d each", n0, n1, clients/2)
	}
	// Every datagram a backend answered reached its client: the proxy
	// lost nothing.
	harness.Eventually(t, "every answer to be delivered", func() bool {
		return s.UDP.DatagramsOut.Load() == b0.got.Load()+b1.got.Load()
	})
	checkNoDrops(t, s)
}

func TestUDPSessionTimeout(t *testing.T) {
	s, sink := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	rt := newUDPRoute(t, "timeout", be.addr)
	rt.AccessLog = true
	l := listenUDPTable(t, s, Table{Options: ListenOptions{SessionTimeout: 200 * time.Millisecond}, Routes: []*Route{rt}})
	c := udpClient(t, l.Addr())

	start := time.Now() // the session's last activity is later than this
	mustRoundTrip(t, c, []byte("one"), []byte("one"))
	rec := sink.wait(t, "of a session ending by timeout", udpSessionEnded("idle_timeout"))
	if idle := time.Since(start); idle < 200*time.Millisecond {
		t.Errorf("session ended after %v idle, before its 200ms session_timeout", idle)
	}
	if rec.attrs["datagrams_in"] != int64(1) || rec.attrs["datagrams_out"] != int64(1) || rec.attrs["backend"] != "b0" {
		t.Errorf("access log %v", rec.attrs)
	}
	if l.Sessions() != 0 || s.UDP.Ended[EndIdleTimeout].Load() != 1 || rt.Backends[0].Active() != 0 {
		t.Errorf("after expiry: sessions %d, ended by timeout %d, backend active %d; want 0, 1, 0",
			l.Sessions(), s.UDP.Ended[EndIdleTimeout].Load(), rt.Backends[0].Active())
	}
	// The client's next datagram opens a new session (a new backend socket).
	mustRoundTrip(t, c, []byte("two"), []byte("two"))
	if got := be.sourceCount(); got != 2 {
		t.Errorf("backend saw %d source addresses, want 2 (a new socket after expiry)", got)
	}
}

// TestUDPTrafficKeepsSessionOpen checks that a session with traffic more
// often than session_timeout stays one session, in both directions: the
// client's datagrams, and the backend's unsolicited ones.
func TestUDPTrafficKeepsSessionOpen(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	rt := newUDPRoute(t, "keep", be.addr)
	l := listenUDPTable(t, s, Table{Options: ListenOptions{SessionTimeout: time.Second}, Routes: []*Route{rt}})
	c := udpClient(t, l.Addr())
	end := time.Now().Add(2500 * time.Millisecond) // two and a half timeouts
	for i := 0; time.Now().Before(end); i++ {
		p := []byte(fmt.Sprint(i))
		mustRoundTrip(t, c, p, p)
	}
	if got := s.UDP.SessionsTotal.Load(); got != 1 {
		t.Errorf("sessions: %d, want 1 (traffic keeps it alive)", got)
	}
}

func TestUDPMaxResponses(t *testing.T) {
	s, sink := newTestServer(t)
	// The backend answers every datagram three times.
	be := startUDPBackend(t, func(p []byte) [][]byte {
		return [][]byte{append(append([]byte{}, p...), '1'), append(append([]byte{}, p...), '2'), append(append([]byte{}, p...), '3')}
	})
	rt := newUDPRoute(t, "two", be.addr)
	rt.MaxResponses = 2
	rt.AccessLog = true
	l := listenUDPTest(t, s, rt)
	c := udpClient(t, l.Addr())

	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"a1", "a2"} {
		if got := string(readDatagram(t, c)); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	rec := sink.wait(t, "of a session ending by max_responses", udpSessionEnded("max_responses"))
	if rec.attrs["datagrams_out"] != int64(2) {
		t.Errorf("access log %v: want 2 datagrams out", rec.attrs)
	}
	// The third reply is never delivered: the next datagram the client
	// gets is the first reply of its next session.
	if _, err := c.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if got := string(readDatagram(t, c)); got != "b1" {
		t.Fatalf("after max_responses got %q, want the new session's %q", got, "b1")
	}
	if got := s.UDP.SessionsTotal.Load(); got != 2 {
		t.Errorf("sessions %d, want 2", got)
	}
}

// TestUDPMaxResponsesPerDatagram: max_responses counts replies per client
// datagram. A client that sends two queries before the first answer (the
// backend here answers both once it has the second) gets both answers with
// max_responses = 1, and the session then ends by max_responses.
func TestUDPMaxResponsesPerDatagram(t *testing.T) {
	s, sink := newTestServer(t)
	be := startUDPBackend(t, func(p []byte) [][]byte {
		if string(p) == "q1" {
			return nil // held until q2 arrives
		}
		return [][]byte{[]byte("r1"), []byte("r2")}
	})
	rt := newUDPRoute(t, "dns", be.addr)
	rt.MaxResponses = 1
	rt.AccessLog = true
	l := listenUDPTest(t, s, rt)
	c := udpClient(t, l.Addr())
	for _, q := range []string{"q1", "q2"} {
		if _, err := c.Write([]byte(q)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"r1", "r2"} {
		if got := string(readDatagram(t, c)); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	rec := sink.wait(t, "of the session ending by max_responses", udpSessionEnded("max_responses"))
	if rec.attrs["datagrams_in"] != int64(2) || rec.attrs["datagrams_out"] != int64(2) {
		t.Errorf("access log %v: want 2 datagrams in and 2 out", rec.attrs)
	}
	if got := s.UDP.DroppedMaxResponse.Load(); got != 0 {
		t.Errorf("%d replies dropped after max_responses; want 0", got)
	}
}

// TestUDPDNSShaped sends DNS-shaped traffic (one query, one answer, the
// answer carrying the query's id) with max_responses = 1: each session
// must end right after its answer, releasing its socket.
func TestUDPDNSShaped(t *testing.T) {
	s, sink := newTestServer(t)
	be := startUDPBackend(t, func(q []byte) [][]byte {
		if len(q) < 12 {
			return nil
		}
		a := append([]byte{}, q...)
		a[2] |= 0x80 // QR: response
		a = append(a, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1)
		a[7] = 1 // ANCOUNT
		return [][]byte{a}
	})
	rt := newUDPRoute(t, "dns", be.addr)
	rt.MaxResponses = 1
	rt.AccessLog = true
	l := listenUDPTest(t, s, rt)
	base := openFds(t)

	const queries = 20
	for i := 0; i < queries; i++ {
		c, err := net.DialUDP("udp", nil, l.Addr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		id := byte(i)
		q := []byte{0x12, id, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1}
		ans, err := roundTrip(c, q, 0)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if ans[1] != id || ans[2]&0x80 == 0 || ans[7] != 1 {
			t.Fatalf("answer %x does not answer query %d", ans, i)
		}
	}
	harness.Eventually(t, "every DNS session to end", func() bool { return sink.count(udpSessionEnded("max_responses")) == queries })
	if got := l.Sessions(); got != 0 {
		t.Errorf("open sessions after the answers: %d, want 0", got)
	}
	if got := openFds(t); got != base {
		t.Errorf("descriptors: %d, want the %d before the queries", got, base)
	}
	if got := s.UDP.Ended[EndMaxResponses].Load(); got != queries {
		t.Errorf("sessions ended by max_responses: %d, want %d", got, queries)
	}
}

func TestUDPMaxSessions(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	rt := newUDPRoute(t, "cap", be.addr)
	rt.MaxSessions = 2
	l := listenUDPTest(t, s, rt)
	a, b, c := udpClient(t, l.Addr()), udpClient(t, l.Addr()), udpClient(t, l.Addr())
	mustRoundTrip(t, a, []byte("a"), []byte("a"))
	mustRoundTrip(t, b, []byte("b"), []byte("b"))
	if _, err := c.Write([]byte("c")); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the third client's datagram to be dropped", func() bool { return s.UDP.DroppedMaxSessions.Load() == 1 })
	// Existing sessions are unaffected.
	mustRoundTrip(t, a, []byte("a2"), []byte("a2"))
	mustRoundTrip(t, b, []byte("b2"), []byte("b2"))
	if got := be.got.Load(); got != 4 {
		t.Errorf("backend got %d datagrams, want 4 (none from the third client)", got)
	}
	// A reload that raises the limit lets the third client in.
	rt2 := *rt
	rt2.MaxSessions = 3
	l.SetTable(Table{Routes: []*Route{&rt2}})
	mustRoundTrip(t, c, []byte("c2"), []byte("c2"))
	if l.Sessions() != 3 {
		t.Errorf("sessions %d, want 3", l.Sessions())
	}
}

// TestUDPDeadBackend: a backend that answers ICMP port unreachable ends the
// session, and the client's next datagram gets another backend even when
// the router would pick the dead one again.
func TestUDPDeadBackend(t *testing.T) {
	s, sink := newTestServer(t)
	dead := refusingUDPAddr(t)
	live := startUDPBackend(t, namedEcho("live"))
	rt := newUDPRoute(t, "dead", dead, live.addr)
	rt.AccessLog = true
	l := listenUDPTest(t, s, rt)
	a, b := udpClient(t, l.Addr()), udpClient(t, l.Addr())

	// a's first session goes to the dead backend (round robin starts at b0).
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	rec := sink.wait(t, "of the session on the dead backend ending", udpSessionEnded("backend_refused"))
	if rec.attrs["backend"] != "b0" {
		t.Fatalf("refused session was on %v, want b0", rec.attrs["backend"])
	}
	if l.Sessions() != 0 || rt.Backends[0].Active() != 0 {
		t.Errorf("after refusal: sessions %d, dead backend active %d; want 0, 0", l.Sessions(), rt.Backends[0].Active())
	}
	// b takes the live backend, so round robin's next pick is the dead one:
	// a's next session must still avoid it.
	mustRoundTrip(t, b, []byte("b"), []byte("live:b"))
	mustRoundTrip(t, a, []byte("a"), []byte("live:a"))
	if got := s.UDP.Ended[EndBackendRefused].Load(); got != 1 {
		t.Errorf("sessions ended by refusal: %d, want 1", got)
	}
}

// TestUDPAllBackendsDead: with every backend refusing, clients keep being
// answered by nothing, sessions keep ending, and nothing leaks.
func TestUDPAllBackendsDead(t *testing.T) {
	s, _ := newTestServer(t)
	rt := newUDPRoute(t, "alldead", refusingUDPAddr(t))
	l := listenUDPTest(t, s, rt)
	c := udpClient(t, l.Addr())
	for i := 1; i <= 3; i++ {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		harness.Eventually(t, fmt.Sprintf("refusal %d", i), func() bool { return s.UDP.Ended[EndBackendRefused].Load() >= int64(i) })
	}
	if l.Sessions() != 0 || rt.Backends[0].Active() != 0 {
		t.Errorf("sessions %d, backend active %d; want 0, 0", l.Sessions(), rt.Backends[0].Active())
	}
}

func TestUDPLargeDatagrams(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	l := listenUDPTest(t, s, newUDPRoute(t, "big", be.addr))
	c := udpClient(t, l.Addr())
	c.SetReadBuffer(1 << 20)
	c.SetWriteBuffer(1 << 20)
	for _, size := range []int{0, 1, 1472, 1473, 8192, 9000, 32768, 65507} {
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(i*7 + size)
		}
		mustRoundTrip(t, c, p, p)
	}
	checkNoDrops(t, s)
}

// TestUDPOversize runs a listener whose buffers are 1,024 bytes: larger
// datagrams, from the client or from the backend, are counted and dropped,
// and the listener goes on.
func TestUDPOversize(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, func(p []byte) [][]byte {
		if string(p) == "big reply" {
			return [][]byte{make([]byte, 2000), []byte("small reply")}
		}
		return echoReply(p)
	})
	l, err := s.listenUDPEpoll("127.0.0.1:0", Table{Routes: []*Route{newUDPRoute(t, "small", be.addr)}}, udpOptions{maxDatagram: 1024})
	if err != nil {
		t.Fatal(err)
	}
	cutOnCleanup(t, l)
	c := udpClient(t, l.Addr())
	if _, err := c.Write(make([]byte, 1025)); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the oversized datagram to be counted", func() bool { return s.UDP.DroppedOversize.Load() == 1 })
	mustRoundTrip(t, c, make([]byte, 1024), make([]byte, 1024))
	mustRoundTrip(t, c, []byte("big reply"), []byte("small reply"))
	// Counters are published at the end of the loop's turn, which may come
	// after the client has its reply.
	harness.Eventually(t, "two oversize drops, one each way", func() bool { return s.UDP.DroppedOversize.Load() == 2 })
}

// TestUDPDescriptorsReleased opens 10,000 sessions (clients in waves, so
// that client and backend sockets stay under the descriptor limit), checks
// each holds exactly one descriptor, then lets them expire and checks that
// the descriptor count is back to its baseline.
func TestUDPDescriptorsReleased(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 sessions")
	}
	s, _ := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	rt := newUDPRoute(t, "fds", be.addr)
	rt.MaxSessions = 0
	l := listenUDPTest(t, s, rt)
	base := openFds(t)
	mem := memNow()

	const total, wave = 10000, 500
	// A closed client's port may be handed out again, and the same
	// address:port is the same session: every client must be a new one.
	used := map[netip.AddrPort]bool{}
	for w := 0; w < total/wave; w++ {
		conns := make([]*net.UDPConn, wave)
		var spare []*net.UDPConn
		for i := range conns {
			for conns[i] == nil {
				c, err := net.DialUDP("udp", nil, l.Addr().(*net.UDPAddr))
				if err != nil {
					t.Fatal(err)
				}
				if ap := c.LocalAddr().(*net.UDPAddr).AddrPort(); used[ap] {
					spare = append(spare, c) // held so the next dial gets another port
				} else {
					used[ap] = true
					conns[i] = c
				}
			}
		}
		for _, c := range spare {
			c.Close()
		}
		var wg sync.WaitGroup
		errs := make(chan error, wave)
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := []byte(fmt.Sprint(w*wave + i))
				got, err := roundTrip(c, p, time.Second)
				if err == nil && !bytes.Equal(got, p) {
					err = fmt.Errorf("got %q, want %q", got, p)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	if got := l.Sessions(); got != total {
		t.Fatalf("open sessions %d, want %d", got, total)
	}
	if got := openFds(t); got != base+total {
		t.Errorf("descriptors with %d sessions open: %d, want baseline %d + one each", total, got, base)
	}
	// A session of the epoll engine costs no goroutine and well under 4 KiB
	// of Go memory (the bound leaves room for the test's own bookkeeping):
	// no goroutine stack, no buffer of its own. (The goroutine engine's
	// session has both, by design: it is only logged.)
	now := memNow()
	perSession := float64(int64(now.heap+now.stack)-int64(mem.heap+mem.stack)) / total
	if testEngine != EngineGoroutine && (perSession > 4096 || now.goroutines > mem.goroutines) {
		t.Errorf("%d sessions cost %.0f bytes each and %d goroutines", total, perSession, now.goroutines-mem.goroutines)
	}
	t.Logf("%d open sessions: %.0f bytes of Go memory each, %d goroutines", total, perSession, now.goroutines-mem.goroutines)
	// A reload that shortens session_timeout applies to open sessions too.
	l.SetTable(Table{Options: ListenOptions{SessionTimeout: 50 * time.Millisecond}, Routes: []*Route{rt}})
	harness.Eventually(t, "every session to expire", func() bool { return l.Sessions() == 0 })
	if got := openFds(t); got != base {
		t.Errorf("descriptors after expiry: %d, want the baseline %d", got, base)
	}
	if got := rt.Backends[0].Active(); got != 0 {
		t.Errorf("backend active %d after expiry, want 0", got)
	}
	checkNoDrops(t, s)
}

// TestUDPShutdownDrains: Shutdown stops new sessions but lets open ones get
// their replies; it returns when the last session ends (here, by
// max_responses: 2 per datagram, so 4 replies to its two datagrams; the
// backend answers the first once and the second three times).
func TestUDPShutdownDrains(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, func(p []byte) [][]byte {
		if string(p) == "during" {
			return [][]byte{p, p, p}
		}
		return [][]byte{p}
	})
	rt := newUDPRoute(t, "drain", be.addr)
	rt.MaxResponses = 2
	l := listenUDPTest(t, s, rt)
	old, late := udpClient(t, l.Addr()), udpClient(t, l.Addr())
	mustRoundTrip(t, old, []byte("before"), []byte("before"))

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	harness.Eventually(t, "the listener to close", func() bool { return l.isClosed() })
	// A new client gets nothing…
	if _, err := late.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the new client's datagram to be dropped", func() bool { return s.UDP.DroppedShutdown.Load() == 1 })
	// …while the open session still gets its replies.
	mustRoundTrip(t, old, []byte("during"), []byte("during"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(deadline):
		t.Fatal("shutdown did not return after the last session expired")
	}
	if s.UDP.Ended[EndMaxResponses].Load() != 1 || l.Sessions() != 0 {
		t.Errorf("sessions ended by max_responses %d, open %d; want 1, 0", s.UDP.Ended[EndMaxResponses].Load(), l.Sessions())
	}
	// The port is released.
	pc, err := net.ListenPacket("udp", l.Addr().String())
	if err != nil {
		t.Fatalf("port still held after shutdown: %v", err)
	}
	pc.Close()
}

// TestUDPShutdownTimeout: sessions still open when Shutdown's context ends
// are cut.
func TestUDPShutdownTimeout(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	l := listenUDPTest(t, s, newUDPRoute(t, "cut", be.addr)) // 30s session_timeout
	c := udpClient(t, l.Addr())
	mustRoundTrip(t, c, []byte("x"), []byte("x"))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("shutdown returned nil with a session open")
	}
	if s.UDP.Ended[EndShutdown].Load() != 1 || l.Sessions() != 0 {
		t.Errorf("sessions cut %d, open %d; want 1, 0", s.UDP.Ended[EndShutdown].Load(), l.Sessions())
	}
}

// TestUDPCloseReleasesPort: closing an idle listener releases its port at
// once, so a reload can bind it again.
func TestUDPCloseReleasesPort(t *testing.T) {
	s, _ := newTestServer(t)
	l := listenUDPTest(t, s, newUDPRoute(t, "x", "127.0.0.1:9"))
	addr := l.Addr().String()
	l.Close()
	l2, err := s.ListenUDP(addr, Table{})
	if err != nil {
		t.Fatalf("rebinding a closed listener's address: %v", err)
	}
	l2.Close()
}

// TestUDPReload: new routes apply to new sessions; open sessions keep
// their backend.
func TestUDPReload(t *testing.T) {
	s, _ := newTestServer(t)
	one, two := startUDPBackend(t, namedEcho("one")), startUDPBackend(t, namedEcho("two"))
	l := listenUDPTest(t, s, newUDPRoute(t, "r", one.addr))
	a := udpClient(t, l.Addr())
	mustRoundTrip(t, a, []byte("a"), []byte("one:a"))
	l.SetTable(Table{Routes: []*Route{newUDPRoute(t, "r", two.addr)}})
	mustRoundTrip(t, a, []byte("a"), []byte("one:a"))
	b := udpClient(t, l.Addr())
	mustRoundTrip(t, b, []byte("b"), []byte("two:b"))
	// With no routes at all, a new client is dropped and counted.
	l.SetTable(Table{})
	c := udpClient(t, l.Addr())
	c.Write([]byte("c"))
	harness.Eventually(t, "a datagram without a route to be counted", func() bool { return s.UDP.DroppedNoRoute.Load() == 1 })
	mustRoundTrip(t, b, []byte("b"), []byte("two:b"))
}

// TestUDPCloseBackendConns: drain_timeout's CloseBackendConns ends the UDP
// sessions on the removed backend, and only those.
func TestUDPCloseBackendConns(t *testing.T) {
	s, sink := newTestServer(t)
	b0, b1 := startUDPBackend(t, namedEcho("b0")), startUDPBackend(t, namedEcho("b1"))
	rt := newUDPRoute(t, "drain", b0.addr, b1.addr)
	rt.AccessLog = true
	l := listenUDPTest(t, s, rt)
	x, y := udpClient(t, l.Addr()), udpClient(t, l.Addr())
	mustRoundTrip(t, x, []byte("x"), []byte("b0:x"))
	mustRoundTrip(t, y, []byte("y"), []byte("b1:y"))
	if n := s.CloseBackendConns(rt.Backends[0]); n != 1 {
		t.Fatalf("CloseBackendConns closed %d, want 1", n)
	}
	rec := sink.wait(t, "of the drained session", udpSessionEnded("drained"))
	if rec.attrs["backend"] != "b0" || l.Sessions() != 1 || rt.Backends[0].Active() != 0 {
		t.Errorf("ended %v; sessions %d, b0 active %d; want b0, 1, 0", rec.attrs["backend"], l.Sessions(), rt.Backends[0].Active())
	}
	mustRoundTrip(t, y, []byte("y2"), []byte("b1:y2"))
}

// TestUDPShards: a listener runs one shard per CPU on the same address;
// the kernel keeps each client on one shard (one session per client, never
// a duplicate on another shard), and the address is not silently shared
// with a second listener.
func TestUDPShards(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, echoReply)
	l := listenUDPTest(t, s, newUDPRoute(t, "shards", be.addr)).(*UDPListener)
	if got, want := len(l.shards), s.shardCount(); got != want {
		t.Fatalf("%d shards, want %d", got, want)
	}
	for _, sh := range l.shards {
		if sh.conn.LocalAddr().String() != l.Addr().String() {
			t.Errorf("shard bound to %v, listener to %v", sh.conn.LocalAddr(), l.Addr())
		}
	}
	const clients = 200
	for i := 0; i < clients; i++ {
		c := udpClient(t, l.Addr())
		for j := 0; j < 3; j++ {
			p := []byte(fmt.Sprint(i, j))
			mustRoundTrip(t, c, p, p)
		}
	}
	if got := s.UDP.SessionsTotal.Load(); got != clients {
		t.Errorf("%d sessions for %d clients", got, clients)
	}
	if len(l.shards) > 1 {
		// Sessions are spread over the shards (with 200 clients, a shard
		// with none would mean the kernel does not spread them).
		owned := make([]int, len(l.shards))
		for i, sh := range l.shards {
			owned[i] = int(sh.openSessions())
		}
		for i, n := range owned {
			if n == 0 {
				t.Errorf("shard %d owns no session (spread %v)", i, owned)
			}
		}
	}
	if _, err := s.ListenUDP(l.Addr().String(), Table{}); err == nil || !errors.Is(err, unix.EADDRINUSE) {
		t.Errorf("a second listener on %v: %v, want address already in use", l.Addr(), err)
	}
	if pc, err := net.ListenPacket("udp", l.Addr().String()); err == nil {
		pc.Close()
		t.Errorf("a plain socket could bind the listener's address")
	}
}

func TestBindUDP(t *testing.T) {
	for _, n := range []int{1, 3} {
		conns, err := bindUDP("127.0.0.1:0", n)
		if err != nil {
			t.Fatal(err)
		}
		if len(conns) != n {
			t.Fatalf("%d sockets, want %d", len(conns), n)
		}
		for _, c := range conns {
			if c.LocalAddr().String() != conns[0].LocalAddr().String() {
				t.Errorf("sockets on %v and %v", c.LocalAddr(), conns[0].LocalAddr())
			}
		}
		addr := conns[0].LocalAddr().String()
		if _, err := bindUDP(addr, n); !errors.Is(err, unix.EADDRINUSE) {
			t.Errorf("n=%d: binding %s again: %v, want address already in use", n, addr, err)
		}
		for _, c := range conns {
			c.Close()
		}
	}
}

// TestUDPBackendHostName: a backend given by host name (localhost, from
// /etc/hosts: no DNS traffic) is resolved.
func TestUDPBackendHostName(t *testing.T) {
	s, _ := newTestServer(t)
	be := startUDPBackend(t, namedEcho("byname"))
	_, port, _ := net.SplitHostPort(be.addr)
	l := listenUDPTest(t, s, newUDPRoute(t, "name", "localhost:"+port))
	mustRoundTrip(t, udpClient(t, l.Addr()), []byte("x"), []byte("byname:x"))
}
