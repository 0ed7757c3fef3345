package proxy

import (
	"bytes"
	"context"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
)

// startDNS runs dnsmasq on 127.0.0.1 answering name with ips (nothing
// else: no upstream, no /etc/hosts) and returns a resolver asking it.
func startDNS(t *testing.T, name string, ips ...string) (*net.Resolver, *exec.Cmd, <-chan struct{}) {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Skip("dnsmasq is not installed (apt-get install dnsmasq)")
	}
	// dnsmasq binds the port for UDP and TCP; another process may take the
	// TCP one first, then dnsmasq exits and another port is tried.
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
		pc.Close()
		args := []string{"--keep-in-foreground", "--port=" + port, "--listen-address=127.0.0.1", "--bind-interfaces",
			"--no-resolv", "--no-hosts", "--user=root", "--pid-file="}
		for _, ip := range ips {
			args = append(args, "--host-record="+name+","+ip)
		}
		cmd := exec.Command(bin, args...)
		var out bytes.Buffer
		cmd.Stderr = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "udp", "127.0.0.1:"+port)
		}}
		up := false
		harness.Eventually(t, "dnsmasq to answer or exit", func() bool {
			select {
			case <-exited:
				return true
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := r.LookupNetIP(ctx, "ip", name)
			up = err == nil
			return up
		})
		if up {
			t.Cleanup(func() { cmd.Process.Kill(); <-exited })
			return r, cmd, exited
		}
		<-exited
		if attempt == 4 {
			t.Fatalf("dnsmasq exited: %s", out.String())
		}
	}
}

// TestTCPRealDNS: a backend named in a real DNS server (dnsmasq) with two
// A records: both addresses take connections; once the server is gone and
// the cached answer expired, connections go on to the last good answer.
func TestTCPRealDNS(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3"}
	port := backendsOnLoopbacks(t, ips...)
	dns, cmd, exited := startDNS(t, "svc.test", ips...)
	s, _ := newTestServer(t)
	clock := &testClock{t: time.Unix(1000, 0)}
	var failed atomic.Int64
	lookup := resolve.NetLookup(dns)
	s.resolver = resolve.New(resolve.Options{Now: clock.now, Timeout: time.Second,
		Lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			addrs, err := lookup(ctx, host)
			if err != nil {
				failed.Add(1)
			}
			return addrs, err
		}})
	addr := listen(t, s, newRoute(t, "dns", "svc.test:"+port))
	checkEveryAddressUsed(t, s, addr, ips)
	cmd.Process.Kill()
	<-exited
	clock.add(time.Hour)
	c := dial(t, addr) // served from the expired answer; starts the refresh
	readLine(t, c)
	c.Close()
	harness.Eventually(t, "the refresh to fail", func() bool { return failed.Load() > 0 })
	for i := range 4 {
		c := dial(t, addr)
		if got := readLine(t, c); got != ips[0] && got != ips[1] {
			t.Fatalf("connection %d with the DNS server gone: greeted by %q", i, got)
		}
		c.Close()
	}
}
