package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// UDPEcho is a UDP backend on 127.0.0.1 that answers each datagram with
// "NAME:" and the datagram.
type UDPEcho struct {
	Name string
	Addr string
	c    *net.UDPConn
	done chan struct{}
}

// StartUDPEcho starts a UDP echo backend named name: it answers each
// datagram with "name:" and the datagram, N times for one that starts "Nx:".
func StartUDPEcho(t testing.TB, name string) *UDPEcho {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	e := &UDPEcho{Name: name, Addr: c.LocalAddr().String(), c: c, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		buf := make([]byte, 65536)
		prefix := []byte(name + ":")
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf[len(prefix):])
			if err != nil {
				return
			}
			copy(buf, prefix)
			times := 1
			if p := buf[len(prefix) : len(prefix)+n]; len(p) >= 3 && p[0] >= '1' && p[0] <= '9' && p[1] == 'x' && p[2] == ':' {
				times = int(p[0] - '0') // "3x:..." is answered three times
			}
			for range times {
				c.WriteToUDPAddrPort(buf[:len(prefix)+n], from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-e.done })
	return e
}

// UDPExchange sends p from c and returns the first answer, resending every
// second (UDP may lose a datagram) until harness.Deadline.
func UDPExchange(c *net.UDPConn, p string) (string, error) {
	end := time.Now().Add(harness.Deadline)
	buf := make([]byte, 65536)
	for time.Now().Before(end) {
		if _, err := c.Write([]byte(p)); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return "", err
		}
	}
	return "", fmt.Errorf("no answer to %q within %v", p, harness.Deadline)
}

func dialUDP(t testing.TB, port int) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustExchange(t testing.TB, c *net.UDPConn, p, want string) {
	t.Helper()
	got, err := UDPExchange(c, p)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("sent %q, got %q, want %q", p, got, want)
	}
}

// fdList names the process's descriptors, for failure messages.
func fdList(pid int) []string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	var out []string
	for _, e := range ents {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		out = append(out, e.Name()+"="+target)
	}
	return out
}

func fdCount(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestUDPAndTCPInOneProcess runs TCP and UDP rules side by side in the
// binary: a TCP rule, a UDP rule on udp_bind, and a DNS-like UDP rule on a
// port matcher with max_responses = 1.
func TestUDPAndTCPInOneProcess(t *testing.T) {
	web := StartEcho(t, "web")
	u1, u2 := StartUDPEcho(t, "u1"), StartUDPEcho(t, "u2")
	ns := StartUDPEcho(t, "ns")
	tcpPort, udpPort, dnsPort := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
udp_bind = "127.0.0.1:%d"
[logging]
access_log = true

[[rules]]
name = "web"
[[rules.backends]]
id = "web"
address = %q

[[rules]]
name = "game"
protocol = "udp"
session_timeout = "1s"
[[rules.backends]]
id = "u1"
address = %q
[[rules.backends]]
id = "u2"
address = %q

[[rules]]
name = "dns"
protocol = "udp"
max_responses = 1
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "ns"
address = %q
`, tcpPort, udpPort, web.Addr, u1.Addr, u2.Addr, dnsPort, ns.Addr))
	p := Start(t, cfg)
	p.WaitLog("listening", "protocol=udp", fmt.Sprintf("127.0.0.1:%d", udpPort))
	p.WaitLog("listening", "protocol=udp", fmt.Sprintf("127.0.0.1:%d", dnsPort))

	if name, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", tcpPort)); err != nil || name != "web" {
		t.Fatalf("tcp rule: %q %v", name, err)
	}
	// Two clients of the game rule: one session each, spread round robin,
	// each keeping its backend.
	a, b := dialUDP(t, udpPort), dialUDP(t, udpPort)
	mustExchange(t, a, "a1", "u1:a1")
	mustExchange(t, b, "b1", "u2:b1")
	mustExchange(t, a, "a2", "u1:a2")
	mustExchange(t, b, "b2", "u2:b2")
	// A 64 KiB datagram, the largest IPv4 carries.
	big := strings.Repeat("x", 65507-len("u1:"))
	mustExchange(t, a, big, "u1:"+big)

	// DNS-shaped: one query, one answer, and the session is over.
	q := dialUDP(t, dnsPort)
	mustExchange(t, q, "query", "ns:query")
	line := p.WaitLog("udp session closed", "rule=dns", "end=max_responses")
	if !strings.Contains(line, "datagrams_in=1") || !strings.Contains(line, "datagrams_out=1") {
		t.Errorf("dns session log: %s", line)
	}
	// Idle game sessions end after their 1s session_timeout.
	p.WaitLog("udp session closed", "rule=game", "end=idle_timeout")
}

// TestUDPBinaryDescriptors opens 2,000 sessions through the binary and
// checks that its descriptor count returns to the baseline once they
// expire. The sessions live 60 s while they are counted (however slow the
// machine); a reload then shortens session_timeout to 1 s, which applies to
// open sessions too.
func TestUDPBinaryDescriptors(t *testing.T) {
	be := StartUDPEcho(t, "e")
	port := harness.FreePort(t)
	config := func(timeout string) string {
		return fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
watch_config = false # no inotify descriptor opening after the baseline
[[rules]]
name = "u"
protocol = "udp"
session_timeout = %q
[[rules.backends]]
id = "e"
address = %q
`, port, timeout, be.Addr)
	}
	cfg := harness.WriteConfig(t, config("60s"))
	p := Start(t, cfg)
	pid := p.Cmd.Process.Pid
	base := fdCount(t, pid)
	baseList := fdList(pid)

	const n = 2000
	conns := make([]*net.UDPConn, n)
	for i := range conns {
		conns[i] = dialUDP(t, port)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("e:%d", i)
			if got, err := UDPExchange(c, fmt.Sprint(i)); err != nil || got != want {
				errs <- fmt.Errorf("client %d: got %q (%v), want %q", i, got, err, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := fdCount(t, pid); got < base+n {
		t.Errorf("descriptors with %d sessions: %d, want at least %d (one socket per session)", n, got, base+n)
	}
	for _, c := range conns {
		c.Close()
	}
	if err := os.WriteFile(cfg, []byte(config("1s")), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Cmd.Process.Signal(syscall.SIGHUP)
	p.WaitLog("config reloaded")
	harness.Eventually(t, "descriptors back to the baseline after the sessions expired", func() error {
		if got := fdCount(t, pid); got != base {
			return fmt.Errorf("descriptors %d, want the baseline %d: %v (baseline %v)", got, base, fdList(pid), baseList)
		}
		return nil
	})
}

// TestUDPGracefulShutdown: on SIGTERM, a new client gets nothing while an
// open session still gets its replies; the process exits when the last
// session has ended (by max_responses here), well before shutdown_timeout.
func TestUDPGracefulShutdown(t *testing.T) {
	be := StartUDPEcho(t, "e")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
shutdown_timeout = "20s"
[logging]
access_log = true
[[rules]]
name = "u"
protocol = "udp"
max_responses = 2 # per datagram: the session ends with its fourth reply to two
[[rules.backends]]
id = "e"
address = %q
`, port, be.Addr))
	p := Start(t, cfg)
	old := dialUDP(t, port)
	mustExchange(t, old, "before", "e:before")

	p.Signal(syscall.SIGTERM)
	if line := p.WaitLog("shutting down"); !strings.Contains(line, "udp_sessions=1") {
		t.Errorf("shutdown log does not count the open session: %s", line)
	}
	mustExchange(t, old, "3x:during", "e:3x:during") // replies 2, 3 and 4
	late := dialUDP(t, port)
	late.Write([]byte("late"))
	late.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := late.Read(make([]byte, 100)); err == nil {
		t.Errorf("a new client got %d bytes during shutdown", n)
	}
	p.WaitLog("udp session closed", "end=max_responses")
	p.WaitLog("shutdown complete")
	if code := p.Wait(); code != 0 {
		t.Errorf("exit code %d", code)
	}
	if n := p.Count("shutdown timeout"); n != 0 {
		t.Errorf("shutdown ended at shutdown_timeout (%d lines), not with the last session", n)
	}
}

// TestUDPReloadKeepsSessions: a reload that replaces the backend sends new
// clients to the new one while an open session stays on its backend.
func TestUDPReloadKeepsSessions(t *testing.T) {
	one, two := StartUDPEcho(t, "one"), StartUDPEcho(t, "two")
	port := harness.FreePort(t)
	conf := func(addr string) string {
		return fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
watch_config = false
[[rules]]
name = "u"
protocol = "udp"
[[rules.backends]]
id = "b"
address = %q
`, port, addr)
	}
	cfg := harness.WriteConfig(t, conf(one.Addr))
	p := Start(t, cfg)
	a := dialUDP(t, port)
	mustExchange(t, a, "x", "one:x")
	if err := os.WriteFile(cfg, []byte(conf(two.Addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	p.WaitLog("config reloaded", "version=2")
	mustExchange(t, a, "y", "one:y")
	b := dialUDP(t, port)
	mustExchange(t, b, "z", "two:z")
}

// TestUDPSessionKeysRejectedOnTCP: --validate names the key set on a TCP rule.
func TestUDPSessionKeysRejectedOnTCP(t *testing.T) {
	cfg := harness.WriteConfig(t, `
[[rules]]
name = "web"
max_responses = 1
[[rules.backends]]
id = "a"
address = "127.0.0.1:9"
`)
	_, stderr, code := Run(t, "--validate", "-c", cfg)
	if code != 1 || !strings.Contains(stderr, "config.toml:4: rules[0].max_responses: only UDP rules have sessions") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
}
