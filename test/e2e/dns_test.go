package e2e

import (
	be "encoding/binary"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// startDnsmasq runs a real DNS server (Debian's dnsmasq) on a free
// loopback port, authoritative for example.test (A 127.0.0.9, AAAA ::9)
// and forwarding nothing, and returns its address once it answers.
func startDnsmasq(t *testing.T) string {
	t.Helper()
	return startDnsmasqAnswering(t, "127.0.0.9")
}

// startDnsmasqAnswering starts dnsmasq answering every name under
// example.test with the IPv4 address a (and ::9), and returns its address.
func startDnsmasqAnswering(t *testing.T, a string) string {
	t.Helper()
	return runDnsmasq(t, "example.test", "/example.test/"+a, "/example.test/::9")
}

// runDnsmasq runs dnsmasq on a free loopback port with one --address= per
// entry of addresses (as "/domain/ip") and forwarding nothing, and returns
// its address once it answers an A query for probe.
func runDnsmasq(t *testing.T, probe string, addresses ...string) string {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Fatal("dnsmasq (Debian dnsmasq-base) is needed: ", err)
	}
	port := harness.FreePort(t)
	args := []string{"--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--listen-address=127.0.0.1", "--bind-interfaces", fmt.Sprintf("--port=%d", port), "--pid-file=",
		"--user=nobody"}
	for _, a := range addresses {
		args = append(args, "--address="+a)
	}
	cmd := exec.Command(bin, append(args, "--log-facility=-")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	harness.Eventually(t, "dnsmasq to answer", func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		c.Write(dnsQuery(1, probe, 1))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		return checkAnswer(buf[:n], 1)
	})
	return addr
}

// dnsQuery is a DNS query for name of type qtype (1 A, 28 AAAA) with id.
func dnsQuery(id uint16, name string, qtype uint16) []byte {
	q := be.BigEndian.AppendUint16(nil, id)
	q = append(q, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD; one question
	for _, label := range strings.Split(name, ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	q = append(q, 0)
	q = be.BigEndian.AppendUint16(q, qtype)
	return be.BigEndian.AppendUint16(q, 1) // IN
}

// checkAnswer reports whether a is a successful answer, with at least one
// record, to the query with id.
func checkAnswer(a []byte, id uint16) error {
	switch {
	case len(a) < 12:
		return fmt.Errorf("a %d-byte reply", len(a))
	case be.BigEndian.Uint16(a) != id:
		return fmt.Errorf("reply id %d, want %d", be.BigEndian.Uint16(a), id)
	case a[2]&0x80 == 0 || a[3]&0x0f != 0:
		return fmt.Errorf("not a successful response: flags %x", a[2:4])
	case be.BigEndian.Uint16(a[6:]) == 0:
		return fmt.Errorf("no answer record")
	}
	return nil
}

func dnsRuleConfig(port int, backend string) string {
	return fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
[logging]
access_log = true
[health_check]
enabled = false
[[rules]]
name = "dns"
protocol = "udp"
max_responses = 1
[[rules.backends]]
id = "dnsmasq"
address = %q
`, port, backend)
}

// TestDNSPipelinedQueriesEachGetTheirAnswer: with max_responses = 1, 1,000
// client sockets that each send an A and an AAAA query at once (as glibc's
// resolver does) get 2,000 answers from a real dnsmasq, each to its own
// query, none lost.
func TestDNSPipelinedQueriesEachGetTheirAnswer(t *testing.T) {
	dns := startDnsmasq(t)
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, dnsRuleConfig(port, dns)))
	const sockets, workers = 1000, 20
	var mu sync.Mutex
	var failures []string
	answered := 0
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < sockets; i += workers {
				got, err := pipelined(port, uint16(2*i+1))
				mu.Lock()
				answered += got
				if err != nil && len(failures) < 10 {
					failures = append(failures, fmt.Sprintf("socket %d: %v", i, err))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if answered != 2*sockets {
		t.Fatalf("%d answers to %d queries; first failures:\n%s", answered, 2*sockets, strings.Join(failures, "\n"))
	}
	// Every session ended by max_responses once it had answered every query
	// it carried: both, or one when the first answer came before the second
	// query reached the proxy (that query then opened a session of its own).
	harness.Eventually(t, "every session's access log line", func() bool {
		return p.Count("udp session closed", "datagrams_in=2", "datagrams_out=2")*2+p.Count("udp session closed", "datagrams_in=1", "datagrams_out=1") >= 2*sockets
	})
	if all, ok := p.Count("udp session closed"), p.Count("udp session closed", "end=max_responses"); ok != all {
		t.Errorf("%d of %d sessions ended by max_responses", ok, all)
	}
}

// pipelined sends an A query (id) and an AAAA query (id+1) for
// example.test from one new socket before reading, and returns how many of
// the two got their own answer.
func pipelined(port int, id uint16) (int, error) {
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	want := map[uint16]bool{id: true, id + 1: true}
	if _, err := c.Write(dnsQuery(id, "example.test", 1)); err != nil {
		return 0, err
	}
	if _, err := c.Write(dnsQuery(id+1, "example.test", 28)); err != nil {
		return 0, err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	got := 0
	for len(want) > 0 {
		n, err := c.Read(buf)
		if err != nil {
			return got, fmt.Errorf("%d of 2 answers, then %v", got, err)
		}
		rid := be.BigEndian.Uint16(buf)
		if !want[rid] {
			return got, fmt.Errorf("an answer with id %d, not one of ours", rid)
		}
		if err := checkAnswer(buf[:n], rid); err != nil {
			return got, err
		}
		delete(want, rid)
		got++
	}
	return got, nil
}

// TestDNSThroughTheProxyWithDig: dig, the real client, resolves A and AAAA
// through the proxy from a real dnsmasq.
func TestDNSThroughTheProxyWithDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Fatal("dig (Debian bind9-dnsutils) is needed: ", err)
	}
	dns := startDnsmasq(t)
	port := harness.FreePort(t)
	Start(t, harness.WriteConfig(t, dnsRuleConfig(port, dns)))
	for qtype, want := range map[string]string{"A": "127.0.0.9", "AAAA": "::9"} {
		out, err := exec.Command(dig, "@127.0.0.1", "-p", fmt.Sprint(port), "example.test", qtype, "+short", "+tries=1", "+time=5").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("dig %s: %v %q, want %q", qtype, err, out, want)
		}
	}
}

// TestDNSHealthCheck: a dns_query check asks each backend a real DNS
// query: dnsmasq passes; a UDP port that answers anything but DNS, and one
// that answers nothing, are marked down.
func TestDNSHealthCheck(t *testing.T) {
	dns := startDnsmasq(t)
	junk, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { junk.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := junk.ReadFrom(buf)
			if err != nil {
				return
			}
			junk.WriteTo([]byte("not dns"), from)
		}
	}()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
[[rules]]
name = "dns"
protocol = "udp"
max_responses = 1
[rules.health_check]
dns_query = "example.test"
interval = "100ms"
timeout = "50ms"
retries = 1
rise = 1
[[rules.backends]]
id = "dnsmasq"
address = %q
[[rules.backends]]
id = "junk"
address = %q
[[rules.backends]]
id = "silent"
address = %q
`, port, dns, junk.LocalAddr(), silent.LocalAddr())))
	harness.WaitMetrics(t, p.MetricsURL(), "dnsmasq up, junk and silent down", func(m harness.Metrics) bool {
		up := func(id string) float64 {
			return m.Value("dynamic_proxy_backend_up", harness.Labels{"rule": "dns", "backend": id})
		}
		return up("dnsmasq") == 1 && up("junk") == 0 && up("silent") == 0
	})
	p.WaitLog("backend down", "backends=[dns/junk]", "not a DNS answer", "udp dns checks")
	for i := range 20 { // only dnsmasq answers now
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(dnsQuery(uint16(i), "example.test", 1))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		c.Close()
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		if err := checkAnswer(buf[:n], uint16(i)); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
}

// TestServerResolver: server.resolver names the DNS server backend host
// names are looked up with — here a dnsmasq on loopback answering
// example.test with 127.0.0.9 — at start-up and on the data path.
func TestServerResolver(t *testing.T) {
	dns := startDnsmasq(t)
	be := StartEchoOn(t, "named", "127.0.0.9:0")
	port := harness.FreePort(t)
	Start(t, harness.WriteConfig(t, proxyConfig(port, "example.test:"+portOf(be.Addr), fmt.Sprintf("resolver = %q", dns))))
	if got, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port)); err != nil || got != "named" {
		t.Fatalf("through the backend named example.test: %q %v", got, err)
	}
	out, errOut, code := Run(t, "--validate", "-c", harness.WriteConfig(t, proxyConfig(port, "example.test:80", `resolver = "127.0.0.1:53:x"`)))
	if code != 1 || !strings.Contains(errOut, `server.resolver: want "ip:port" or "ip" (port 53) of a DNS server, got "127.0.0.1:53:x"`) {
		t.Errorf("a bad resolver: exit %d\n%s%s", code, out, errOut)
	}
}
