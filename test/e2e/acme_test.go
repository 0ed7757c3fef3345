package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// ACME against a real pebble (Debian's pebble package) on loopback, with
// dnsmasq answering *.acme.test with 127.0.0.1. Pebble validates for real:
// PEBBLE_VA_NOSLEEP only removes its random pause before validating, and
// PEBBLE_VA_ALWAYS_VALID is not set, so every certificate is issued after
// pebble's TLS-ALPN-01 (or HTTP-01) connection was answered by the proxy.

// pebbleServer is a running pebble.
type pebbleServer struct {
	t       *testing.T
	Dir     string // the ACME directory URL
	mgmt    string // management API base URL
	CAFile  string // the CA of pebble's own HTTPS (for [acme] ca_root)
	TLSPort int    // where pebble's VA connects for TLS-ALPN-01
	mu      sync.Mutex
	out     bytes.Buffer
	cmd     *exec.Cmd
}

func (p *pebbleServer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *pebbleServer) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

var ordersRE = regexp.MustCompile(`There are now (\d+) orders in the db`)

// orders is how many orders pebble has taken (its own log line).
func (p *pebbleServer) orders() int {
	m := ordersRE.FindAllStringSubmatch(p.log(), -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

// rootFile fetches pebble's issuing root from its management API (it is
// made at each start) and writes it beside the test's files.
func (p *pebbleServer) rootFile(dir string) (string, *x509.CertPool) {
	p.t.Helper()
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(p.CAFile)
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get(p.mgmt + "/roots/0")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		p.t.Fatalf("pebble /roots/0: %s %s", resp.Status, b)
	}
	f := filepath.Join(dir, "pebble-root.pem")
	os.WriteFile(f, b, 0o600)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b) {
		p.t.Fatalf("pebble root is not PEM: %q", b)
	}
	return f, roots
}

// startPebble runs pebble validating TLS-ALPN-01 on tlsPort and HTTP-01
// on httpPort of the address DNS gives, issuing certificates valid for
// validity (0: pebble's default), resolving with dns.
func startPebble(t *testing.T, dns string, tlsPort, httpPort int, validity time.Duration) *pebbleServer {
	t.Helper()
	bin, err := exec.LookPath("pebble")
	if err != nil {
		t.Fatal("pebble (Debian pebble) is needed: ", err)
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "pebble-https")
	leaf := ca.Issue(dir, "pebble", tlstest.Options{DNSNames: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}})
	port, mport := harness.FreePort(t), harness.FreePort(t)
	if httpPort == 0 {
		httpPort = harness.FreePort(t)
	}
	cfg := fmt.Sprintf(`{"pebble": {"listenAddress": "127.0.0.1:%d", "managementListenAddress": "127.0.0.1:%d",
  "certificate": %q, "privateKey": %q, "httpPort": %d, "tlsPort": %d, "ocspResponderURL": "",
  "externalAccountBindingRequired": false, "certificateValidityPeriod": %d}}`,
		port, mport, leaf.CertFile, leaf.KeyFile, httpPort, tlsPort, int(validity.Seconds()))
	cfgFile := filepath.Join(dir, "pebble.json")
	os.WriteFile(cfgFile, []byte(cfg), 0o600)
	p := &pebbleServer{t: t, Dir: fmt.Sprintf("https://127.0.0.1:%d/dir", port), mgmt: fmt.Sprintf("https://127.0.0.1:%d", mport),
		CAFile: ca.CAFile, TLSPort: tlsPort}
	p.cmd = exec.Command(bin, "-config", cfgFile, "-dnsserver", dns)
	p.cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("pebble log:\n%s", p.log())
		}
	})
	harness.Eventually(t, "pebble to listen", func() bool { return strings.Contains(p.log(), "ACME directory available") })
	return p
}

// startACMEDNS runs dnsmasq answering every name under acme.test with ip.
func startACMEDNS(t *testing.T, ip string) string {
	t.Helper()
	return runDnsmasq(t, "a.acme.test", "/acme.test/"+ip)
}

// acmeProxyConfig is an instance serving rule "web" (names, by ACME from
// pb) on bindHost:pb.TLSPort in front of echo; extra goes at the end.
func acmeProxyConfig(pb *pebbleServer, bindHost, storage string, echo *EchoServer, names []string, redisURL, extra string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	redis := ""
	if redisURL != "" {
		redis = fmt.Sprintf("[redis]\nurl = %q\n", redisURL)
	}
	return fmt.Sprintf(`
[server]
tcp_bind = "%s:0"
shutdown_timeout = "2s"
%s
[acme]
email = "ops@acme.test"
directory = %q
ca_root = %q
storage = %q
%s
[health_check]
enabled = false

[[rules]]
name = "web"
[rules.matcher]
type = "port"
port = %d
[rules.tls]
acme = [%s]
[[rules.backends]]
id = "echo"
address = %q
`, bindHost, redis, pb.Dir, pb.CAFile, storage, extra, pb.TLSPort, strings.Join(q, ", "), echo.Addr)
}

// acmeSClient runs openssl s_client to addr for name, verifying against the
// root file, and returns its output; ok when the chain and the name verify.
func acmeSClient(addr, name, root string) (string, bool) {
	cmd := exec.Command("openssl", "s_client", "-connect", addr, "-servername", name, "-CAfile", root,
		"-verify_return_error", "-verify_hostname", name, "-brief")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	return string(out), err == nil && strings.Contains(string(out), "Verification: OK")
}

// acmeSerial is the serial served at addr for name, verified against roots.
func acmeSerial(addr, name string, roots *x509.CertPool) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return servedSerial(c), nil
}

// TestACMEOneInstance: a rule with acme and two names gets both
// certificates from pebble by TLS-ALPN-01 on its own port; openssl
// s_client verifies them against pebble's root; traffic reaches the
// backend; the storage directory is 0700; pebble took one order per name;
// the status API and the metrics show each name.
func TestACMEOneInstance(t *testing.T) {
	dns := startACMEDNS(t, "127.0.0.1")
	pb := startPebble(t, dns, harness.FreePort(t), 0, 0)
	echo := StartEcho(t, "backend")
	dir := t.TempDir()
	storage := filepath.Join(dir, "acme-store")
	cfg := harness.WriteConfig(t, acmeProxyConfig(pb, "127.0.0.1", storage, echo, []string{"a.acme.test", "b.acme.test"}, "", ""))
	out, _, code := Run(t, "--validate", "--config", cfg)
	if code != 0 || !strings.Contains(out, "acme: directory "+pb.Dir) {
		t.Errorf("--validate (%d) does not say which directory is used:\n%s", code, out)
	}
	p := Start(t, cfg, "--log-level", "debug")
	addr := fmt.Sprintf("127.0.0.1:%d", pb.TLSPort)
	root, roots := pb.rootFile(dir)
	for _, name := range []string{"a.acme.test", "b.acme.test"} {
		harness.Eventually(t, "a pebble certificate for "+name, func() error {
			if out, ok := acmeSClient(addr, name, root); !ok {
				return fmt.Errorf("openssl s_client: %s", out)
			}
			return nil
		})
	}
	c, line := tlsDial(t, addr, "b.acme.test", roots, nil)
	c.Close()
	if line != "backend" {
		t.Errorf("through the ACME certificate: %q", line)
	}
	if fi, err := os.Stat(storage); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("storage directory: %v %v; want mode 0700", fi.Mode(), err)
	}
	if n := pb.orders(); n != 2 {
		t.Errorf("pebble took %d orders; want one per name (2)", n)
	}
	// Metrics and the status API show each name: valid until, next renewal.
	m := harness.Scrape(t, p.MetricsURL())
	for _, name := range []string{"a.acme.test", "b.acme.test"} {
		l := harness.Labels{"rule": "web", "name": name}
		exp, ren := m.Value("dynamic_proxy_acme_certificate_expiry_timestamp_seconds", l), m.Value("dynamic_proxy_acme_renewal_timestamp_seconds", l)
		if now := float64(time.Now().Unix()); exp < now+86400 || ren <= now || ren >= exp {
			t.Errorf("%s: expiry %v, renewal %v; want a future expiry after a future renewal", name, exp, ren)
		}
		if m.Value("dynamic_proxy_acme_certificate_present", l) != 1 || m.Value("dynamic_proxy_acme_orders_obtained_total", l) != 1 {
			t.Errorf("%s: present/obtained wrong", name)
		}
		if v := m.Value("dynamic_proxy_tls_certificate_expiry_seconds", harness.Labels{"rule": "web", "cert": "acme:" + name}); v < 86400 {
			t.Errorf("%s: tls_certificate_expiry_seconds = %v", name, v)
		}
	}
	resp, err := http.Get(p.AdminURL() + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Rules []struct {
			Name string
			ACME []struct {
				Name        string     `json:"name"`
				Serial      string     `json:"serial"`
				ValidUntil  *time.Time `json:"valid_until"`
				NextRenewal *time.Time `json:"next_renewal"`
				LastError   string     `json:"last_error"`
			} `json:"acme"`
		} `json:"rules"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if len(st.Rules) != 1 || len(st.Rules[0].ACME) != 2 || st.Rules[0].ACME[0].ValidUntil == nil || st.Rules[0].ACME[0].NextRenewal == nil ||
		st.Rules[0].ACME[0].Serial == "" || st.Rules[0].ACME[0].LastError != "" {
		t.Errorf("status API: %+v", st)
	}
	// Pebble validated each name by connecting to the rule's port, and the
	// proxy's handshake answered without dialling the backend.
	if n := p.Count("acme tls-alpn-01 challenge answered"); n < 2 {
		t.Errorf("%d tls-alpn-01 challenges answered by the proxy; want one per name at least", n)
	}
}

// testLB stands for the fleet's load balancer on the address DNS gives
// the names: each connection goes to the first instance that accepts it.
// While paused, connections wait (pebble's validations queue up).
type testLB struct {
	ln      net.Listener
	targets []string
	mu      sync.Mutex
	gate    chan struct{} // closed: not paused
}

func startTestLB(t *testing.T, addr string, targets []string, paused bool) *testLB {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	lb := &testLB{ln: ln, targets: targets, gate: make(chan struct{})}
	if !paused {
		close(lb.gate)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go lb.forward(c)
		}
	}()
	return lb
}

func (lb *testLB) release() {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	select {
	case <-lb.gate:
	default:
		close(lb.gate)
	}
}

func (lb *testLB) forward(c net.Conn) {
	defer c.Close()
	<-lb.gate
	for _, a := range lb.targets {
		b, err := net.DialTimeout("tcp", a, 2*time.Second)
		if err != nil {
			continue
		}
		defer b.Close()
		go func() { io.Copy(b, c); b.(*net.TCPConn).CloseWrite() }()
		io.Copy(c, b)
		return
	}
}

// waitFor checks cond until it holds or within has passed: for the waits
// longer than harness.Deadline (a lock's expiry, a certificate's lifetime).
func waitFor(t *testing.T, what string, within time.Duration, cond func() error) {
	t.Helper()
	end := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// acmeFleet starts n instances on one Redis, instance i on 127.0.0.(i+2)
// at pebble's TLS port behind a test load balancer on 127.0.0.1.
func acmeFleet(t *testing.T, pb *pebbleServer, redisURL string, n int, names []string, paused bool) ([]*harness.Proxy, []string, *testLB) {
	t.Helper()
	echo := StartEcho(t, "backend")
	keyFile := filepath.Join(t.TempDir(), "fleet.key")
	os.WriteFile(keyFile, []byte("a fleet secret of more than 16 bytes\n"), 0o600)
	var ps []*harness.Proxy
	var addrs []string
	for i := 0; i < n; i++ {
		host := fmt.Sprintf("127.0.0.%d", i+2)
		addrs = append(addrs, fmt.Sprintf("%s:%d", host, pb.TLSPort))
	}
	lb := startTestLB(t, fmt.Sprintf("127.0.0.1:%d", pb.TLSPort), addrs, paused)
	for i := 0; i < n; i++ {
		host := fmt.Sprintf("127.0.0.%d", i+2)
		cfg := harness.WriteConfig(t, acmeProxyConfig(pb, host, filepath.Join(t.TempDir(), "acme"), echo, names, redisURL,
			fmt.Sprintf("encryption_key_file = %q\n", keyFile)))
		ps = append(ps, StartNoWait(t, cfg))
	}
	for _, p := range ps {
		p.WaitLog("dynamic-proxy started")
	}
	return ps, addrs, lb
}

// TestACMEFleetOneOrderPerName: three instances on one redis-server order
// each name once between them (pebble's order count, and one "ordering"
// line per name in all their logs), and all three serve the same
// certificate for each name; the validation reaches whichever instance
// the load balancer picks, which answers from the challenge in Redis.
func TestACMEFleetOneOrderPerName(t *testing.T) {
	srv := redistest.Start(t)
	dns := startACMEDNS(t, "127.0.0.1")
	pb := startPebble(t, dns, harness.FreePort(t), 0, 0)
	names := []string{"a.acme.test", "b.acme.test"}
	ps, addrs, _ := acmeFleet(t, pb, srv.URL(), 3, names, false)
	_, roots := pb.rootFile(t.TempDir())
	for _, name := range names {
		var first string
		for i, addr := range addrs {
			harness.Eventually(t, fmt.Sprintf("instance %d to serve %s", i, name), func() error {
				s, err := acmeSerial(addr, name, roots)
				if err != nil {
					return err
				}
				if first == "" {
					first = s
				} else if s != first {
					return fmt.Errorf("serial %s, another instance serves %s", s, first)
				}
				return nil
			})
		}
	}
	if n := pb.orders(); n != len(names) {
		t.Errorf("pebble took %d orders for %d names; want one each", n, len(names))
	}
	ordering := 0
	for _, p := range ps {
		ordering += p.Count("acme: ordering certificate")
	}
	if ordering != len(names) {
		t.Errorf("%d instances' orders for %d names; want one each", ordering, len(names))
	}
	// In Redis, the certificates are there as they are and every private
	// key (the certificates' and the account's) is sealed.
	all, err := srv.Client().HGetAll(t.Context(), "dynamic-proxy:acme").Result()
	if err != nil {
		t.Fatal(err)
	}
	keys, crts := 0, 0
	for k, v := range all {
		switch {
		case strings.HasSuffix(k, ".key"):
			keys++
			if !strings.HasPrefix(v, "dp-enc1:") || strings.Contains(v, "PRIVATE KEY") {
				t.Errorf("%s is in Redis unencrypted", k)
			}
		case strings.HasSuffix(k, ".crt"):
			crts++
			if !strings.Contains(v, "BEGIN CERTIFICATE") {
				t.Errorf("%s: %q", k, v[:min(len(v), 40)])
			}
		}
	}
	if keys != len(names)+1 || crts != len(names) {
		t.Errorf("Redis holds %d keys and %d certificates; want one key per name and the account's, one certificate per name", keys, crts)
	}
}

// TestACMEFleetLockHolderKilled: the instance that holds a name's lock is
// killed mid-order (its validation held at the load balancer); once the
// lock expires another instance orders and both survivors serve the new
// certificate.
func TestACMEFleetLockHolderKilled(t *testing.T) {
	srv := redistest.Start(t)
	dns := startACMEDNS(t, "127.0.0.1")
	pb := startPebble(t, dns, harness.FreePort(t), 0, 0)
	ps, addrs, lb := acmeFleet(t, pb, srv.URL(), 3, []string{"k.acme.test"}, true)
	_, roots := pb.rootFile(t.TempDir())
	holder := -1
	harness.Eventually(t, "one instance to take the lock and order", func() bool {
		for i, p := range ps {
			if p.Count("acme: ordering certificate") > 0 {
				holder = i
				return true
			}
		}
		return false
	})
	// Mid-order: pebble has the order, its validation waits at the load
	// balancer.
	harness.Eventually(t, "the holder's order at pebble", func() bool { return pb.orders() == 1 })
	ps[holder].Cmd.Process.Kill()
	<-ps[holder].Exited()
	lb.release()
	var serial string
	for i, addr := range addrs {
		if i == holder {
			continue
		}
		waitFor(t, fmt.Sprintf("survivor %d to serve k.acme.test", i), 3*time.Minute, func() error {
			s, err := acmeSerial(addr, "k.acme.test", roots)
			if err != nil {
				return err
			}
			if serial != "" && s != serial {
				return fmt.Errorf("serial %s, the other survivor serves %s", s, serial)
			}
			serial = s
			return nil
		})
	}
	took := 0
	for i, p := range ps {
		if i != holder {
			took += p.Count("acme: certificate obtained")
		}
	}
	if took != 1 {
		t.Errorf("%d survivors obtained the certificate; want one (the other loads it)", took)
	}
	if n := pb.orders(); n != 2 {
		t.Errorf("pebble took %d orders; want 2: the killed holder's, left unfinished, and the one that finished", n)
	}
}

// TestACMERenewal: with 30-second certificates the certificate is renewed
// by itself, and a client making handshakes all along sees the serial
// change with not one failed handshake: the old certificate is served
// until the new one is there.
func TestACMERenewal(t *testing.T) {
	dns := startACMEDNS(t, "127.0.0.1")
	pb := startPebble(t, dns, harness.FreePort(t), 0, 30*time.Second)
	echo := StartEcho(t, "backend")
	dir := t.TempDir()
	cfg := harness.WriteConfig(t, acmeProxyConfig(pb, "127.0.0.1", filepath.Join(dir, "acme"), echo, []string{"r.acme.test"}, "", `renew_check_interval = "1s"`))
	p := Start(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", pb.TLSPort)
	_, roots := pb.rootFile(dir)
	var first string
	harness.Eventually(t, "the first certificate", func() (err error) { first, err = acmeSerial(addr, "r.acme.test", roots); return })

	var mu sync.Mutex
	var failures []string
	serials := map[string]int{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s, err := acmeSerial(addr, "r.acme.test", roots)
			mu.Lock()
			if err != nil {
				failures = append(failures, err.Error())
			} else {
				serials[s]++
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	waitFor(t, "the serial to change", 2*time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		for s, n := range serials {
			if s != first && n >= 5 {
				return nil
			}
		}
		return fmt.Errorf("serials seen: %v", serials)
	})
	close(stop)
	<-done
	if len(failures) > 0 {
		t.Errorf("%d failed handshakes across the renewal: %v", len(failures), failures[:min(len(failures), 5)])
	}
	t.Logf("handshakes by serial across the renewal: %v", serials)
	if p.Count("acme: certificate obtained", "renewal=true") < 1 {
		t.Error("no renewal logged")
	}
}

// TestACMERedisDownAtStart: an instance that got its certificate through
// Redis is restarted while Redis is down: it serves the certificate from
// its local copy.
func TestACMERedisDownAtStart(t *testing.T) {
	srv := redistest.Start(t)
	dns := startACMEDNS(t, "127.0.0.1")
	pb := startPebble(t, dns, harness.FreePort(t), 0, 0)
	echo := StartEcho(t, "backend")
	dir := t.TempDir()
	cfg := harness.WriteConfig(t, acmeProxyConfig(pb, "127.0.0.1", filepath.Join(dir, "acme"), echo, []string{"c.acme.test"}, srv.URL(), ""))
	p := Start(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", pb.TLSPort)
	_, roots := pb.rootFile(dir)
	var serial string
	harness.Eventually(t, "the certificate", func() (err error) { serial, err = acmeSerial(addr, "c.acme.test", roots); return })
	p.Signal(syscall.SIGTERM)
	p.Wait()
	srv.Kill()

	p2 := StartNoWait(t, cfg)
	p2.WaitLog("dynamic-proxy started")
	harness.Eventually(t, "the certificate with Redis down", func() error {
		s, err := acmeSerial(addr, "c.acme.test", roots)
		if err == nil && s != serial {
			return fmt.Errorf("serial %s, want the cached %s", s, serial)
		}
		return err
	})
	c, line := tlsDial(t, addr, "c.acme.test", roots, nil)
	c.Close()
	if line != "backend" {
		t.Errorf("through the cached certificate: %q", line)
	}
}

// TestACMEHTTP01: with challenges = ["http-01"] and http_port set, pebble
// validates by HTTP on that port, which the proxy answers.
func TestACMEHTTP01(t *testing.T) {
	dns := startACMEDNS(t, "127.0.0.1")
	hport := harness.FreePort(t)
	pb := startPebble(t, dns, harness.FreePort(t), hport, 0)
	echo := StartEcho(t, "backend")
	dir := t.TempDir()
	cfg := harness.WriteConfig(t, acmeProxyConfig(pb, "127.0.0.1", filepath.Join(dir, "acme"), echo, []string{"h.acme.test"}, "",
		fmt.Sprintf("challenges = [\"http-01\"]\nhttp_port = %d\n", hport)))
	p := Start(t, cfg, "--log-level", "debug")
	addr := fmt.Sprintf("127.0.0.1:%d", pb.TLSPort)
	root, _ := pb.rootFile(dir)
	harness.Eventually(t, "a pebble certificate by http-01", func() error {
		if out, ok := acmeSClient(addr, "h.acme.test", root); !ok {
			return fmt.Errorf("openssl s_client: %s", out)
		}
		return nil
	})
	if p.Count("acme: http-01 challenge answered") < 1 || p.Count("acme tls-alpn-01 challenge answered") != 0 {
		t.Errorf("want http-01 answered and no tls-alpn-01: %d, %d", p.Count("acme: http-01 challenge answered"), p.Count("acme tls-alpn-01 challenge answered"))
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/other", hport))
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("a request that is no challenge: %s", resp.Status)
		}
	}
}
