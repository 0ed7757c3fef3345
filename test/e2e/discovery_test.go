package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/discovery"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// dnsServer is a real dnsmasq on a free loopback port, answering only from
// its own data (--local=/test/: a name it does not know is NXDOMAIN, never
// forwarded) with a TTL of 1 s. Its A records are in a hosts file the test
// rewrites (SetHosts, then SIGHUP); SRV records come from its arguments.
type dnsServer struct {
	Addr  string
	hosts string
	cmd   *exec.Cmd
}

func startDNS(t *testing.T, hosts string, args ...string) *dnsServer {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Fatal("dnsmasq (Debian dnsmasq-base) is needed: ", err)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	d := &dnsServer{hosts: filepath.Join(t.TempDir(), "hosts")}
	if err := os.WriteFile(d.hosts, []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	d.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	argv := append([]string{"--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
		"--listen-address=127.0.0.1", "--bind-interfaces", fmt.Sprintf("--port=%d", port), "--pid-file=",
		"--user=" + u.Username, "--log-facility=-", "--local=/test/", "--local-ttl=1", "--addn-hosts=" + d.hosts}, args...)
	d.cmd = exec.Command(bin, argv...)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Kill)
	harness.Eventually(t, "dnsmasq to answer", func() error {
		_, err := discovery.Lookup(context.Background(), discovery.Query{Type: "a", Host: "ready.test", Port: 1, Server: d.Addr, Timeout: 200 * time.Millisecond})
		return err
	})
	return d
}

// SetHosts rewrites the hosts file, has dnsmasq read it again (SIGHUP) and
// waits until it answers host with exactly want (ip:port on port).
func (d *dnsServer) SetHosts(t *testing.T, content, host string, port int, want ...string) {
	t.Helper()
	if err := os.WriteFile(d.hosts, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	slices.Sort(want)
	harness.Eventually(t, "dnsmasq to answer the new records", func() error {
		a, err := discovery.Lookup(context.Background(), discovery.Query{Type: "a", Host: host, Port: port, Server: d.Addr, Timeout: 200 * time.Millisecond})
		if err != nil {
			return err
		}
		var got []string
		for _, ep := range a.Endpoints {
			got = append(got, ep.Addr.String())
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("answers %v, want %v", got, want)
		}
		return nil
	})
}

// Kill stops dnsmasq (SIGKILL).
func (d *dnsServer) Kill() {
	if d.cmd.Process != nil {
		d.cmd.Process.Kill()
		d.cmd.Wait()
	}
}

// echoesOn starts an echo backend named names[i] on 127.0.0.(2+i):port.
func echoesOn(t *testing.T, port int, names ...string) []*EchoServer {
	t.Helper()
	out := make([]*EchoServer, len(names))
	for i, n := range names {
		out[i] = StartEchoOn(t, n, fmt.Sprintf("127.0.0.%d:%d", 2+i, port))
	}
	return out
}

// freePortOnAll is a port free on 127.0.0.1–127.0.0.4 a moment ago.
func freePortOnAll(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := harness.FreePort(t)
		ok := true
		for i := 2; i <= 4 && ok; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", i, port))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port free on 127.0.0.2-4")
	return 0
}

// discoveryConfig is a proxy on listen whose rule web takes its backends
// from the discovery entry disc, with fast health checks.
func discoveryConfig(listen int, router, disc string) string {
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"

[health_check]
interval = "200ms"
timeout = "150ms"
retries = 1
rise = 1

[[rules]]
name = "web"
router = %q

[[rules.discovery]]
%s
`, listen, router, disc)
}

// greetings makes n connections through addr and counts the greeting of each.
func greetings(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		g, err := harness.Greeting(addr)
		if err != nil {
			t.Fatalf("connection through the proxy: %v", err)
		}
		got[g]++
	}
	return got
}

// clientLoop connects through addr again and again until stopped, and
// counts greetings and errors.
type clientLoop struct {
	turn   sync.Mutex // held for each connection; paused holds it between two
	mu     sync.Mutex
	seen   map[string]int
	errs   []string
	last   []string // the last greetings, newest last
	stop   atomic.Bool
	done   chan struct{}
	byName map[string]time.Time // when each name was first seen
}

func startClientLoop(addr string) *clientLoop {
	l := &clientLoop{seen: map[string]int{}, done: make(chan struct{}), byName: map[string]time.Time{}}
	go func() {
		defer close(l.done)
		for !l.stop.Load() {
			l.turn.Lock()
			g, err := harness.Greeting(addr)
			l.turn.Unlock()
			l.mu.Lock()
			if err != nil {
				l.errs = append(l.errs, err.Error())
			} else {
				l.seen[g]++
				if _, ok := l.byName[g]; !ok {
					l.byName[g] = time.Now()
				}
				l.last = append(l.last, g)
				if len(l.last) > 20 {
					l.last = l.last[1:]
				}
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// lastAll reports whether the last 20 greetings were all name.
func (l *clientLoop) lastAll(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.last) < 20 {
		return false
	}
	for _, g := range l.last {
		if g != name {
			return false
		}
	}
	return true
}

// between runs f with no connection of the loop in flight: a backend
// killed in f cannot reset a connection its kernel accepted and the
// process never did (closing a listening socket resets those, whatever
// the proxy does).
func (l *clientLoop) between(f func()) {
	l.turn.Lock()
	defer l.turn.Unlock()
	f()
}

func (l *clientLoop) reset() {
	l.mu.Lock()
	l.last = nil
	l.mu.Unlock()
}

func (l *clientLoop) finish(t *testing.T) map[string]int {
	t.Helper()
	l.stop.Store(true)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) > 0 {
		t.Errorf("%d client errors, first: %s", len(l.errs), l.errs[0])
	}
	return l.seen
}

const webHosts3 = "127.0.0.2 web.test\n127.0.0.3 web.test\n127.0.0.4 web.test\n"

// startWeb3 starts three echo backends (a, b, c on 127.0.0.2–4), dnsmasq
// answering web.test with their addresses, and the proxy discovering
// them; it returns once all three passed their first health check.
func startWeb3(t *testing.T, hosts string, names ...string) (*harness.Proxy, *dnsServer, string, int) {
	t.Helper()
	port := freePortOnAll(t)
	echoesOn(t, port, names...)
	dns := startDNS(t, hosts)
	listen := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, discoveryConfig(listen, "round_robin",
		fmt.Sprintf("name = \"web.test:%d\"\nresolver = %q\nmin_ttl = \"1s\"\nmax_ttl = \"1m\"\nempty_grace = \"30s\"", port, dns.Addr))))
	p.WaitLog("discovery: answer applied", "name=web.test")
	harness.Eventually(t, "every discovered backend up", func() bool { return p.Count("backend up", "passed its first") >= strings.Count(hosts, "\n") })
	return p, dns, fmt.Sprintf("127.0.0.1:%d", listen), port
}

// TestDiscoveryEveryAddressGetsTraffic: an A name with three addresses
// gives three backends, and round robin sends each a third.
func TestDiscoveryEveryAddressGetsTraffic(t *testing.T) {
	_, _, addr, _ := startWeb3(t, webHosts3, "a", "b", "c")
	got := greetings(t, addr, 30)
	if got["a"] != 10 || got["b"] != 10 || got["c"] != 10 {
		t.Fatalf("30 connections went %v, want 10 to each of a, b, c", got)
	}
}

// TestDiscoveryAddedAddressGetsTraffic: an address added to the name gets
// traffic at the next refresh (the TTL, 1 s), while a client loop runs
// without a single error.
func TestDiscoveryAddedAddressGetsTraffic(t *testing.T) {
	p, dns, addr, port := startWeb3(t, "127.0.0.2 web.test\n127.0.0.3 web.test\n", "a", "b", "c")
	if !strings.Contains(p.WaitLog("discovery: answer applied"), "next_refresh=1s") {
		t.Fatalf("the refresh does not follow the 1 s TTL: %s", p.WaitLog("discovery: answer applied"))
	}
	loop := startClientLoop(addr)
	harness.Eventually(t, "the loop reaching a and b", func() bool { return loop.seen2("a", "b") })
	totals := func() map[string]int64 {
		out := map[string]int64{}
		for _, b := range adminStatus(t, p).Rules[0].Backends {
			out[b.ID] = b.Total
		}
		return out
	}
	aID := fmt.Sprintf("web.test:127.0.0.2:%d", port)
	before := totals()
	added := time.Now()
	dns.SetHosts(t, webHosts3, "web.test", port, fmt.Sprintf("127.0.0.2:%d", port), fmt.Sprintf("127.0.0.3:%d", port), fmt.Sprintf("127.0.0.4:%d", port))
	harness.Eventually(t, "the added address c to get traffic", func() bool { return loop.seen2("c") })
	loop.mu.Lock()
	took := loop.byName["c"].Sub(added)
	loop.mu.Unlock()
	seen := loop.finish(t)
	t.Logf("c got its first connection %s after its record was added (TTL 1 s); loop: %v", took.Round(time.Millisecond), seen)
	p.WaitLog("discovery: backends changed", "backends_added=[web/web.test:127.0.0.4:")
	// a stayed: the same backend, its counter carried on rather than reset.
	if after := totals(); before[aID] == 0 || after[aID] < before[aID] {
		t.Fatalf("backend a's total connections %d before the change, %d after: not kept", before[aID], after[aID])
	}
}

// TestBackupBackendTakesOverAndGivesBack: a static backend with backup =
// true gets no connection while the primary is up, takes them when it is
// killed and gives them back when it returns, a client loop seeing no
// error throughout.
func TestBackupBackendTakesOverAndGivesBack(t *testing.T) {
	primary := StartEcho(t, "primary")
	spare := StartEcho(t, "spare")
	listen := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
interval = "200ms"
timeout = "150ms"
retries = 1
rise = 1
[[rules]]
name = "web"
[[rules.backends]]
id = "primary"
address = %q
[[rules.backends]]
id = "spare"
address = %q
backup = true
`, listen, primary.Addr, spare.Addr)))
	addr := fmt.Sprintf("127.0.0.1:%d", listen)
	if got := greetings(t, addr, 10); got["primary"] != 10 {
		t.Fatalf("with the primary up, 10 connections went %v", got)
	}
	loop := startClientLoop(addr)
	loop.between(primary.Close)
	p.WaitLog("backend down", primary.Addr)
	loop.reset()
	harness.Eventually(t, "the backup to take over", func() bool { return loop.lastAll("spare") })
	primary = StartEchoOn(t, "primary", primary.Addr)
	p.WaitLog("backend up", primary.Addr)
	loop.reset()
	harness.Eventually(t, "the primary to take its connections back", func() bool { return loop.lastAll("primary") })
	t.Logf("client loop through failover to the backup and back: %v", loop.finish(t))
}

func (l *clientLoop) seen2(names ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range names {
		if l.seen[n] == 0 {
			return false
		}
	}
	return true
}

// TestDiscoveryRemovedAddressDrains: an address removed from the name gets
// no new connection, while a stream opened to it before runs on to its
// end, every byte echoed back exactly.
func TestDiscoveryRemovedAddressDrains(t *testing.T) {
	p, dns, addr, port := startWeb3(t, webHosts3, "a", "b", "c")
	var held net.Conn
	var heldR *bufio.Reader
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "c\n" {
			held, heldR = c, r
			break
		}
		c.Close()
	}
	if held == nil {
		t.Fatal("three connections in round robin, none to c")
	}
	defer held.Close()
	dns.SetHosts(t, "127.0.0.2 web.test\n127.0.0.3 web.test\n", "web.test", port, fmt.Sprintf("127.0.0.2:%d", port), fmt.Sprintf("127.0.0.3:%d", port))
	p.WaitLog("discovery: backends changed", "backends_removed=[web/web.test:127.0.0.4:", "draining_connections=1")
	if got := greetings(t, addr, 20); got["c"] != 0 || got["a"] != 10 || got["b"] != 10 {
		t.Fatalf("after c left the name, 20 new connections went %v, want 10 to each of a and b", got)
	}
	// The stream to c: 4 MiB out, 4 MiB back, byte for byte.
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	errc := make(chan error, 1)
	go func() {
		_, err := held.Write(payload)
		if err == nil {
			err = held.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	held.SetReadDeadline(time.Now().Add(harness.Deadline))
	back, err := io.ReadAll(heldR)
	if err != nil {
		t.Fatalf("reading the stream back: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing the stream: %v", err)
	}
	if !bytes.Equal(back, payload) {
		t.Fatalf("the stream to the removed backend came back with %d bytes, not the %d sent, or different", len(back), len(payload))
	}
}

// TestDiscoveryKeepsTheLastAnswerWhenDNSDies: with dnsmasq gone, refreshes
// fail, the failure is logged, counted and shown, and the last answer's
// three backends keep serving.
func TestDiscoveryKeepsTheLastAnswerWhenDNSDies(t *testing.T) {
	p, dns, addr, port := startWeb3(t, webHosts3, "a", "b", "c")
	dns.Kill()
	p.WaitLog("discovery: lookup failed; keeping the last good answer", "name=web.test", "endpoints=3")
	harness.WaitMetrics(t, p.MetricsURL(), "a discovery failure counted", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_discovery_failures_total", harness.Labels{"rule": "web", "name": fmt.Sprintf("web.test:%d", port)}) > 0
	})
	if got := greetings(t, addr, 30); got["a"] != 10 || got["b"] != 10 || got["c"] != 10 {
		t.Fatalf("with the DNS server dead, 30 connections went %v, want 10 to each", got)
	}
	st := adminStatus(t, p)
	d := st.Rules[0].Discovery
	if len(d) != 1 || d[0].State != "stale" || len(d[0].Endpoints) != 3 || d[0].LastError == "" || d[0].Failures == 0 {
		t.Fatalf("status of the name: %+v, want stale with 3 endpoints and the error", d)
	}
	for _, b := range st.Rules[0].Backends {
		if !strings.HasPrefix(b.Source, "web.test:") {
			t.Fatalf("backend %s: source %q", b.ID, b.Source)
		}
	}
}

type statusDoc struct {
	Rules []struct {
		Name     string `json:"name"`
		Backends []struct {
			ID     string `json:"id"`
			Source string `json:"source"`
			Tier   int    `json:"tier"`
			Total  int64  `json:"total_connections"`
		} `json:"backends"`
		Discovery []struct {
			Name      string   `json:"name"`
			State     string   `json:"state"`
			Endpoints []string `json:"endpoints"`
			LastError string   `json:"last_error"`
			Failures  int64    `json:"failures"`
			NextIn    float64  `json:"next_refresh_in_seconds"`
		} `json:"discovery"`
	} `json:"rules"`
}

func adminStatus(t *testing.T, p *harness.Proxy) statusDoc {
	t.Helper()
	resp, err := http.Get(p.AdminURL() + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st statusDoc
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// srvArgs are dnsmasq arguments for SRV records of _web._tcp.srv.test:
// one per (target, ip, port, priority, weight).
func srvArgs(records ...[5]string) []string {
	var out []string
	for _, r := range records {
		out = append(out, fmt.Sprintf("--srv-host=_web._tcp.srv.test,%s,%s,%s,%s", r[0], r[2], r[3], r[4]),
			fmt.Sprintf("--host-record=%s,%s", r[0], r[1]))
	}
	return out
}

// TestDiscoverySRVWeights: SRV weights 3 and 1 split 2,000 connections of
// the weighted router 3:1, within ±10 %.
func TestDiscoverySRVWeights(t *testing.T) {
	a := StartEchoOn(t, "a", "127.0.0.2:0")
	b := StartEchoOn(t, "b", "127.0.0.3:0")
	dns := startDNS(t, "", srvArgs(
		[5]string{"a.srv.test", "127.0.0.2", portOf(a.Addr), "0", "3"},
		[5]string{"b.srv.test", "127.0.0.3", portOf(b.Addr), "0", "1"})...)
	listen := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, discoveryConfig(listen, "weighted",
		fmt.Sprintf("name = \"_web._tcp.srv.test\"\ntype = \"srv\"\nresolver = %q\nmin_ttl = \"1s\"", dns.Addr))))
	p.WaitLog("discovery: answer applied", "name=_web._tcp.srv.test", "w=3", "w=1")
	harness.Eventually(t, "both SRV backends up", func() bool { return p.Count("backend up", "passed its first") >= 2 })
	got := greetings(t, fmt.Sprintf("127.0.0.1:%d", listen), 2000)
	if got["a"] < 1350 || got["a"] > 1650 || got["a"]+got["b"] != 2000 {
		t.Fatalf("2,000 connections went %v, want a 1,500 ± 10 %% and b the rest", got)
	}
	t.Logf("SRV weights 3:1 over 2,000 connections: %v", got)
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// TestDiscoverySRVPriorityFailover: the SRV record of priority 1 takes the
// connections when the priority 0 backend is killed, and gives them back
// when it returns; a client loop meanwhile sees no error.
func TestDiscoverySRVPriorityFailover(t *testing.T) {
	first := StartEchoOn(t, "first", "127.0.0.2:0")
	second := StartEchoOn(t, "second", "127.0.0.3:0")
	dns := startDNS(t, "", srvArgs(
		[5]string{"p0.srv.test", "127.0.0.2", portOf(first.Addr), "0", "1"},
		[5]string{"p1.srv.test", "127.0.0.3", portOf(second.Addr), "1", "1"})...)
	listen := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, discoveryConfig(listen, "round_robin",
		fmt.Sprintf("name = \"_web._tcp.srv.test\"\ntype = \"srv\"\nresolver = %q\nmin_ttl = \"1s\"", dns.Addr))))
	harness.Eventually(t, "both SRV backends up", func() bool { return p.Count("backend up", "passed its first") >= 2 })
	addr := fmt.Sprintf("127.0.0.1:%d", listen)
	if got := greetings(t, addr, 10); got["first"] != 10 {
		t.Fatalf("with both up, 10 connections went %v, want all to the priority 0 backend", got)
	}
	st := adminStatus(t, p)
	tiers := map[string]int{}
	for _, b := range st.Rules[0].Backends {
		tiers[b.ID] = b.Tier
	}
	if len(tiers) != 2 || tiers["_web._tcp.srv.test:127.0.0.3:"+portOf(second.Addr)] != 1 {
		t.Fatalf("backend tiers %v, want the priority 1 record in tier 1", tiers)
	}
	loop := startClientLoop(addr)
	loop.between(first.Close)
	p.WaitLog("backend down", "127.0.0.2:"+portOf(first.Addr))
	loop.reset()
	harness.Eventually(t, "the priority 1 backend to take over", func() bool { return loop.lastAll("second") })
	first = StartEchoOn(t, "first", first.Addr)
	p.WaitLog("backend up", "127.0.0.2:"+portOf(first.Addr), "passed 1")
	loop.reset()
	harness.Eventually(t, "the priority 0 backend to take its connections back", func() bool { return loop.lastAll("first") })
	seen := loop.finish(t)
	t.Logf("client loop through failover and give-back: %v", seen)
}

// TestValidateShowsDiscovery: --validate asks each name once and lists the
// backends it gives.
func TestValidateShowsDiscovery(t *testing.T) {
	dns := startDNS(t, "127.0.0.2 web.test\n127.0.0.3 web.test\n")
	cfg := harness.WriteConfig(t, discoveryConfig(harness.FreePort(t), "round_robin",
		fmt.Sprintf("name = \"web.test:8080\"\nresolver = %q\nmin_ttl = \"1s\"\n\n[[rules.discovery]]\nname = \"gone.test:80\"\nresolver = %q", dns.Addr, dns.Addr)))
	out, errOut, code := Run(t, "-c", cfg, "--validate")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"web: tcp, router round_robin (round_robin), 0 backends and those of 2 DNS names (below); health:",
		"discovery: 2",
		"web: a web.test:8080 @" + dns.Addr + ": NOERROR, 2 backends, ttl 1s, refresh every 1s",
		"web.test:127.0.0.2:8080 127.0.0.2:8080 weight 1",
		"web.test:127.0.0.3:8080 127.0.0.3:8080 weight 1",
		"web: a gone.test:80 @" + dns.Addr + ": NXDOMAIN, 0 backends",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--validate output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, `warning: rule "web": discovery a gone.test:80: NXDOMAIN`) {
		t.Errorf("no warning for the name without records:\n%s", errOut)
	}
}

// TestDiscoveryHashIsTheSameOnTwoInstances: two proxies that see the same
// answer (whatever order its records come in) build the same Maglev
// table, so every client address goes to the same backend through either.
func TestDiscoveryHashIsTheSameOnTwoInstances(t *testing.T) {
	port := freePortOnAll(t)
	echoesOn(t, port, "a", "b", "c")
	dns := startDNS(t, webHosts3)
	var addrs []string
	for range 2 {
		listen := harness.FreePort(t)
		p := Start(t, harness.WriteConfig(t, discoveryConfig(listen, "hash",
			fmt.Sprintf("name = \"web.test:%d\"\nresolver = %q\nmin_ttl = \"1s\"", port, dns.Addr))))
		harness.Eventually(t, "every discovered backend up", func() bool { return p.Count("backend up", "passed its first") >= 3 })
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", listen))
	}
	seen := map[string]int{}
	for i := 10; i < 60; i++ {
		var got [2]string
		for j, addr := range addrs {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(i))}, Timeout: harness.Deadline}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(harness.Deadline))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			got[j] = line
		}
		if got[0] != got[1] {
			t.Fatalf("client 127.0.1.%d: %q through one instance, %q through the other", i, got[0], got[1])
		}
		seen[got[0]]++
	}
	if len(seen) != 3 {
		t.Fatalf("50 client addresses hashed onto %v, want all three backends used", seen)
	}
}
