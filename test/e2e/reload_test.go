package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// writeAtomic replaces path by writing a temp file and renaming it over,
// as editors and config management tools do; the content gets
// harness.WithFreeObservePorts, as the first version did.
func writeAtomic(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(harness.WithFreeObservePorts(content)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type reloadBackend struct{ id, addr string }

// reloadConfig renders a config with a stable rule "main" on mainPort over
// backends, and when extraPort > 0 a second rule on its own listener.
func reloadConfig(mainPort, extraPort int, routerName string, backends []reloadBackend, weights []int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[server]\ntcp_bind = \"127.0.0.1:%d\"\nshutdown_timeout = \"5s\"\n", mainPort)
	fmt.Fprintf(&b, "[logging]\nlevel = \"info\"\n")
	fmt.Fprintf(&b, "[[rules]]\nname = \"main\"\nrouter = %q\n", routerName)
	for i, be := range backends {
		fmt.Fprintf(&b, "[[rules.backends]]\nid = %q\naddress = %q\nweight = %d\n", be.id, be.addr, weights[i])
	}
	if extraPort > 0 {
		fmt.Fprintf(&b, "[[rules]]\nname = \"extra\"\n[[rules.backends]]\nid = %q\naddress = %q\n[rules.matcher]\ntype = \"port\"\nport = %d\n",
			backends[0].id, backends[0].addr, extraPort)
	}
	return b.String()
}

// stream is a long-lived proxied connection that keeps echoing random data.
type stream struct {
	c      net.Conn
	r      *bufio.Reader
	broken atomic.Value
}

func openStream(t testing.TB, addr string) *stream {
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	s := &stream{c: c, r: bufio.NewReader(c)}
	if _, err := s.r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	return s
}

// exchange sends n random bytes and checks they come back identical.
func (s *stream) exchange(n int) error {
	buf := make([]byte, n)
	rand.Read(buf)
	s.c.SetDeadline(time.Now().Add(harness.Deadline))
	go s.c.Write(buf)
	got := make([]byte, n)
	if _, err := io.ReadFull(s.r, got); err != nil {
		return err
	}
	if !bytes.Equal(got, buf) {
		return fmt.Errorf("stream corrupted")
	}
	return nil
}

// TestReloadStormUnderLoad rewrites the config 50 times while clients
// connect continuously and long streams stay open: no client may fail, no
// stream may break, and every change must show in routing.
func TestReloadStormUnderLoad(t *testing.T) {
	var bes []reloadBackend
	for i := 0; i < 4; i++ {
		e := StartEcho(t, fmt.Sprintf("b%d", i))
		bes = append(bes, reloadBackend{fmt.Sprintf("b%d", i), e.Addr})
	}
	mainPort, extraPort := harness.FreePort(t), harness.FreePort(t)
	main := fmt.Sprintf("127.0.0.1:%d", mainPort)
	cfgPath := harness.WriteConfig(t, reloadConfig(mainPort, 0, "round_robin", bes, []int{1, 1, 1, 1}))
	p := Start(t, cfgPath)
	p.WaitLog("watching the config file")

	streams := make([]*stream, 8)
	for i := range streams {
		streams[i] = openStream(t, main)
	}

	stop := make(chan struct{})
	var failures, conns atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Paced at ~1,000 connections/s in all, so that client sockets
			// in TIME_WAIT never exhaust the ephemeral port range.
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := harness.Greeting(main); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				conns.Add(1)
			}
		}()
	}
	wg.Add(1)
	go func() { // keep the long streams busy
		defer wg.Done()
		for {
			for _, s := range streams {
				select {
				case <-stop:
					return
				default:
				}
				if err := s.exchange(4096); err != nil {
					s.broken.CompareAndSwap(nil, err)
				}
			}
		}
	}()

	routers := []string{"round_robin", "weighted", "least_connections", "random", "hash"}
	var worst time.Duration
	for i := 1; i <= 50; i++ {
		if i == 25 {
			// An invalid version in the middle: rejected, traffic continues.
			writeAtomic(t, cfgPath, "[server\ntcp_bind = oops\n")
			p.WaitLog("reload failed", "trigger=file")
			continue
		}
		// Rotate which backends serve, with changing weights, routers and an
		// extra listener that comes and goes.
		set := []reloadBackend{bes[i%4], bes[(i+1)%4]}
		if i%3 == 0 {
			set = append(set, bes[(i+2)%4])
		}
		weights := make([]int, len(set))
		for j := range weights {
			weights[j] = 1 + (i+j)%3
		}
		extra := 0
		if i%2 == 0 {
			extra = extraPort
		}
		start := time.Now()
		writeAtomic(t, cfgPath, reloadConfig(mainPort, extra, routers[i%len(routers)], set, weights))
		p.WaitLog("config reloaded", fmt.Sprintf("version=%d", versionAfter(i)))
		// The change is visible in routing: only the new set answers.
		allowed := map[string]bool{}
		for _, be := range set {
			allowed[be.id] = true
		}
		for k := 0; k < 6; k++ {
			name, err := harness.Greeting(main)
			if err != nil {
				t.Fatalf("version %d: %v", i, err)
			}
			if !allowed[name] {
				t.Fatalf("version %d: routed to %s, want one of %v", i, name, set)
			}
		}
		if extra > 0 {
			if name, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", extra)); err != nil || name != set[0].id {
				t.Fatalf("version %d: extra listener: %q, %v", i, name, err)
			}
		}
		if d := time.Since(start); d > worst {
			worst = d
		}
	}
	close(stop)
	wg.Wait()
	for i, s := range streams {
		if err := s.broken.Load(); err != nil {
			t.Errorf("stream %d broke: %v", i, err)
		}
		if err := s.exchange(1024); err != nil {
			t.Errorf("stream %d after the storm: %v", i, err)
		}
		s.c.Close()
	}
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d client connections failed during 50 reloads; first: %v", n, conns.Load(), firstErr.Load())
	}
	t.Logf("50 reloads, %d client connections, 0 failures, 8 streams intact; slowest write-to-routed: %v", conns.Load(), worst)
}

// versionAfter is the engine's config version after the i-th write of the
// storm (the 25th write is invalid and does not count).
func versionAfter(i int) int {
	if i > 25 {
		return i
	}
	return i + 1
}

func twoBackendConfig(port int, addr string, extra string) string {
	return fmt.Sprintf("[server]\ntcp_bind = \"127.0.0.1:%d\"\n%s[[rules]]\nname = \"main\"\n[[rules.backends]]\nid = \"x\"\naddress = %q\n", port, extra, addr)
}

func TestReloadRenameOverAndSymlinkSwap(t *testing.T) {
	a, b, c := StartEcho(t, "a"), StartEcho(t, "b"), StartEcho(t, "c")
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	// Kubernetes ConfigMap layout: config.toml -> ..data/config.toml,
	// ..data -> ..v1; an update swaps the ..data symlink atomically.
	dir := t.TempDir()
	mkVersion := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "config.toml"), []byte(harness.WithFreeObservePorts(content)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mkVersion("..v1", twoBackendConfig(port, a.Addr, ""))
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.Symlink("..data/config.toml", cfgPath); err != nil {
		t.Fatal(err)
	}
	p := Start(t, cfgPath)
	p.WaitLog("watching the config file")
	if name, err := harness.Greeting(addr); err != nil || name != "a" {
		t.Fatalf("before: %q %v", name, err)
	}

	mkVersion("..v2", twoBackendConfig(port, b.Addr, ""))
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	p.WaitLog("config reloaded", "version=2")
	if name, err := harness.Greeting(addr); err != nil || name != "b" {
		t.Fatalf("after symlink swap: %q %v", name, err)
	}

	// Replace the symlink itself by a regular file renamed over it.
	writeAtomic(t, cfgPath, twoBackendConfig(port, c.Addr, ""))
	p.WaitLog("config reloaded", "version=3")
	if name, err := harness.Greeting(addr); err != nil || name != "c" {
		t.Fatalf("after rename-over: %q %v", name, err)
	}
}

func TestReloadSIGHUPAndRejectedWhole(t *testing.T) {
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	noWatch := "watch_config = false\n"
	cfgPath := harness.WriteConfig(t, twoBackendConfig(port, a.Addr, noWatch))
	p := Start(t, cfgPath)

	// A file change alone does nothing with watch_config = false.
	if err := os.WriteFile(cfgPath, []byte(twoBackendConfig(port, b.Addr, noWatch)), 0o644); err != nil {
		t.Fatal(err)
	}
	if name, _ := harness.Greeting(addr); name != "a" {
		t.Fatalf("unwatched file applied without SIGHUP: %q", name)
	}
	p.Signal(syscall.SIGHUP)
	p.WaitLog("config reloaded", "trigger=signal", "version=2")
	if name, err := harness.Greeting(addr); err != nil || name != "b" {
		t.Fatalf("after SIGHUP: %q %v", name, err)
	}

	// A port that cannot be bound rejects the whole reload: the backend
	// change in the same file must not apply either.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, busyPort, _ := net.SplitHostPort(busy.Addr().String())
	bad := twoBackendConfig(port, a.Addr, noWatch) + fmt.Sprintf("[[rules]]\nname = \"x\"\n[[rules.backends]]\nid = \"x\"\naddress = %q\n[rules.matcher]\ntype = \"port\"\nport = %s\n", a.Addr, busyPort)
	if err := os.WriteFile(cfgPath, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	line := p.WaitLog("reload failed")
	if !strings.Contains(line, "address already in use") {
		t.Errorf("reload error does not say why: %s", line)
	}
	if name, err := harness.Greeting(addr); err != nil || name != "b" {
		t.Fatalf("rejected reload changed routing: %q %v", name, err)
	}

	// A later good edit applies normally.
	if err := os.WriteFile(cfgPath, []byte(twoBackendConfig(port, a.Addr, noWatch)), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	p.WaitLog("config reloaded", "version=3")
	if name, err := harness.Greeting(addr); err != nil || name != "a" {
		t.Fatalf("after good edit: %q %v", name, err)
	}
}

// TestReloadKeepsLeastConnectionCounts: a reload that does not touch a
// rule's backends keeps their open-connection counts (Traefik loses them on
// every reload), so least_connections keeps balancing by the real load.
func TestReloadKeepsLeastConnectionCounts(t *testing.T) {
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	port, other := harness.FreePort(t), harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	base := fmt.Sprintf("[server]\ntcp_bind = \"127.0.0.1:%d\"\nwatch_config = false\n[[rules]]\nname = \"lc\"\nrouter = \"least_connections\"\n[[rules.backends]]\nid = \"a\"\naddress = %q\n[[rules.backends]]\nid = \"b\"\naddress = %q\n", port, a.Addr, b.Addr)
	cfgPath := harness.WriteConfig(t, base)
	p := Start(t, cfgPath)

	// Hold four connections: least_connections spreads them 2/2.
	held := map[string][]net.Conn{}
	for i := 0; i < 4; i++ {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(harness.Deadline))
		name, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		name = strings.TrimSpace(name)
		held[name] = append(held[name], c)
		t.Cleanup(func() { c.Close() })
	}
	if len(held["a"]) != 2 || len(held["b"]) != 2 {
		t.Fatalf("held connections spread %d/%d, want 2/2", len(held["a"]), len(held["b"]))
	}
	// Close b's two: now a has 2 open, b has 0.
	for _, c := range held["b"] {
		c.Close()
	}
	// An unrelated change (a new rule) reloads the config.
	if err := os.WriteFile(cfgPath, []byte(harness.WithFreeObservePorts(base+fmt.Sprintf("[[rules]]\nname = \"other\"\n[[rules.backends]]\nid = \"x\"\naddress = %q\n[rules.matcher]\ntype = \"port\"\nport = %d\n", a.Addr, other))), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGHUP)
	p.WaitLog("config reloaded", "version=2")
	// The proxy sees b's connections end asynchronously: wait until it
	// counts none open on b (the metric reads the backend's own counter).
	// A probe connection would not do: its own end is seen asynchronously
	// too, and a count it still holds can tie b with a.
	url := p.MetricsURL()
	harness.WaitMetrics(t, url, "b's closed connections accounted", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_backend_connections_active", map[string]string{"rule": "lc", "backend": "b"}) == 0
	})
	// With the counts kept (a 2, b 0) the next two go to b; with counts
	// lost on reload (0/0) the two would alternate a, b.
	var next []string
	for i := 0; i < 2; i++ {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(harness.Deadline))
		name, _ := bufio.NewReader(c).ReadString('\n')
		next = append(next, strings.TrimSpace(name))
	}
	if next[0] != "b" || next[1] != "b" {
		t.Fatalf("after the reload, held connections went to %v; want b, b (a still has 2 open)", next)
	}
}

// TestReloadDrainTimeout: a backend a reload removes gets no new
// connection at once, and its open connection is closed once drain_timeout
// has passed (without drain_timeout it would run on: the storm test's long
// streams show that).
func TestReloadDrainTimeout(t *testing.T) {
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfgText := func(backends ...*EchoServer) string {
		s := fmt.Sprintf("[server]\ntcp_bind = %q\nwatch_config = false\ndrain_timeout = \"1s\"\n[[rules]]\nname = \"r\"\n", addr)
		for _, e := range backends {
			s += fmt.Sprintf("[[rules.backends]]\nid = %q\naddress = %q\n", e.Name, e.Addr)
		}
		return s
	}
	cfgPath := harness.WriteConfig(t, cfgText(b))
	p := Start(t, cfgPath)
	held := openStream(t, addr) // on b, the only backend
	if err := os.WriteFile(cfgPath, []byte(harness.WithFreeObservePorts(cfgText(a))), 0o644); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	p.Signal(syscall.SIGHUP)
	p.WaitLog("config reloaded", "version=2")
	if name, err := harness.Greeting(addr); err != nil || name != "a" {
		t.Fatalf("new connection after removing b: %q %v", name, err)
	}
	if err := held.exchange(512); err != nil {
		t.Fatalf("connection to the removed backend cut before drain_timeout: %v", err)
	}
	held.c.SetDeadline(time.Now().Add(harness.Deadline))
	_, err := held.r.ReadByte()
	if err == nil {
		t.Fatal("connection to the removed backend got data instead of closing")
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection to the removed backend still open %v after the reload (drain_timeout 1s)", harness.Deadline)
	}
	// The log line below names the cause of the close; its timer is checked
	// from below only, where a slow machine cannot make it fail.
	if d := time.Since(removed); d < 900*time.Millisecond {
		t.Fatalf("connection closed %v after the reload, before drain_timeout (1s)", d)
	}
	p.WaitLog("drain_timeout: closed connections to a removed backend", "backend=b")
}
