package e2e

import (
	"bytes"
	be "encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// DNS-aware balancing (a UDP rule with dns = true): each query balanced on
// its own, its reply matched back by id and question. The backends are real
// dnsmasq servers started here; each answers with its own address, which
// tells which one answered.

func dnsModeConfig(port int, extra string, backends ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
[server]
udp_bind = "127.0.0.1:%d"
[[rules]]
name = "dns"
protocol = "udp"
dns = true
%s
`, port, extra)
	for i, a := range backends {
		fmt.Fprintf(&b, "[[rules.backends]]\nid = \"ns%d\"\naddress = %q\n", i+1, a)
	}
	return b.String()
}

// waitUp waits until the rule's backends are all up (their default health
// check, a DNS query, passed).
func waitUp(t *testing.T, p *harness.Proxy, ids ...string) {
	t.Helper()
	harness.WaitMetrics(t, p.MetricsURL(), "the backends up", func(m harness.Metrics) bool {
		for _, id := range ids {
			if m.Value("dynamic_proxy_backend_up", harness.Labels{"rule": "dns", "backend": id}) != 1 {
				return false
			}
		}
		return true
	})
}

// answerOf checks that reply a answers the query for name with id and
// returns the IPv4 address it gives.
func answerOf(a []byte, id uint16, name string) (netip.Addr, error) {
	if err := checkAnswer(a, id); err != nil {
		return netip.Addr{}, err
	}
	want := dnsQuery(id, name, 1)[12:] // the question as asked
	if len(a) < 12+len(want) || !bytes.Equal(a[12:12+len(want)], want) {
		return netip.Addr{}, fmt.Errorf("id %d: the reply is for another question than %s", id, name)
	}
	if len(a) < 4 {
		return netip.Addr{}, fmt.Errorf("id %d: no address", id)
	}
	ip, _ := netip.AddrFromSlice(a[len(a)-4:]) // the only answer's A record ends the message
	return ip, nil
}

// TestDNSModeOneSocketSpreadsOverBackends: one client socket sends 1,000
// queries (up to 50 in flight); with round robin they spread over three
// dnsmasq backends within ±15 %, and every query gets exactly its own
// answer, with its id.
func TestDNSModeOneSocketSpreadsOverBackends(t *testing.T) {
	answers := []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"}
	var addrs []string
	for _, a := range answers {
		addrs = append(addrs, startDnsmasqAnswering(t, a))
	}
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, dnsModeConfig(port, `router = "round_robin"`, addrs...)))
	waitUp(t, p, "ns1", "ns2", "ns3")

	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const queries, window = 1000, 50
	name := func(id uint16) string { return fmt.Sprintf("q%d.example.test", id) }
	got := map[uint16]int{}
	by := map[string]int{}
	sent := 0
	buf := make([]byte, 512)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for len(got) < queries {
		for ; sent < queries && sent-len(got) < window; sent++ {
			id := uint16(sent + 1)
			if _, err := c.Write(dnsQuery(id, name(id), 1)); err != nil {
				t.Fatal(err)
			}
		}
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d answered, then %v", len(got), queries, err)
		}
		id := be.BigEndian.Uint16(buf)
		ip, err := answerOf(buf[:n], id, name(id))
		if err != nil {
			t.Fatal(err)
		}
		if got[id]++; got[id] > 1 || id == 0 || int(id) > queries {
			t.Fatalf("a second answer, or one to no query: id %d", id)
		}
		by[ip.String()]++
	}
	for _, a := range answers {
		if n := by[a]; n < queries/3*85/100 || n > queries/3*115/100 {
			t.Errorf("backend answering %s answered %d of %d queries, want %d ± 15 %% (%v)", a, n, queries, queries/3, by)
		}
	}
	t.Logf("answers by backend: %v", by)
	// No more replies than queries: nothing duplicated on the way.
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(buf); err == nil {
		t.Errorf("an extra reply of %d bytes", n)
	}
	// The one client is one session, its queries the rule's requests.
	m := harness.WaitMetrics(t, p.MetricsURL(), "the requests counted", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_requests_total", harness.Labels{"rule": "dns"}) == queries
	})
	if v := m.Value("dynamic_proxy_connections_total", harness.Labels{"rule": "dns"}); v != 1 {
		t.Errorf("connections_total %v, want 1 session", v)
	}
}

// TestDNSModeCollidingIDs: two clients whose queries carry the same ids at
// the same time, through one backend socket, each get their own answers
// with their own ids (the proxy rewrites one client's ids on the way and
// restores them).
func TestDNSModeCollidingIDs(t *testing.T) {
	dns := startDnsmasqAnswering(t, "127.0.0.21")
	port := harness.FreePort(t)
	// One event loop: one socket to the backend, which both clients share.
	p := Start(t, harness.WriteConfig(t, strings.Replace(dnsModeConfig(port, "", dns), "[server]", "[server]\nworker_threads = 1", 1)))
	waitUp(t, p, "ns1")
	const rounds, each = 20, 16
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for who := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			buf := make([]byte, 512)
			for r := range rounds {
				// The same ids from both clients, for different names.
				name := func(id uint16) string { return fmt.Sprintf("c%d-r%d-%d.example.test", who, r, id) }
				for id := uint16(1); id <= each; id++ {
					c.Write(dnsQuery(id, name(id), 1))
				}
				got := map[uint16]bool{}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				for len(got) < each {
					n, err := c.Read(buf)
					if err != nil {
						errs <- fmt.Errorf("client %d round %d: %d of %d answers, then %v", who, r, len(got), each, err)
						return
					}
					id := be.BigEndian.Uint16(buf)
					if _, err := answerOf(buf[:n], id, name(id)); err != nil {
						errs <- fmt.Errorf("client %d round %d: %v", who, r, err)
						return
					}
					if got[id] {
						errs <- fmt.Errorf("client %d round %d: id %d answered twice", who, r, id)
						return
					}
					got[id] = true
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestDNSModeCollidingIDsRewritten: two clients' queries with the same id
// reach the backend on one socket with two different ids, and each client
// gets its own answer with its own id back. The backend holds the first
// query until the second is there, so both wait on the socket at once.
func TestDNSModeCollidingIDsRewritten(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	type query struct {
		from net.Addr
		q    []byte
	}
	seen := make(chan []query, 1)
	go func() {
		var qs []query
		buf := make([]byte, 512)
		for len(qs) < 2 {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			qs = append(qs, query{from, bytes.Clone(buf[:n])})
		}
		for i := len(qs) - 1; i >= 0; i-- { // answered in the other order
			r := bytes.Clone(qs[i].q)
			r[2] |= 0x80
			pc.WriteTo(r, qs[i].from)
		}
		seen <- qs
	}()
	port := harness.FreePort(t)
	Start(t, harness.WriteConfig(t, strings.Replace(dnsModeConfig(port, "[rules.health_check]\nenabled = false", pc.LocalAddr().String()),
		"[server]", "[server]\nworker_threads = 1", 1)))
	var conns []*net.UDPConn
	for who := range 2 {
		c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(dnsQuery(7, fmt.Sprintf("client%d.example.test", who), 1))
		conns = append(conns, c)
	}
	for who, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		want := dnsQuery(7, fmt.Sprintf("client%d.example.test", who), 1)
		want[2] |= 0x80
		if !bytes.Equal(buf[:n], want) {
			t.Errorf("client %d got %x, want its own answer with id 7 %x", who, buf[:n], want)
		}
	}
	qs := <-seen
	if qs[0].from.String() != qs[1].from.String() {
		t.Fatalf("the queries came from %v and %v: not one shared socket", qs[0].from, qs[1].from)
	}
	if a, b := be.BigEndian.Uint16(qs[0].q), be.BigEndian.Uint16(qs[1].q); a == b {
		t.Errorf("both queries reached the backend with id %d on one socket", a)
	}
	if be.BigEndian.Uint16(qs[0].q) != 7 {
		t.Errorf("the first query's id became %d: a free id is kept", be.BigEndian.Uint16(qs[0].q))
	}
}

// fakeDNS is a UDP server that answers each DNS query with the query
// itself, flagged a response (and truncated for names starting "tc"); it
// records what it received and answers nothing for names starting "mute".
type fakeDNS struct {
	conn net.PacketConn
	mu   sync.Mutex
	got  [][]byte
}

func startFakeDNS(t *testing.T) *fakeDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDNS{conn: pc}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := bytes.Clone(buf[:n])
			f.mu.Lock()
			f.got = append(f.got, q)
			f.mu.Unlock()
			if len(q) < 14 {
				continue
			}
			label := string(q[13 : 13+min(int(q[12]), len(q)-13)])
			if strings.HasPrefix(label, "mute") {
				continue
			}
			r := bytes.Clone(q)
			r[2] |= 0x80 // QR
			if strings.HasPrefix(label, "tc") {
				r[2] |= 0x02 // TC
			}
			pc.WriteTo(r, from)
		}
	}()
	return f
}

func (f *fakeDNS) received() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// TestDNSModeMalformedTruncatedAndUnanswered: datagrams that are not DNS
// queries (too short, a response, no question, a bad name) are counted and
// dropped and never reach the backend; a truncated (TC) reply reaches the
// client as the backend sent it; a query the backend never answers is
// forgotten after session_timeout and counted.
func TestDNSModeMalformedTruncatedAndUnanswered(t *testing.T) {
	f := startFakeDNS(t)
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, dnsModeConfig(port, `session_timeout = "300ms"
[rules.health_check]
enabled = false`, f.conn.LocalAddr().String())))
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	response := dnsQuery(5, "x.example.test", 1)
	response[2] |= 0x80
	noQuestion := dnsQuery(6, "x.example.test", 1)[:12]
	noQuestion[5] = 0
	badName := dnsQuery(7, "x.example.test", 1)
	badName[12] = 0xc0 // a compression pointer where the name starts
	junk := [][]byte{[]byte("hello"), {}, noQuestion, response, badName, dnsQuery(8, "x.example.test", 1)[:20]}
	for _, d := range junk {
		c.Write(d)
	}
	// A truncated reply passes as it came.
	q := dnsQuery(9, "tc.example.test", 1)
	c.Write(q)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(q)
	want[2] |= 0x82
	if !bytes.Equal(buf[:n], want) {
		t.Fatalf("reply %x, want the backend's TC reply %x", buf[:n], want)
	}
	for _, d := range f.received() {
		if !bytes.Equal(d, q) {
			t.Errorf("the backend received %x, which is not the one query", d)
		}
	}
	// A query never answered is forgotten, and counted, after session_timeout.
	c.Write(dnsQuery(10, "mute.example.test", 1))
	harness.WaitMetrics(t, p.MetricsURL(), "malformed and unanswered counted", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_listener_rejected_total", harness.Labels{"protocol": "udp", "reason": "dns_malformed"}) == float64(len(junk)) &&
			m.Value("dynamic_proxy_dns_dropped_total", harness.Labels{"rule": "dns", "backend": "ns1", "reason": "unanswered"}) == 1
	})
	// A reply that comes after that is for no waiting query: dropped.
	if got := len(f.received()); got != 2 {
		t.Errorf("the backend received %d datagrams, want the 2 queries", got)
	}
}

// TestDNSModeDefaultHealthCheckIsADNSQuery: a dns = true rule with no check
// of its own asks its backends a real DNS query: dnsmasq is up, a UDP
// server that answers with something else is down.
func TestDNSModeDefaultHealthCheckIsADNSQuery(t *testing.T) {
	dns := startDnsmasq(t)
	junk, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { junk.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := junk.ReadFrom(buf)
			if err != nil {
				return
			}
			r := bytes.Clone(buf[:n])
			r[0] ^= 0xff // another id: not the answer to the query
			r[2] |= 0x80
			junk.WriteTo(r, from)
		}
	}()
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, dnsModeConfig(port, `[rules.health_check]
interval = "100ms"
timeout = "50ms"
retries = 1
rise = 1`, dns, junk.LocalAddr().String())))
	harness.WaitMetrics(t, p.MetricsURL(), "dnsmasq up, the wrong-id server down", func(m harness.Metrics) bool {
		up := func(id string) float64 {
			return m.Value("dynamic_proxy_backend_up", harness.Labels{"rule": "dns", "backend": id})
		}
		return up("ns1") == 1 && up("ns2") == 0
	})
}

// askOnce sends one query for name with id on c and returns the address
// its answer gives.
func askOnce(c *net.UDPConn, id uint16, name string) (netip.Addr, error) {
	if _, err := c.Write(dnsQuery(id, name, 1)); err != nil {
		return netip.Addr{}, err
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return netip.Addr{}, err
	}
	return answerOf(buf[:n], id, name)
}

// TestDNSModeClientFollowsReload: a client that keeps asking is not held
// to the backends of its first query: after a reload that replaces the
// rule's backend, its next query goes to the new one (a session would keep
// its backend).
func TestDNSModeClientFollowsReload(t *testing.T) {
	a, b := startDnsmasqAnswering(t, "127.0.0.31"), startDnsmasqAnswering(t, "127.0.0.32")
	port := harness.FreePort(t)
	cfg := func(backend string) string {
		return strings.Replace(dnsModeConfig(port, "", backend), "[server]", "[server]\nwatch_config = false", 1)
	}
	path := harness.WriteConfig(t, cfg(a))
	p := Start(t, path)
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ip, err := askOnce(c, 1, "one.example.test"); err != nil || ip.String() != "127.0.0.31" {
		t.Fatalf("before the reload: %v %v", ip, err)
	}
	if err := os.WriteFile(path, []byte(cfg(b)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	p.WaitLog("config reloaded", "version=2")
	if ip, err := askOnce(c, 2, "two.example.test"); err != nil || ip.String() != "127.0.0.32" {
		t.Fatalf("after the reload, the same client: %v %v, want the new backend's 127.0.0.32", ip, err)
	}
}

// TestDNSModeDeadBackend: of two backends, one a closed port, the dead one
// is found by the rule's default health check (a DNS query) and taken out;
// then every query is answered, by the live one.
func TestDNSModeDeadBackend(t *testing.T) {
	dns := startDnsmasqAnswering(t, "127.0.0.41")
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close() // a closed port: ICMP port unreachable
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, dnsModeConfig(port, `[rules.health_check]
interval = "200ms"
timeout = "100ms"
retries = 1`, dns, deadAddr)))
	harness.WaitMetrics(t, p.MetricsURL(), "the dead backend down", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_backend_up", harness.Labels{"rule": "dns", "backend": "ns2"}) == 0
	})
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 50 {
		id := uint16(i + 1)
		if ip, err := askOnce(c, id, fmt.Sprintf("d%d.example.test", id)); err != nil || ip.String() != "127.0.0.41" {
			t.Fatalf("query %d: %v %v", i, ip, err)
		}
	}
}
