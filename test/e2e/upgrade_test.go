//go:build unix

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
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

// Binary upgrades (internal/upgrade): the binary the suite built is copied
// to a temp path and started from there; the test then installs a second
// build over that path (internal/version.Version set with -X, so the two
// tell themselves apart) and upgrades with SIGUSR2 or POST /api/v1/upgrade.

var (
	buildB    sync.Once
	binaryB   string
	buildBErr error
)

// upgradeBuild is the second build, version "upgrade-b" (built once per
// run, next to the suite's binary).
func upgradeBuild(t *testing.T) string {
	t.Helper()
	buildB.Do(func() {
		binaryB, buildBErr = harness.BuildVersion(filepath.Dir(binary), "dynamic-proxy-b",
			os.Getenv("E2E_RACE") != "", "upgrade-b")
	})
	if buildBErr != nil {
		t.Fatal(buildBErr)
	}
	return binaryB
}

// install puts a copy of src at dst the way an operator's install(1) or
// package manager does: written beside it, then renamed over it (the
// running process keeps its old file).
func install(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// installScript puts a shell script at dst in place of the binary.
func installScript(t *testing.T, dst, script string) {
	t.Helper()
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// startInstalled copies the suite's binary to a temp path and starts it
// from there on cfg.
func startInstalled(t *testing.T, cfg string) (*harness.Proxy, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dynamic-proxy")
	install(t, binary, path)
	p := harness.Launch(t, cfg, path, "-c", cfg)
	p.WaitLog("dynamic-proxy started")
	return p, path
}

// processGone reports whether pid has exited (a zombie counts: nobody
// may be left to reap an upgraded process's old parent).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// killOnCleanup kills pid when the test ends (a process an upgrade started
// is not the harness's child).
func killOnCleanup(t *testing.T, pid int) {
	t.Cleanup(func() {
		if !processGone(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// adminStatus is what the tests read of GET /api/v1/status.
func adminVersion(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Version string `json:"version"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Version
}

// postUpgrade calls POST /api/v1/upgrade and returns the status code and
// the decoded answer.
func postUpgrade(t *testing.T, base string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(base+"/api/v1/upgrade", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("upgrade answer %q: %v", b, err)
	}
	return resp.StatusCode, m
}

var newPIDRe = regexp.MustCompile(`new_pid=(\d+)`)

// newPID waits for the n-th (from 1) "the new process serves" line and
// returns its PID.
func newPID(t *testing.T, p *harness.Proxy, n int) int {
	t.Helper()
	harness.Eventually(t, "the new process to serve", func() bool {
		return p.Count("upgrade: the new process serves") >= n
	})
	var lines []string
	for _, l := range p.Lines() {
		if strings.Contains(l, "upgrade: the new process serves") {
			lines = append(lines, l)
		}
	}
	m := newPIDRe.FindStringSubmatch(lines[n-1])
	if m == nil {
		t.Fatalf("no new_pid in %q", lines[n-1])
	}
	pid, _ := strconv.Atoi(m[1])
	return pid
}

// connectLoop opens a connection every millisecond until stop: each reads
// the backend's greeting and has a line echoed. It counts the successes
// and keeps the failures (refused, reset, short, wrong).
type connectLoop struct {
	ok     atomic.Int64
	mu     sync.Mutex
	errs   []string
	stop   chan struct{}
	done   chan struct{}
	greets string
}

func startConnectLoop(addr, greeting string) *connectLoop {
	l := &connectLoop{stop: make(chan struct{}), done: make(chan struct{}), greets: greeting}
	go func() {
		defer close(l.done)
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-time.After(time.Millisecond):
			}
			if err := l.once(addr, i); err != nil {
				l.mu.Lock()
				l.errs = append(l.errs, err.Error())
				l.mu.Unlock()
			} else {
				l.ok.Add(1)
			}
		}
	}()
	return l
}

func (l *connectLoop) once(addr string, i int) error {
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(harness.Deadline))
	r := bufio.NewReader(c)
	g, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if g != l.greets+"\n" {
		return fmt.Errorf("greeting %q", g)
	}
	msg := fmt.Sprintf("ping %d\n", i)
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got, err := r.ReadString('\n')
	if err != nil || got != msg {
		return fmt.Errorf("echo %q: %v", got, err)
	}
	return nil
}

// waitFor waits until n more connections succeeded.
func (l *connectLoop) waitFor(t *testing.T, n int64) {
	t.Helper()
	from := l.ok.Load()
	harness.Eventually(t, fmt.Sprintf("%d more connections", n), func() bool { return l.ok.Load() >= from+n })
}

func (l *connectLoop) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) > 0 {
		t.Errorf("%d of %d connections failed; first: %v", len(l.errs), int64(len(l.errs))+l.ok.Load(), l.errs[:min(5, len(l.errs))])
	}
}

// udpLoop sends a datagram every millisecond from one client socket and
// counts the replies.
type udpLoop struct {
	sent, got atomic.Int64
	stop      chan struct{}
	done      chan struct{}
}

func startUDPLoop(t *testing.T, addr string) *udpLoop {
	return startUDPLoopEvery(t, addr, time.Millisecond)
}

// startUDPLoopEvery is startUDPLoop with a datagram every interval.
func startUDPLoopEvery(t *testing.T, addr string, interval time.Duration) *udpLoop {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l := &udpLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			l.got.Add(1)
		}
	}()
	go func() {
		defer close(l.done)
		defer func() { // the last replies, then the reader leaves
			harness.Eventually(t, "the last UDP replies", func() bool { return l.got.Load() >= l.sent.Load() })
			c.Close()
		}()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-time.After(interval):
			}
			if _, err := fmt.Fprintf(c, "d%d", i); err == nil {
				l.sent.Add(1)
			}
		}
	}()
	return l
}

func (l *udpLoop) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	<-l.done
	if l.sent.Load() != l.got.Load() {
		t.Errorf("UDP: %d datagrams sent, %d replies", l.sent.Load(), l.got.Load())
	}
}

func upgradeConfig(t *testing.T, tcpPort, udpPort int, tcpBackend, udpBackend, extra string) string {
	t.Helper()
	return harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
udp_bind = "127.0.0.1:%d"
watch_config = false
shutdown_timeout = "10s"
%s
[[rules]]
name = "t"
[[rules.backends]]
id = "echo"
address = %q

[[rules]]
name = "u"
protocol = "udp"
[rules.health_check]
enabled = false
[[rules.backends]]
id = "uecho"
address = %q
`, tcpPort, udpPort, extra, tcpBackend, udpBackend))
}

// TestUpgradeConnectsEveryMillisecond upgrades twice, by SIGUSR2 to a new
// build and by the admin API back to the first, while a client connects
// every millisecond and another sends a datagram every millisecond: no
// connection is refused or reset, every datagram is answered, each old
// process exits and the new one answers with its own version.
func TestUpgradeConnectsEveryMillisecond(t *testing.T) {
	b := upgradeBuild(t)
	echo, uecho := StartEcho(t, "e1"), StartUDPEcho(t, "u1")
	tcpPort, udpPort := harness.FreePort(t), harness.FreePort(t)
	cfg := upgradeConfig(t, tcpPort, udpPort, echo.Addr, uecho.Addr, "")
	p, path := startInstalled(t, cfg)
	admin := p.AdminURL()
	if v := adminVersion(t, admin); v != "dev" {
		t.Fatalf("first process version %q, want dev", v)
	}
	loop := startConnectLoop(fmt.Sprintf("127.0.0.1:%d", tcpPort), "e1")
	udp := startUDPLoop(t, fmt.Sprintf("127.0.0.1:%d", udpPort))
	loop.waitFor(t, 50)

	install(t, b, path)
	p.Signal(syscall.SIGUSR2)
	pidB := newPID(t, p, 1)
	killOnCleanup(t, pidB)
	select {
	case <-p.Gone():
	case <-time.After(harness.Deadline):
		t.Fatal("the old process did not exit")
	}
	if v := adminVersion(t, admin); v != "upgrade-b" {
		t.Fatalf("after the upgrade the admin API says version %q, want upgrade-b", v)
	}
	loop.waitFor(t, 50)

	// The new process upgrades in turn, through the admin API.
	install(t, binary, path)
	code, ans := postUpgrade(t, admin)
	if code != http.StatusOK || ans["version"] != "dev" {
		t.Fatalf("POST /api/v1/upgrade: %d %v", code, ans)
	}
	pidA := int(ans["pid"].(float64))
	killOnCleanup(t, pidA)
	harness.Eventually(t, "the second old process to exit", func() bool { return processGone(pidB) })
	if v := adminVersion(t, admin); v != "dev" {
		t.Fatalf("after the second upgrade the admin API says version %q, want dev", v)
	}
	loop.waitFor(t, 50)
	loop.finish(t)
	udp.finish(t)
	t.Logf("%d connections, %d datagrams across two upgrades", loop.ok.Load(), udp.sent.Load())
}

// TestUpgradeFailures: a binary that exits at once, one that never reports
// ready (server.upgrade_timeout), and a config that does not validate each
// leave the old process serving with no failed client; a second upgrade
// while one runs is refused; a good one afterwards succeeds.
func TestUpgradeFailures(t *testing.T) {
	b := upgradeBuild(t)
	echo, uecho := StartEcho(t, "e1"), StartUDPEcho(t, "u1")
	tcpPort, udpPort := harness.FreePort(t), harness.FreePort(t)
	cfg := upgradeConfig(t, tcpPort, udpPort, echo.Addr, uecho.Addr, `upgrade_timeout = "2s"`)
	p, path := startInstalled(t, cfg)
	admin := p.AdminURL()
	loop := startConnectLoop(fmt.Sprintf("127.0.0.1:%d", tcpPort), "e1")
	loop.waitFor(t, 20)

	// A binary that exits at once.
	installScript(t, path, "exit 3")
	code, ans := postUpgrade(t, admin)
	if code != http.StatusInternalServerError || !strings.Contains(fmt.Sprint(ans["error"]), "exit status 3") {
		t.Fatalf("upgrade to a binary that exits: %d %v", code, ans)
	}
	p.WaitLog("upgrade failed; this process keeps serving", "exit status 3")
	loop.waitFor(t, 20)

	// A binary that never reports ready: killed after upgrade_timeout; a
	// second upgrade meanwhile is refused.
	installScript(t, path, "exec sleep 60")
	from := p.NumLines()
	first := make(chan int, 1)
	go func() {
		resp, err := http.Post(admin+"/api/v1/upgrade", "", nil)
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	p.WaitLogFrom(from, "upgrade requested")
	if code, ans := postUpgrade(t, admin); code != http.StatusConflict {
		t.Fatalf("a second upgrade while one runs: %d %v, want 409", code, ans)
	}
	p.WaitLogFrom(from, "upgrade refused", "already running")
	if code := <-first; code != http.StatusInternalServerError {
		t.Fatalf("upgrade to a binary that never gets ready: %d", code)
	}
	p.WaitLog("upgrade failed; this process keeps serving", "timed out")
	loop.waitFor(t, 20)

	// The real new build, but the config no longer validates.
	install(t, b, path)
	good, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, append(good, []byte("\n[[rules]]\nname = \"t\"\nrouter = \"no_such_router\"\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	code, ans = postUpgrade(t, admin)
	if code != http.StatusInternalServerError {
		t.Fatalf("upgrade with a config that does not validate: %d %v", code, ans)
	}
	p.WaitLog("invalid config")
	loop.waitFor(t, 20)
	select {
	case <-p.Gone():
		t.Fatal("the old process exited after failed upgrades")
	default:
	}
	if v := adminVersion(t, admin); v != "dev" {
		t.Fatalf("version %q after failed upgrades, want dev", v)
	}

	// Fixed: the upgrade goes through.
	if err := os.WriteFile(cfg, good, 0o644); err != nil {
		t.Fatal(err)
	}
	code, ans = postUpgrade(t, admin)
	if code != http.StatusOK {
		t.Fatalf("upgrade after the fixes: %d %v", code, ans)
	}
	killOnCleanup(t, int(ans["pid"].(float64)))
	select {
	case <-p.Gone():
	case <-time.After(harness.Deadline):
		t.Fatal("the old process did not exit")
	}
	loop.waitFor(t, 20)
	loop.finish(t)
}

// upStream is one client connection of TestUpgradeMovesStreams: it writes a
// numbered byte sequence every millisecond and checks that the echo comes
// back byte for byte, in order; it records the longest wait for an echo.
type upStream struct {
	c          net.Conn
	sent, got  atomic.Int64
	err        atomic.Pointer[error]
	maxPause   atomic.Int64 // ns
	stop, done chan struct{}
	wdone      chan struct{} // the writer returned: sent is final
}

func streamByte(id int, i int64) byte { return byte(int64(id)*31 + i*7 + i>>8) }

func startStream(t *testing.T, addr, greeting string, id int) *upStream {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(harness.Deadline))
	if g, err := r.ReadString('\n'); err != nil || g != greeting+"\n" {
		t.Fatalf("stream %d greeting %q: %v", id, g, err)
	}
	s := &upStream{c: c, stop: make(chan struct{}), done: make(chan struct{}), wdone: make(chan struct{})}
	fail := func(err error) {
		if s.err.Load() == nil {
			s.err.Store(&err)
		}
	}
	go func() { // the writer: 64 bytes a millisecond
		defer close(s.wdone)
		buf := make([]byte, 64)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(time.Millisecond):
			}
			n := s.sent.Load()
			for i := range buf {
				buf[i] = streamByte(id, n+int64(i))
			}
			c.SetWriteDeadline(time.Now().Add(harness.Deadline))
			if _, err := c.Write(buf); err != nil {
				fail(fmt.Errorf("write: %w", err))
				return
			}
			s.sent.Add(int64(len(buf)))
		}
	}()
	go func() { // the reader: every byte as sent
		defer close(s.done)
		buf := make([]byte, 4096)
		last := time.Now()
		for {
			c.SetReadDeadline(time.Now().Add(harness.Deadline))
			n, err := r.Read(buf)
			now := time.Now()
			if d := now.Sub(last); n > 0 && int64(d) > s.maxPause.Load() {
				s.maxPause.Store(int64(d))
			}
			last = now
			for i := range n {
				g := s.got.Load()
				if buf[i] != streamByte(id, g) {
					fail(fmt.Errorf("byte %d: got %#x, want %#x", g, buf[i], streamByte(id, g)))
					return
				}
				s.got.Add(1)
			}
			if err != nil {
				select {
				case <-s.stop:
					if s.got.Load() == s.sent.Load() {
						return
					}
				default:
				}
				fail(fmt.Errorf("read after %d bytes: %w", s.got.Load(), err))
				return
			}
		}
	}()
	return s
}

// upgradeServing installs binary b at path and upgrades p to it (SIGUSR2):
// once the new process serves, the old one must exit within 2s.
func upgradeServing(t *testing.T, p *harness.Proxy, b, path string) {
	t.Helper()
	install(t, b, path)
	from := p.NumLines()
	p.Signal(syscall.SIGUSR2)
	p.WaitLogFrom(from, "upgrade: the new process serves")
	ready := time.Now()
	killOnCleanup(t, newPID(t, p, 1))
	select {
	case <-p.Gone():
	case <-time.After(harness.Deadline):
		t.Fatal("the old process did not exit")
	}
	if took := time.Since(ready); took > 2*time.Second {
		t.Errorf("the old process exited %v after the new one was ready, want within 2s", took)
	}
}

// TestUpgradeMovesStreams: 50 TCP streams echo a checked byte sequence in
// both directions, a write a millisecond, across an upgrade to a new
// build. The old process hands them over and exits within 2 s of the new
// one being ready (its shutdown_timeout is a minute, so only a handover
// lets it go that soon); the streams then run on the new process (the
// only one left) with no error and no byte lost, duplicated or reordered.
func TestUpgradeMovesStreams(t *testing.T) {
	if harness.Engine() == "goroutine" {
		t.Skip("the goroutine engine hands over listeners only: its connections finish in the old process (docs/operations.md)")
	}
	b := upgradeBuild(t)
	echo := StartEcho(t, "e1")
	tcpPort := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
watch_config = false
shutdown_timeout = "60s"

[[rules]]
name = "t"
[[rules.backends]]
id = "echo"
address = %q
`, tcpPort, echo.Addr))
	p, path := startInstalled(t, cfg)
	admin := p.AdminURL()
	addr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	var streams []*upStream
	for i := range 50 {
		streams = append(streams, startStream(t, addr, "e1", i))
	}
	harness.Eventually(t, "every stream to echo", func() bool {
		for _, s := range streams {
			if s.got.Load() < 640 {
				return false
			}
		}
		return true
	})

	upgradeServing(t, p, b, path)
	p.WaitLog("upgrade: took over from the old process", "connections=50")
	if v := adminVersion(t, admin); v != "upgrade-b" {
		t.Fatalf("version %q after the upgrade, want upgrade-b", v)
	}
	// On the new process now: each stream moves another 16 KiB.
	marks := make([]int64, len(streams))
	for i, s := range streams {
		marks[i] = s.got.Load()
	}
	harness.Eventually(t, "every stream to go on after the old process exited", func() bool {
		for i, s := range streams {
			if s.got.Load() < marks[i]+16<<10 {
				return false
			}
			if e := s.err.Load(); e != nil {
				t.Fatalf("stream %d: %v", i, *e)
			}
		}
		return true
	})
	var maxPause time.Duration
	for i, s := range streams {
		close(s.stop)
		<-s.wdone
		harness.Eventually(t, "the last echoes", func() bool { return s.got.Load() == s.sent.Load() || s.err.Load() != nil })
		s.c.Close()
		<-s.done
		if e := s.err.Load(); e != nil {
			t.Errorf("stream %d: %v", i, *e)
		}
		maxPause = max(maxPause, time.Duration(s.maxPause.Load()))
	}
	// The counters carried on: every connection counted once (by the old
	// process, which accepted them all), every byte once (by whichever
	// process moved it).
	var sent, got int64
	for _, s := range streams {
		sent, got = sent+s.sent.Load(), got+s.got.Load()
	}
	rule := func(more harness.Labels) harness.Labels {
		l := harness.Labels{"rule": "t", "protocol": "tcp"}
		for k, v := range more {
			l[k] = v
		}
		return l
	}
	murl := p.MetricsURL()
	harness.WaitMetrics(t, murl, "the bytes of every stream, counted once", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_bytes_total", rule(harness.Labels{"direction": "in"})) == float64(sent) &&
			m.Value("dynamic_proxy_bytes_total", rule(harness.Labels{"direction": "out"})) == float64(got+int64(len(streams))*3)
	})
	if n := harness.Scrape(t, murl).Value("dynamic_proxy_connections_total", rule(nil)); n != float64(len(streams)) {
		t.Errorf("connections_total %v after the upgrade, want %d (no reset, no double count)", n, len(streams))
	}
	t.Logf("50 streams moved; the longest pause any stream saw: %v; %s", maxPause, p.Log()[strings.LastIndex(p.Log(), "connections handed over"):][:120])
}

// startPlainEcho is StartEcho copying through a buffer: io.Copy between
// two *net.TCPConn splices through a pipe pair per connection, 3
// descriptors where the scale test can spare one.
func startPlainEcho(t *testing.T, name string) *EchoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &EchoServer{Name: name, Addr: ln.Addr().String(), ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, name+"\n")
				io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 512))
			}()
		}
	}()
	t.Cleanup(e.Close)
	return e
}

// TestUpgradeHandoverScale measures the handover of UPGRADE_SCALE open
// connections (docs/BENCHMARKS.md; skipped without it): each is checked to
// echo on the new process afterwards. The test process holds both ends
// (client and backend), the proxy two descriptors a connection (each of
// its processes), so under a 20,000-descriptor limit about 9,000 fit.
func TestUpgradeHandoverScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("UPGRADE_SCALE"))
	if n == 0 {
		t.Skip("a measurement: set UPGRADE_SCALE=N connections")
	}
	b := upgradeBuild(t)
	echo := startPlainEcho(t, "e1")
	tcpPort := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
watch_config = false
max_connections = %d
shutdown_timeout = "60s"

[[rules]]
name = "t"
[[rules.backends]]
id = "echo"
address = %q
`, tcpPort, n+10, echo.Addr))
	p, path := startInstalled(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	conns := make([]net.Conn, n)
	readers := make([]*bufio.Reader, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
		conns[i], readers[i] = c, bufio.NewReader(c)
	}
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(harness.Deadline))
		if g, err := readers[i].ReadString('\n'); err != nil || g != "e1\n" {
			t.Fatalf("connection %d greeting %q: %v", i, g, err)
		}
	}
	install(t, b, path)
	from := p.NumLines()
	p.Signal(syscall.SIGUSR2)
	line := p.WaitLogFrom(from, "upgrade: connections handed over")
	killOnCleanup(t, newPID(t, p, 1))
	<-p.Gone()
	p.WaitLog("upgrade: took over from the old process")
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(harness.Deadline))
		msg := fmt.Sprintf("after %d\n", i)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if got, err := readers[i].ReadString('\n'); err != nil || got != msg {
			t.Fatalf("connection %d echo %q: %v", i, got, err)
		}
	}
	t.Logf("%d connections: %s", n, line)
}

// TestUpgradeMovesUDPSessions: 100 UDP clients, each its own session,
// exchange datagrams across an upgrade; the sessions move to the new
// process (it says it took 100), the old one exits at once rather than at
// shutdown_timeout, and every datagram sent before, during and after is
// answered.
func TestUpgradeMovesUDPSessions(t *testing.T) {
	if harness.Engine() == "goroutine" {
		t.Skip("the goroutine engine hands over listeners only: its sessions finish in the old process (docs/operations.md)")
	}
	b := upgradeBuild(t)
	uecho := StartUDPEcho(t, "u1")
	udpPort := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
watch_config = false
shutdown_timeout = "60s"

[[rules]]
name = "u"
protocol = "udp"
[rules.health_check]
enabled = false
[[rules.backends]]
id = "uecho"
address = %q
`, udpPort, uecho.Addr))
	p, path := startInstalled(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", udpPort)
	var loops []*udpLoop
	for range 100 {
		loops = append(loops, startUDPLoopEvery(t, addr, 20*time.Millisecond))
	}
	harness.Eventually(t, "every session to be answered", func() bool {
		for _, l := range loops {
			if l.got.Load() < 5 {
				return false
			}
		}
		return true
	})
	upgradeServing(t, p, b, path)
	p.WaitLog("upgrade: took over from the old process", "udp_sessions=100")
	marks := make([]int64, len(loops))
	for i, l := range loops {
		marks[i] = l.got.Load()
	}
	harness.Eventually(t, "every session to be answered by the new process", func() bool {
		for i, l := range loops {
			if l.got.Load() < marks[i]+10 {
				return false
			}
		}
		return true
	})
	for _, l := range loops {
		l.finish(t)
	}
}

// TestUpgradeNotifiesSystemd plays systemd's notify socket: the first
// process says MAINPID= and READY=1 once it serves, and so does the new
// process of an upgrade, before the old one exits (so that systemd follows
// the new main PID rather than seeing its main process end).
func TestUpgradeNotifiesSystemd(t *testing.T) {
	b := upgradeBuild(t)
	sock := filepath.Join(t.TempDir(), "notify")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	read := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		nc.SetReadDeadline(time.Now().Add(harness.Deadline))
		n, err := nc.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	echo := StartEcho(t, "e1")
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
watch_config = false

[[rules]]
name = "t"
[[rules.backends]]
id = "echo"
address = %q
`, harness.FreePort(t), echo.Addr))
	p, path := startInstalled(t, cfg)
	if got, want := read(), fmt.Sprintf("MAINPID=%d\nREADY=1\n", p.PID()); got != want {
		t.Fatalf("first process notified %q, want %q", got, want)
	}
	install(t, b, path)
	p.Signal(syscall.SIGUSR2)
	pid := newPID(t, p, 1)
	killOnCleanup(t, pid)
	<-p.Gone()
	// Already queued when the old process has exited: read without waiting
	// (MSG_DONTWAIT; a past read deadline would not even try).
	buf := make([]byte, 4096)
	rc, err := nc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n, rerr := 0, error(nil)
	rc.Control(func(fd uintptr) { n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT) })
	if rerr != nil {
		t.Fatalf("the new process had not notified when the old one exited: %v", rerr)
	}
	if got, want := string(buf[:n]), fmt.Sprintf("MAINPID=%d\nREADY=1\n", pid); got != want {
		t.Fatalf("new process notified %q, want %q", got, want)
	}
}

// TestUpgradeDrainsGoneBackends: a stream on a rule the new config no
// longer has stays in the old process and is closed at drain_timeout, as a
// reload would close it, not at the minute of shutdown_timeout; a stream on
// a rule both configs have moves and goes on.
func TestUpgradeDrainsGoneBackends(t *testing.T) {
	if harness.Engine() == "goroutine" {
		t.Skip("the goroutine engine hands over listeners only: its connections finish in the old process (docs/operations.md)")
	}
	b := upgradeBuild(t)
	keep, gone := StartEcho(t, "keep"), StartEcho(t, "gone")
	tcpPort, gonePort := harness.FreePort(t), harness.FreePort(t)
	goneRule := fmt.Sprintf(`
[[rules]]
name = "gone"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "gone"
address = %q
`, gonePort, gone.Addr)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
watch_config = false
shutdown_timeout = "60s"
drain_timeout = "1s"
[health_check]
enabled = false

[[rules]]
name = "keep"
[[rules.backends]]
id = "keep"
address = %q
`, tcpPort, keep.Addr)+goneRule)
	p, path := startInstalled(t, cfg)
	ks := startStream(t, fmt.Sprintf("127.0.0.1:%d", tcpPort), "keep", 1)
	gs := startStream(t, fmt.Sprintf("127.0.0.1:%d", gonePort), "gone", 2)
	harness.Eventually(t, "both streams echo", func() bool { return ks.got.Load() >= 640 && gs.got.Load() >= 640 })

	text, err := os.ReadFile(cfg) // the same observe ports, without the rule
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(text), goneRule, "", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	install(t, b, path)
	from := p.NumLines()
	p.Signal(syscall.SIGUSR2)
	p.WaitLogFrom(from, "upgrade: the new process serves")
	killOnCleanup(t, newPID(t, p, 1))
	p.WaitLogFrom(from, "upgrade: connections handed over", "connections=1", "left_here=1")
	p.WaitLogFrom(from, "drain_timeout over", "connections=1", "drain_timeout=1s")
	select {
	case <-gs.done: // the old process closed it
	case <-time.After(harness.Deadline):
		t.Fatal("the stream on the rule the new config lacks was not closed")
	}
	select {
	case <-p.Gone():
	case <-time.After(harness.Deadline):
		t.Fatal("the old process did not exit once its last connection was drained")
	}
	mark := ks.got.Load()
	harness.Eventually(t, "the kept stream to go on in the new process", func() bool {
		if e := ks.err.Load(); e != nil {
			t.Fatalf("kept stream: %v", *e)
		}
		return ks.got.Load() >= mark+16<<10
	})
	close(ks.stop)
	<-ks.wdone
	harness.Eventually(t, "the last echoes", func() bool { return ks.got.Load() == ks.sent.Load() || ks.err.Load() != nil })
	ks.c.Close()
	<-ks.done
	if e := ks.err.Load(); e != nil {
		t.Errorf("kept stream: %v", *e)
	}
}
