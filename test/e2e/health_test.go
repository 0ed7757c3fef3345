package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// hcBackend is a TCP backend that greets with "NAME\n" then echoes (like
// StartEcho), or runs a handler of its own; it can be killed (its listener
// closed: new connections are refused) and restarted on the same address.
type hcBackend struct {
	t        testing.TB
	Name     string
	Addr     string
	handle   func(c net.Conn, n int64)
	accepted atomic.Int64 // connections since the start

	mu sync.Mutex
	ln net.Listener
}

func startHCBackend(t testing.TB, name string, handle func(c net.Conn, n int64)) *hcBackend {
	t.Helper()
	b := &hcBackend{t: t, Name: name, Addr: "127.0.0.1:0", handle: handle}
	if handle == nil {
		b.handle = func(c net.Conn, _ int64) {
			io.WriteString(c, name+"\n")
			io.Copy(c, c)
		}
	}
	b.start()
	t.Cleanup(b.kill)
	return b
}

func (b *hcBackend) start() {
	b.t.Helper()
	ln, err := net.Listen("tcp", b.Addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.mu.Lock()
	b.ln, b.Addr = ln, ln.Addr().String()
	b.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := b.accepted.Add(1)
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(harness.Deadline))
				b.handle(c, n)
			}()
		}
	}()
}

// kill closes the listener; connections already accepted run on.
func (b *hcBackend) kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
}

// pongHandler answers "PING\r\n" with "+PONG\r\n" when good() and with
// "-ERR\r\n" otherwise (a Redis that is up but failing).
func pongHandler(good func(n int64) bool) func(net.Conn, int64) {
	return func(c net.Conn, n int64) {
		buf := make([]byte, 64)
		if _, err := c.Read(buf); err != nil {
			return
		}
		if good(n) {
			io.WriteString(c, "+PONG\r\n")
		} else {
			io.WriteString(c, "-ERR\r\n")
		}
	}
}

// load keeps `workers` clients connecting through the proxy, each reading
// the greeting, until stop. A kill of a backend takes the write side of
// pause, so that no connection is mid-handshake with it at that instant (the
// kernel resets connections still queued on a closed listener, with any
// proxy); every connection before and after is counted.
type load struct {
	addr     string
	stopc    chan struct{}
	wg       sync.WaitGroup
	pause    sync.RWMutex
	ok       atomic.Int64
	mu       sync.Mutex
	failures []string
	seen     map[string]int
}

func startLoad(t *testing.T, addr string, workers int) *load {
	l := &load{addr: addr, stopc: make(chan struct{}), seen: map[string]int{}}
	for i := 0; i < workers; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stopc:
					return
				default:
				}
				l.pause.RLock()
				name, err := harness.Greeting(addr)
				l.pause.RUnlock()
				l.mu.Lock()
				if err != nil {
					l.failures = append(l.failures, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
				} else {
					l.ok.Add(1)
					l.seen[name]++
				}
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (l *load) stop() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}

// waitOK waits until n more connections succeeded.
func (l *load) waitOK(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	harness.Eventually(t, "load making progress", func() error {
		if got := l.ok.Load(); got < target {
			return fmt.Errorf("%d of %d connections", got, target)
		}
		return nil
	})
}

func (l *load) seenCount(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[name]
}

func (l *load) failed() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.failures...)
}

// killDuringLoad kills b between two connections of every worker.
func (l *load) kill(b *hcBackend) time.Time {
	l.pause.Lock()
	defer l.pause.Unlock()
	at := time.Now()
	b.kill()
	return at
}

var logTime = regexp.MustCompile(`\btime=(\S+)`)

// lineTime is the time stamp of a log line of the proxy.
func lineTime(t *testing.T, line string) time.Time {
	t.Helper()
	m := logTime.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no time in log line %q", line)
	}
	ts, err := time.Parse(time.RFC3339Nano, m[1])
	if err != nil {
		t.Fatalf("log time %q: %v", m[1], err)
	}
	return ts
}

func twoBackends(port int, a, b *hcBackend, health string) string {
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
%s
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
`, port, health, a.Addr, b.Addr)
}

// TestHealthKilledBackendUnderLoad: with active checks only, a backend
// killed under continuous load is marked down after retries failed checks,
// no client connection fails
// meanwhile (a failed dial goes to the other backend), and once restarted
// it is marked up again after rise passed checks and takes traffic again.
func TestHealthKilledBackendUnderLoad(t *testing.T) {
	const interval, timeout, retries, rise = 300 * time.Millisecond, 150 * time.Millisecond, 3, 2
	a, b := startHCBackend(t, "a", nil), startHCBackend(t, "b", nil)
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, twoBackends(port, a, b, fmt.Sprintf(
		"interval = %q\ntimeout = %q\nretries = %d\nrise = %d\npassive_failures = 0", interval, timeout, retries, rise))))
	proxyAddr := fmt.Sprintf("127.0.0.1:%d", port)

	l := startLoad(t, proxyAddr, 4)
	l.waitOK(t, 50)
	if l.seenCount("b") == 0 {
		t.Fatal("b took no traffic before it was killed")
	}
	killed := l.kill(b)
	down := p.WaitLog("backend down", "address="+b.Addr)
	t.Logf("marked down %v after the kill (interval × retries + timeout = %v)", lineTime(t, down).Sub(killed).Round(time.Millisecond), interval*retries+timeout)
	// Down after exactly retries failed checks: the checks, not a clock,
	// decide it.
	if want := fmt.Sprintf("(failed %d tcp connect checks in a row)", retries); !strings.Contains(down, want) {
		t.Errorf("down line does not say %s: %s", want, down)
	}
	if !strings.Contains(down, "connect: connection refused") || !strings.Contains(down, "level=WARN") || !strings.Contains(down, "detection=active") {
		t.Errorf("down line lacks the level or the reason: %s", down)
	}
	l.waitOK(t, 50) // traffic goes on, all to a

	restarted := time.Now()
	b.start()
	up := p.WaitLog("backend up", "address="+b.Addr)
	upAfter := lineTime(t, up).Sub(restarted)
	t.Logf("marked up %v after the restart (rise × interval = %v)", upAfter.Round(time.Millisecond), rise*interval)
	// rise passes take at least rise-1 intervals after the first one.
	if upAfter < (rise-1)*interval-50*time.Millisecond {
		t.Errorf("up %v after the restart: sooner than %d checks %v apart allow", upAfter, rise, interval)
	}
	if !strings.Contains(up, fmt.Sprintf("passed %d tcp connect checks in a row", rise)) {
		t.Errorf("up line: %s", up)
	}
	before := l.seenCount("b")
	harness.Eventually(t, "b taking traffic after coming back up", func() bool { return l.seenCount("b") > before })
	l.stop()
	if f := l.failed(); len(f) > 0 {
		t.Fatalf("%d of %d client connections failed:\n%s", len(f), int(l.ok.Load())+len(f), strings.Join(f, "\n"))
	}
	t.Logf("%d client connections, none failed", l.ok.Load())
}

// TestHealthPassive: with active checks off, dial failures of real traffic
// mark a backend down at once, and the cool-down brings it back.
func TestHealthPassive(t *testing.T) {
	a, b := startHCBackend(t, "a", nil), startHCBackend(t, "b", nil)
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, twoBackends(port, a, b,
		"enabled = false\npassive_failures = 2\npassive_window = \"10s\"\npassive_cooldown = \"2s\"")))
	l := startLoad(t, fmt.Sprintf("127.0.0.1:%d", port), 2)
	l.waitOK(t, 20)
	l.kill(b)
	down := p.WaitLog("backend down", "address="+b.Addr)
	if !strings.Contains(down, "detection=passive") || !strings.Contains(down, "2 dials of traffic failed in a row within 10s") {
		t.Errorf("down line: %s", down)
	}
	l.waitOK(t, 100) // all to a: b is not dialed while down
	b.start()
	p.WaitLog("backend up", "address="+b.Addr, "passive cool-down of 2s is over")
	before := l.seenCount("b")
	harness.Eventually(t, "b taking traffic after the cool-down", func() bool { return l.seenCount("b") > before })
	l.stop()
	if f := l.failed(); len(f) > 0 {
		t.Fatalf("%d client connections failed:\n%s", len(f), strings.Join(f, "\n"))
	}
	// Without passive detection every other connection would have dialed b
	// in vain; with it, about passive_failures did (a few more when the
	// cool-down ended before b was restarted).
	if n := p.Count("backend dial failed", "backend=b"); n > 10 {
		t.Errorf("%d dials to b failed in %d connections: passive detection did not keep traffic away", n, l.ok.Load())
	}
}

// TestHealthSendExpectTCP: a send/expect check passes on the expected reply
// and fails on another; the failing backend gets no traffic.
func TestHealthSendExpectTCP(t *testing.T) {
	good := startHCBackend(t, "good", pongHandler(func(int64) bool { return true }))
	bad := startHCBackend(t, "bad", pongHandler(func(int64) bool { return false }))
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[[rules]]
name = "redis"
[rules.health_check]
interval = "50ms"
timeout = "40ms"
send = "PING\r\n"
expect = "+PONG"
[[rules.backends]]
id = "good"
address = %q
[[rules.backends]]
id = "bad"
address = %q
`, port, good.Addr, bad.Addr)))
	down := p.WaitLog("backend down", "address="+bad.Addr)
	if !strings.Contains(down, `reply \"-ERR`) || !strings.Contains(down, `does not start with \"+PONG\"`) {
		t.Errorf("down line: %s", down)
	}
	if !strings.Contains(down, "tcp send/expect") {
		t.Errorf("down line does not name the check: %s", down)
	}
	// The good one passes: it keeps being checked and never goes down.
	n := good.accepted.Load()
	harness.Eventually(t, "10 more checks of the good backend", func() bool { return good.accepted.Load() >= n+10 })
	if c := p.Count("backend down", "address="+good.Addr); c != 0 {
		t.Errorf("the backend that answers +PONG went down")
	}
	if c := p.Count("backend down"); c != 1 {
		t.Errorf("%d down lines, want 1", c)
	}
}

// TestHealthSendExpectUDP: a UDP rule's check passes only on the expected
// reply; a backend that stays silent or answers wrongly goes down, and
// clients are served by the one that passes.
func TestHealthSendExpectUDP(t *testing.T) {
	udp := func(reply func(req []byte) []byte) string {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				if r := reply(buf[:n]); r != nil {
					pc.WriteTo(r, from)
				}
			}
		}()
		return pc.LocalAddr().String()
	}
	good := udp(func(req []byte) []byte {
		if string(req) == "ping" {
			return []byte("pong")
		}
		return append([]byte("good:"), req...)
	})
	silent := udp(func([]byte) []byte { return nil })
	wrong := udp(func([]byte) []byte { return []byte("nope") })
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
[[rules]]
name = "dgram"
protocol = "udp"
[rules.health_check]
interval = "50ms"
timeout = "40ms"
send = "ping"
expect = "pong"
[[rules.backends]]
id = "good"
address = %q
[[rules.backends]]
id = "silent"
address = %q
[[rules.backends]]
id = "wrong"
address = %q
`, port, good, silent, wrong)))
	silentDown := p.WaitLog("backend down", "address="+silent)
	if !strings.Contains(silentDown, "no reply from udp "+silent+" within 40ms") || !strings.Contains(silentDown, "udp send/expect") {
		t.Errorf("silent backend's down line: %s", silentDown)
	}
	wrongDown := p.WaitLog("backend down", "address="+wrong)
	if !strings.Contains(wrongDown, `reply \"nope\" does not start with \"pong\"`) {
		t.Errorf("wrong backend's down line: %s", wrongDown)
	}
	// Every new client (a new session) is served by the healthy backend.
	for i := 0; i < 6; i++ {
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(harness.Deadline))
		msg := fmt.Sprintf("hello %d", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		c.Close()
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if got := string(buf[:n]); got != "good:"+msg {
			t.Errorf("client %d got %q, want the healthy backend's reply", i, got)
		}
	}
	if c := p.Count("backend down", "address="+good); c != 0 {
		t.Error("the backend that answers pong went down")
	}
}

// TestHealthFlapping: a backend whose checks alternate pass, fail, pass...
// never changes state with retries = rise = 3.
func TestHealthFlapping(t *testing.T) {
	var flapping atomic.Bool
	var down atomic.Bool // every check fails
	f := startHCBackend(t, "flap", pongHandler(func(n int64) bool {
		if down.Load() {
			return false
		}
		return !flapping.Load() || n%2 == 0
	}))
	steady := startHCBackend(t, "steady", pongHandler(func(int64) bool { return true }))
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
interval = "40ms"
timeout = "30ms"
retries = 3
rise = 3
send = "PING\r\n"
expect = "+PONG"
[[rules]]
name = "r"
[[rules.backends]]
id = "flap"
address = %q
[[rules.backends]]
id = "steady"
address = %q
`, port, f.Addr, steady.Addr)))
	waitChecks := func(n int64) {
		t.Helper()
		target := f.accepted.Load() + n
		harness.Eventually(t, fmt.Sprintf("%d more checks of the backend", n), func() error {
			if got := f.accepted.Load(); got < target {
				return fmt.Errorf("%d of %d checks reached it", got, target)
			}
			return nil
		})
	}
	waitChecks(2)
	flapping.Store(true)
	waitChecks(30)
	if c := p.Count("backend down"); c != 0 {
		t.Fatalf("a flapping backend went down:\n%s", p.Log())
	}
	// From down, flapping never brings it up either.
	down.Store(true)
	p.WaitLog("backend down", "address="+f.Addr)
	down.Store(false)
	waitChecks(30)
	if c := p.Count("backend up"); c != 0 {
		t.Fatalf("a flapping backend came up:\n%s", p.Log())
	}
}

// TestHealthSurvivesReload: a down backend stays down across SIGHUP reloads,
// one that keeps its check and one whose check settings changed, and it is
// not re-detected (one down line in all).
func TestHealthSurvivesReload(t *testing.T) {
	a := startHCBackend(t, "a", pongHandler(func(int64) bool { return true }))
	b := startHCBackend(t, "b", pongHandler(func(int64) bool { return false }))
	port := harness.FreePort(t)
	render := func(interval, extra string) string {
		return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
watch_config = false
[health_check]
interval = %q
timeout = "30ms"
retries = 2
rise = 2
send = "PING\r\n"
expect = "+PONG"
[[rules]]
name = "r"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
%s`, port, interval, a.Addr, b.Addr, extra)
	}
	cfg := harness.WriteConfig(t, render("50ms", ""))
	p := Start(t, cfg)
	p.WaitLog("backend down", "address="+b.Addr)
	waitChecks := func(n int64) {
		t.Helper()
		target := b.accepted.Load() + n
		harness.Eventually(t, fmt.Sprintf("%d more checks of b", n), func() error {
			if got := b.accepted.Load(); got < target {
				return fmt.Errorf("%d of %d checks reached b", got, target)
			}
			return nil
		})
	}
	reload := func(content string, version int) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		p.Signal(syscall.SIGHUP)
		p.WaitLog("config reloaded", "version="+strconv.Itoa(version))
	}
	// A reload that adds a rule naming b keeps b's check and its state, and
	// the new rule shares it: b is down for it from the start.
	extraPort := harness.FreePort(t)
	extra := fmt.Sprintf("[[rules]]\nname = \"extra\"\n[rules.matcher]\ntype = \"port\"\nport = %d\n[[rules.backends]]\nid = \"b\"\naddress = %q\n", extraPort, b.Addr)
	reload(render("50ms", extra), 2)
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", extraPort), harness.Deadline); err == nil {
		c.SetDeadline(time.Now().Add(harness.Deadline))
		if n, err := c.Read(make([]byte, 1)); err == nil || n > 0 {
			t.Errorf("rule extra served a client from b, which is down")
		}
		c.Close()
	}
	p.WaitLog("no backend reachable", "rule=extra")
	waitChecks(5)
	// A reload that changes the check settings keeps the down state.
	reload(render("60ms", extra), 3)
	waitChecks(5)
	if n := p.Count("backend down", "address="+b.Addr); n != 1 {
		t.Errorf("b went down %d times: its health did not survive the reload\n%s", n, p.Log())
	}
	if n := p.Count("backend up"); n != 0 {
		t.Errorf("a backend came up across a reload:\n%s", p.Log())
	}
	if n := p.Count("backend dial failed"); n != 0 {
		t.Errorf("traffic was sent to the down backend")
	}
	// And the proxy still serves, from a only.
	for i := 0; i < 4; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), harness.Deadline)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(harness.Deadline))
		io.WriteString(c, "PING\r\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || line != "+PONG\r\n" {
			t.Fatalf("client %d got %q, %v", i, line, err)
		}
	}
}

// TestHealthAllDown: when every backend is down, a new connection is closed
// at once (not held until a timeout) and the log says so, rate-limited.
func TestHealthAllDown(t *testing.T) {
	a, b := startHCBackend(t, "a", nil), startHCBackend(t, "b", nil)
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, twoBackends(port, a, b, "interval = \"50ms\"\ntimeout = \"40ms\"\nretries = 1")))
	a.kill()
	b.kill()
	p.WaitLog("backend down", "address="+a.Addr)
	p.WaitLog("backend down", "address="+b.Addr)
	const clients = 30
	start := time.Now()
	for i := 0; i < clients; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), harness.Deadline)
		if err != nil {
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
			continue // reset before connect() returned: closed at once too
		}
		c.SetDeadline(time.Now().Add(harness.Deadline))
		n, err := c.Read(make([]byte, 1))
		c.Close()
		if err == nil || n > 0 {
			t.Fatalf("client %d read %d bytes, want the connection closed", i, n)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("client %d still held after %v", i, harness.Deadline)
		}
	}
	elapsed := time.Since(start)
	// Every client was turned away for want of a backend, none after a dial
	// or a connect timeout.
	noBackend := harness.Labels{"rule": "web", "reason": "no_backend"}
	m := harness.WaitMetrics(t, p.MetricsURL(), fmt.Sprintf("%d no_backend rejections", clients), func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_connections_rejected_total", noBackend) == clients
	})
	if n := m.Value("dynamic_proxy_connections_rejected_total", harness.Labels{"rule": "web", "reason": "connect_failed"}); n > 0 {
		t.Errorf("%v connections rejected as connect_failed, want none", n)
	}
	p.WaitLog("no backend reachable", "no backend available")
	lines := p.Count("no backend reachable")
	if max := int(elapsed/time.Second) + 2; lines > max {
		t.Errorf("%d 'no backend reachable' lines for %d clients in %v: not rate-limited", lines, clients, elapsed)
	}
	if n := p.Count("backend dial failed"); n != 0 {
		t.Errorf("the proxy dialed backends it knew were down (%d times)", n)
	}
	t.Logf("%d clients closed in %v, %d log lines", clients, elapsed, lines)
}

// TestHealthValidate: --validate rejects impossible health check settings
// with messages that name the file, line and key.
func TestHealthValidate(t *testing.T) {
	cfg := harness.WriteConfig(t, `
[health_check]
interval = "1s"
timeout = "1s"
retries = 0

[[rules]]
name = "dns"
protocol = "udp"
[rules.health_check]
expect = "ok"
[[rules.backends]]
id = "ns1"
address = "127.0.0.1:5353"
`)
	_, stderr, code := Run(t, "--validate", "-c", cfg)
	if code != 1 {
		t.Fatalf("exit code %d, want 1; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		cfg + ":4: health_check.timeout: timeout (1s) must be less than interval (1s)",
		cfg + ":5: health_check.retries: must be from 1 to 100",
		cfg + `:10: rules[0].health_check: rule "dns" is UDP: an expect needs a send`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

// procCPU is the CPU time (user + system) process pid has used so far.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// TestHealthCPU1000Backends: 1,000 backends checked every second are each
// checked about once a second, the checks are spread over the second (no
// thundering herd), and the proxy's CPU use while doing it is logged.
// DP_HEALTH_CPU_SECONDS sets the measuring time (default 3).
func TestHealthCPU1000Backends(t *testing.T) {
	const n = 1000
	seconds := 3
	if s, err := strconv.Atoi(os.Getenv("DP_HEALTH_CPU_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	var total atomic.Int64
	var first atomic.Int64 // backends checked at least once
	var mu sync.Mutex
	var stamps []time.Time // of every check, once measuring
	var measuring atomic.Bool
	var cfg strings.Builder
	port := harness.FreePort(t)
	fmt.Fprintf(&cfg, "[server]\ntcp_bind = \"127.0.0.1:%d\"\n[health_check]\ninterval = \"1s\"\ntimeout = \"500ms\"\n[[rules]]\nname = \"many\"\n", port)
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			seen := false
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
				total.Add(1)
				if !seen {
					seen = true
					first.Add(1)
				}
				if measuring.Load() {
					mu.Lock()
					stamps = append(stamps, time.Now())
					mu.Unlock()
				}
			}
		}()
		fmt.Fprintf(&cfg, "[[rules.backends]]\nid = \"b%d\"\naddress = %q\n", i, ln.Addr().String())
	}
	p := Start(t, harness.WriteConfig(t, cfg.String()))
	pid := p.Cmd.Process.Pid
	harness.Eventually(t, "every backend checked once", func() bool { return first.Load() == n })

	measuring.Store(true)
	cpu0, wall0, checks0 := procCPU(t, pid), time.Now(), total.Load()
	// The window is n×seconds checks, waited for a second's worth at a
	// time so that a long DP_HEALTH_CPU_SECONDS stays within each wait's
	// Deadline.
	for k := 1; k <= seconds; k++ {
		harness.Eventually(t, fmt.Sprintf("%d checks", n*k), func() bool { return total.Load()-checks0 >= int64(n*k) })
	}
	cpu1, wall1, checks1 := procCPU(t, pid), time.Now(), total.Load()
	measuring.Store(false)

	wall := wall1.Sub(wall0)
	rate := float64(checks1-checks0) / wall.Seconds()
	cpu := cpu1 - cpu0
	t.Logf("%d backends, interval 1s: %d checks in %v = %.0f checks/s; proxy CPU %v = %.1f%% of one core",
		n, checks1-checks0, wall.Round(time.Millisecond), rate, cpu, 100*cpu.Seconds()/wall.Seconds())
	if rate < 0.7*n || rate > 1.3*n {
		t.Errorf("%.0f checks/s for %d backends checked every second", rate, n)
	}
	// Spread: checks per 100ms slice of the window, against the mean.
	mu.Lock()
	slices := make([]int, int(wall/(100*time.Millisecond))+1)
	for _, s := range stamps {
		if i := int(s.Sub(wall0) / (100 * time.Millisecond)); i >= 0 && i < len(slices) {
			slices[i]++
		}
	}
	mu.Unlock()
	maxSlice := 0
	for _, c := range slices[:len(slices)-1] { // the last slice is partial
		maxSlice = max(maxSlice, c)
	}
	if mean := rate / 10; float64(maxSlice) > 3*mean {
		t.Errorf("checks bunch up: %d in one 100ms slice, mean %.0f: %v", maxSlice, mean, slices)
	}
	if c := p.Count("backend down"); c != 0 {
		t.Errorf("%d backends went down", c)
	}
}

// TestHealthSlowStart: with slow_start, a backend that comes back up gets a
// small share of new connections at first (its weight ramps from 1 to 10,
// against 10 for the other) and its full share once the slow start is over.
func TestHealthSlowStart(t *testing.T) {
	const slowStart = 2 * time.Second
	var failing atomic.Bool
	a := startHCBackend(t, "a", nil)
	b := startHCBackend(t, "b", func(c net.Conn, n int64) {
		if failing.Load() {
			return // closes without a greeting: the check fails
		}
		io.WriteString(c, "b\n")
		io.Copy(io.Discard, c)
	})
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
interval = "50ms"
timeout = "40ms"
retries = 1
rise = 1
expect_regex = '^[ab]\n'
slow_start = %q
[[rules]]
name = "web"
router = "weighted"
[[rules.backends]]
id = "a"
address = %q
weight = 10
[[rules.backends]]
id = "b"
address = %q
weight = 10
`, port, slowStart, a.Addr, b.Addr)))
	share := func(n int) int {
		t.Helper()
		got := 0
		for i := 0; i < n; i++ {
			name, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			if name == "b" {
				got++
			}
		}
		return got
	}
	if got := share(40); got != 20 {
		t.Fatalf("b got %d of 40 connections at full weight, want 20", got)
	}
	failing.Store(true)
	p.WaitLog("backend down", "address="+b.Addr)
	failing.Store(false)
	up := p.WaitLog("backend up", "address="+b.Addr)
	if !strings.Contains(up, "slow_start=2s") {
		t.Errorf("up line does not mention the slow start: %s", up)
	}
	upAt := lineTime(t, up)
	early := share(44)
	elapsed := time.Since(upAt)
	t.Logf("b got %d of 44 connections in the first %v of a %v slow start", early, elapsed.Round(time.Millisecond), slowStart)
	if elapsed < slowStart/2 && early > 11 {
		t.Errorf("b got %d of 44 connections %v into its slow start, want few (weight ramping from 1 to 10)", early, elapsed)
	}
	// The end of the slow start: the admin API shows b at its full weight,
	// and the router, which re-reads the weight at the health checker's next
	// tick, gives it its full share.
	adm := mxAdminOf(t, p, "")
	harness.Eventually(t, "b's effective_weight back to 10", func() bool {
		return adm.backend("web", "b")["effective_weight"] == float64(10)
	})
	harness.Eventually(t, "b's full share after its slow start", func() error {
		if got := share(40); got != 20 {
			return fmt.Errorf("b got %d of 40 connections, want 20", got)
		}
		return nil
	})
}
