package e2e

// The foundation through the built binary: the shipped config.toml and the
// seed README's example config, the CLI, start-up errors, JSON logs and the
// access log, SIGTERM draining, and descriptors held per idle connection.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// replaceAll replaces old with new in s and fails the test when old is not
// there, so a changed config file shows up here instead of being tested
// on the wrong ports.
func replaceAll(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("%q not found in the config; update this test", old)
	}
	return strings.ReplaceAll(s, old, new)
}

// observeDefaults are the default metrics and admin addresses, moved to free
// ports wherever a config file names them.
var observeDefaults = regexp.MustCompile(`"127\.0\.0\.1:807[01]"`)

// silentEcho is a backend that sends nothing until it is sent something,
// then echoes it; it counts the connections it accepted.
type silentEcho struct {
	Addr     string
	accepted atomic.Int64
}

func startSilentEcho(t *testing.T) *silentEcho {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &silentEcho{Addr: ln.Addr().String()}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			e.accepted.Add(1)
			go func() {
				defer c.Close()
				io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 32<<10))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return e
}

func dialT(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(harness.Deadline))
	return c
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading a line: %v (got %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n")
}

// echoRoundTrip sends n bytes through c and checks that the same come back.
func echoRoundTrip(t *testing.T, c net.Conn, r io.Reader, n int) {
	t.Helper()
	msg := bytes.Repeat([]byte("0123456789abcdef"), n/16)
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes: %v", len(msg), err)
	}
}

// TestShippedConfig runs the repository's config.toml with its ports moved
// to free ones and its two backends played by echo servers.
func TestShippedConfig(t *testing.T) {
	raw, err := os.ReadFile("../../config.toml")
	if err != nil {
		t.Fatal(err)
	}
	web1, web2 := StartEcho(t, "web1"), StartEcho(t, "web2")
	tcp, udp, port := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	cfg := string(raw)
	cfg = replaceAll(t, cfg, `"127.0.0.1:8080"`, fmt.Sprintf(`"127.0.0.1:%d"`, tcp))
	cfg = replaceAll(t, cfg, `"127.0.0.1:8081"`, fmt.Sprintf(`"127.0.0.1:%d"`, udp))
	cfg = replaceAll(t, cfg, "port = 8000", fmt.Sprintf("port = %d", port))
	cfg = replaceAll(t, cfg, `"127.0.0.1:9001"`, fmt.Sprintf("%q", web1.Addr))
	cfg = replaceAll(t, cfg, `"127.0.0.1:9002"`, fmt.Sprintf("%q", web2.Addr))
	cfg = observeDefaults.ReplaceAllString(cfg, `"127.0.0.1:0"`)
	path := harness.WriteConfig(t, cfg)

	out, errOut, code := Run(t, "--validate", "-c", path)
	if code != 0 || !strings.Contains(out, path+": ok") {
		t.Fatalf("--validate: exit %d\n%s%s", code, out, errOut)
	}
	p := Start(t, path)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	seen := map[string]int{}
	for i := 0; i < 4; i++ {
		c := dialT(t, addr)
		r := bufio.NewReader(c)
		seen[readLine(t, r)]++
		echoRoundTrip(t, c, r, 64<<10)
		c.Close()
	}
	if seen["web1"] != 2 || seen["web2"] != 2 {
		t.Errorf("round robin over the shipped config's backends: %v, want web1 and web2 twice each", seen)
	}
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// seedPlugins are the router plugins the seed README's example config names.
var seedPlugins = []string{"round_robin", "weighted", "hash"}

// TestSeedExampleConfig runs the seed README's example config, its sections
// as the seed writes them (internal/config/testdata/seed.toml), with the
// addresses moved to loopback and free ports.
func TestSeedExampleConfig(t *testing.T) {
	raw, err := os.ReadFile("../../internal/config/testdata/seed.toml")
	if err != nil {
		t.Fatal(err)
	}
	web1 := StartEcho(t, "web1")
	tcp, udp, port := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	cfg := string(raw)
	cfg = replaceAll(t, cfg, `"127.0.0.1:8080"`, fmt.Sprintf(`"127.0.0.1:%d"`, tcp))
	cfg = replaceAll(t, cfg, `"127.0.0.1:8081"`, fmt.Sprintf(`"127.0.0.1:%d"`, udp))
	cfg = replaceAll(t, cfg, "port = 80\n", fmt.Sprintf("port = %d\n", port))
	cfg = replaceAll(t, cfg, `"127.0.0.1:80"`, fmt.Sprintf("%q", web1.Addr))
	// Redis on a port where nothing listens: the proxy must serve without
	// it, and must not touch a Redis another test may run on 6379.
	cfg = replaceAll(t, cfg, `"redis://127.0.0.1:6379"`, fmt.Sprintf(`"redis://127.0.0.1:%d"`, harness.FreePort(t)))
	for _, plugin := range seedPlugins {
		if !router.Known(plugin) {
			t.Fatalf("the seed's example config needs router plugin %q, which is not registered", plugin)
		}
	}
	path := harness.WriteConfig(t, cfg)
	out, errOut, code := Run(t, "--validate", "-c", path)
	if code != 0 {
		t.Fatalf("--validate: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"web_traffic: tcp, router round_robin (round_robin), 1 backends",
		"routers: 3", "hash_ip (hash)", "round_robin (round_robin)", "weighted (weighted)"} {
		if !strings.Contains(out, want) {
			t.Errorf("--validate summary lacks %q:\n%s", want, out)
		}
	}
	p := Start(t, path)
	c := dialT(t, fmt.Sprintf("127.0.0.1:%d", port))
	r := bufio.NewReader(c)
	if got := readLine(t, r); got != "web1" {
		t.Fatalf("greeting %q", got)
	}
	echoRoundTrip(t, c, r, 64<<10)
	p.Signal(syscall.SIGINT)
	c.Close()
	if code := p.Wait(); code != 0 {
		t.Errorf("exit %d after SIGINT", code)
	}
}

// proxyConfig is a one-rule config on tcp_bind = 127.0.0.1:port.
func proxyConfig(port int, backend, extraServer string) string {
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
%s
[[rules]]
name = "web"
[[rules.backends]]
id = "web1"
address = %q
`, port, extraServer, backend)
}

// TestSIGTERMDrains: on SIGTERM the listener refuses new connections at
// once, a transfer in flight runs to completion, and the process exits 0
// once it has.
func TestSIGTERMDrains(t *testing.T) {
	be := StartEcho(t, "be")
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := Start(t, harness.WriteConfig(t, proxyConfig(port, be.Addr, `shutdown_timeout = "60s"`)))
	c := dialT(t, addr)
	r := bufio.NewReader(c)
	readLine(t, r)

	p.Signal(syscall.SIGTERM)
	p.WaitLog("shutting down", "draining")
	harness.Eventually(t, "the listener to refuse connections", func() bool {
		nc, err := net.Dial("tcp", addr)
		if err == nil {
			nc.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	select {
	case <-p.Exited():
		t.Fatal("the proxy exited with a connection in flight")
	default: // draining: waits for c
	}
	// The transfer in flight: 8 MiB through the draining proxy, both ways;
	// the backend closes once it has echoed everything, which ends c.
	const size = 8 << 20
	src := bytes.Repeat([]byte("drain me please!"), size/16)
	go func() {
		c.Write(src)
		c.(*net.TCPConn).CloseWrite()
	}()
	h := sha256.New()
	if n, err := io.Copy(h, r); err != nil || n != size || !bytes.Equal(h.Sum(nil), sha256Sum(src)) {
		t.Fatalf("transfer during drain: %d bytes, %v", n, err)
	}
	c.Close()
	if code := p.Wait(); code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	p.WaitLog("shutdown complete")
}

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// TestSecondSignalExitsAtOnce: a second signal during the drain ends the
// process at once, however long shutdown_timeout is.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	be := StartEcho(t, "be")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, proxyConfig(port, be.Addr, `shutdown_timeout = "10m"`)))
	c := dialT(t, fmt.Sprintf("127.0.0.1:%d", port))
	readLine(t, bufio.NewReader(c))
	p.Signal(syscall.SIGTERM)
	p.WaitLog("shutting down")
	p.Signal(syscall.SIGINT)
	// Wait fails the test unless the process exits within harness.Deadline, far
	// below the 10m shutdown_timeout.
	if code := p.Wait(); code != 1 {
		t.Errorf("exit %d after a second signal, want 1 (the drain did not finish)", code)
	}
	p.WaitLog("second signal: exiting now")
}

// TestShutdownTimeoutCuts: what is still open when shutdown_timeout ends is
// closed, and the process exits 0.
func TestShutdownTimeoutCuts(t *testing.T) {
	be := StartEcho(t, "be")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, proxyConfig(port, be.Addr, `shutdown_timeout = "300ms"`)))
	c := dialT(t, fmt.Sprintf("127.0.0.1:%d", port))
	r := bufio.NewReader(c)
	readLine(t, r)
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(); code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	// The connection was still open when the timeout cut it: the process did
	// not exit before shutdown_timeout.
	p.WaitLog("shutdown timeout: closing connections still open", "connections=1")
	if _, err := io.Copy(io.Discard, r); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client connection not closed: %v", err)
	}
	p.WaitLog("shutdown timeout reached")
}

// fds counts the sockets and pipe ends a process holds.
func fds(t *testing.T, pid int) (sockets, pipeEnds int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(target, "socket:"):
			sockets++
		case strings.HasPrefix(target, "pipe:"):
			pipeEnds++
		}
	}
	return sockets, pipeEnds
}

// TestIdleConnectionDescriptors counts /proc/PID/fd of the running proxy:
// N idle proxied connections add exactly 2N sockets and no pipe, and after
// traffic has flowed on each of them and stopped, still 2N sockets and only
// the few pipes of the shared free pool (a plain io.Copy would hold 4 pipe
// ends per connection, 4N in all).
func TestIdleConnectionDescriptors(t *testing.T) {
	const n = 200
	be := startSilentEcho(t)
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// No active health checks: their probe sockets would blur the count.
	cfg := proxyConfig(port, be.Addr, "") + "\n[health_check]\nenabled = false\n"
	p := Start(t, harness.WriteConfig(t, cfg))
	pid := p.Cmd.Process.Pid
	sock0, pipe0 := fds(t, pid)
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dialT(t, addr)
	}
	harness.Eventually(t, "the backend to see every connection", func() bool { return be.accepted.Load() == n })
	var sock1, pipe1 int
	harness.Eventually(t, "2 sockets per connection", func() bool {
		sock1, pipe1 = fds(t, pid)
		return sock1-sock0 >= 2*n
	})
	if sock1-sock0 != 2*n || pipe1 != pipe0 {
		t.Errorf("%d idle connections: +%d sockets, +%d pipe ends; want +%d and +0", n, sock1-sock0, pipe1-pipe0, 2*n)
	}
	for _, c := range conns {
		echoRoundTrip(t, c, c, 64<<10)
	}
	sock2, pipe2 := fds(t, pid)
	if sock2-sock0 != 2*n {
		t.Errorf("after traffic: +%d sockets, want +%d", sock2-sock0, 2*n)
	}
	if pipe2-pipe0 > 8 {
		t.Errorf("after traffic stopped: +%d pipe ends for %d idle connections; pipes are held per connection", pipe2-pipe0, n)
	}
	t.Logf("%d idle connections: +%d sockets +%d pipe ends before traffic; +%d sockets +%d pipe ends after (pool)",
		n, sock1-sock0, pipe1-pipe0, sock2-sock0, pipe2-pipe0)
}

// TestCLI runs --help, --version-info and --validate through the binary.
func TestCLI(t *testing.T) {
	out, _, code := Run(t, "--help")
	if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "--version-info") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
	out, _, code = Run(t, "--version-info")
	if code != 0 || !strings.Contains(out, "go version: "+runtime.Version()) || !strings.Contains(out, runtime.GOOS+"/"+runtime.GOARCH) {
		t.Errorf("--version-info: exit %d\n%s", code, out)
	}

	good := harness.WriteConfig(t, proxyConfig(harness.FreePort(t), "127.0.0.1:9", ""))
	out, errOut, code := Run(t, "--validate", "-c", good)
	if code != 0 || !strings.Contains(out, good+": ok") || !strings.Contains(out, "rules: 1") || !strings.Contains(out, "backends: 1") {
		t.Errorf("--validate good: exit %d\n%s%s", code, out, errOut)
	}
	bad := harness.WriteConfig(t, `
[server]
tcp_bind = "127.0.0.1:8080"
max_conections = 5

[[rules]]
name = "web"
[[rules.backends]]
id = "web1"
address = "127.0.0.1:99999"
weight = 0
`)
	out, errOut, code = Run(t, "--validate", "-c", bad)
	if code != 1 || out != "" {
		t.Errorf("--validate bad: exit %d, stdout %q", code, out)
	}
	for _, want := range []string{
		bad + `:4: server.max_conections: unknown key "max_conections" (did you mean "max_connections"?)`,
		bad + `:10: rules[0].backends[0].address: invalid address "127.0.0.1:99999": port must be from 1 to 65535`,
		bad + `:11: rules[0].backends[0].weight: must be from 1 to 10000, got 0`,
	} {
		if !strings.Contains(errOut, want+"\n") {
			t.Errorf("--validate bad: stderr lacks %q:\n%s", want, errOut)
		}
	}
}

// TestVersionFromLdflags builds the binary the way the Makefile does and
// checks that --version-info reports what -ldflags -X set.
func TestVersionFromLdflags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "dynamic-proxy")
	const pkg = "github.com/dynamic-proxy/dynamic-proxy/internal/version"
	ld := fmt.Sprintf("-X %s.Version=v9.8.7 -X %s.Commit=0123abc -X %s.Date=2026-02-03T04:05:06Z", pkg, pkg, pkg)
	build := exec.Command("go", "build", "-ldflags", ld, "-o", bin, "../../cmd/dynamic-proxy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version-info").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"dynamic-proxy v9.8.7\n", "commit:     0123abc\n", "built:      2026-02-03T04:05:06Z\n",
		"go version: " + runtime.Version() + "\n", "platform:   " + runtime.GOOS + "/" + runtime.GOARCH + "\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--version-info lacks %q:\n%s", want, out)
		}
	}
}

// startFails runs the binary on cfgPath, expects exit 1, and returns the one
// error line of its stderr (every other line an ordinary log line).
func startFails(t *testing.T, args ...string) string {
	t.Helper()
	_, errOut, code := Run(t, args...)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut)
	}
	for _, bad := range []string{"panic", "goroutine ", ".go:"} {
		if strings.Contains(errOut, bad) {
			t.Fatalf("stderr looks like a crash:\n%s", errOut)
		}
	}
	var errs []string
	for _, line := range strings.Split(strings.TrimSpace(errOut), "\n") {
		if !strings.HasPrefix(line, "time=") || strings.Contains(line, "level=ERROR") {
			errs = append(errs, line)
		}
	}
	if len(errs) != 1 {
		t.Fatalf("want one error line, got %d:\n%s", len(errs), errOut)
	}
	return errs[0]
}

// TestStartErrors: a port in use, an unreadable config and a backend host
// that does not resolve each give one error line naming the thing, exit 1.
func TestStartErrors(t *testing.T) {
	t.Run("port in use", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		line := startFails(t, "-c", harness.WriteConfig(t, proxyConfig(port, "127.0.0.1:9", "")))
		if !strings.Contains(line, fmt.Sprintf("127.0.0.1:%d", port)) || !strings.Contains(line, "address already in use") {
			t.Errorf("error line %q", line)
		}
	})
	t.Run("unreadable config", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "missing.toml")
		line := startFails(t, "-c", missing)
		if line != "dynamic-proxy: cannot read config: open "+missing+": no such file or directory" {
			t.Errorf("error line %q", line)
		}
		dir := t.TempDir()
		if line := startFails(t, "-c", dir); !strings.Contains(line, dir) {
			t.Errorf("error line %q", line)
		}
	})
	t.Run("malformed config", func(t *testing.T) {
		path := harness.WriteConfig(t, "[server\n")
		_, errOut, code := Run(t, "-c", path)
		if code != 1 || !strings.Contains(errOut, path+":1: TOML syntax error") {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("backend does not resolve", func(t *testing.T) {
		// Asked of a DNS server on loopback that knows only example.test.
		resolver := fmt.Sprintf("resolver = %q", startDnsmasq(t))
		line := startFails(t, "-c", harness.WriteConfig(t, proxyConfig(harness.FreePort(t), "backend.invalid:80", resolver)))
		if !strings.Contains(line, "backend.invalid") || !strings.Contains(line, "does not resolve") {
			t.Errorf("error line %q", line)
		}
	})
}

// TestLogOverridesAndJSON: --log-level and --log-format override the file's
// [logging]; every line is then JSON, debug lines included.
func TestLogOverridesAndJSON(t *testing.T) {
	be := StartEcho(t, "be")
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := proxyConfig(port, be.Addr, "max_connections = 1") + "\n[logging]\nlevel = \"error\"\nformat = \"text\"\n"
	// At level error the start-up line (info) would not be logged at all.
	p := Start(t, harness.WriteConfig(t, cfg), "--log-format", "json", "--log-level", "debug")
	c := dialT(t, addr)
	readLine(t, bufio.NewReader(c))
	// Beyond max_connections: rejected at once (the reset may even beat the
	// dial's return), and logged at debug level.
	if c2, err := net.DialTimeout("tcp", addr, harness.Deadline); err == nil {
		c2.SetDeadline(time.Now().Add(harness.Deadline))
		io.Copy(io.Discard, c2)
		c2.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	p.WaitLog(`"level":"DEBUG"`, "max_connections")
	p.Signal(syscall.SIGTERM)
	c.Close()
	p.Wait()
	for _, line := range strings.Split(p.Log(), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not JSON: %q", line)
			continue
		}
		if m["time"] == nil || m["level"] == nil || m["msg"] == nil {
			t.Errorf("JSON line lacks time, level or msg: %q", line)
		}
	}
}

// TestAccessLogLine: with access_log = true each closed connection logs
// rule, client, backend, bytes each way, duration and how it ended.
func TestAccessLogLine(t *testing.T) {
	be := StartEcho(t, "be")
	port := harness.FreePort(t)
	cfg := proxyConfig(port, be.Addr, "") + "\n[logging]\naccess_log = true\nformat = \"json\"\n"
	p := Start(t, harness.WriteConfig(t, cfg))
	c := dialT(t, fmt.Sprintf("127.0.0.1:%d", port))
	r := bufio.NewReader(c)
	readLine(t, r)
	echoRoundTrip(t, c, r, 992)
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, r)
	client := c.LocalAddr().String()
	line := p.WaitLog(`"msg":"connection closed"`, client)
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"rule": "web", "client": client, "backend": "web1", "backend_addr": be.Addr,
		"bytes_in": float64(992), "bytes_out": float64(3 + 992), "end": "eof"}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v (line %s)", k, m[k], v, line)
		}
	}
	if d, ok := m["duration"].(float64); !ok || d <= 0 {
		t.Errorf("duration = %v", m["duration"])
	}
}

// TestFirstEnabledRuleWins: several rules on one listener; a disabled rule
// is skipped and the first enabled rule in file order serves.
func TestFirstEnabledRuleWins(t *testing.T) {
	off, first, second := StartEcho(t, "off"), StartEcho(t, "first"), StartEcho(t, "second")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[[rules]]
name = "off"
enabled = false
backends = [{ id = "o", address = %q }]
[[rules]]
name = "first"
backends = [{ id = "f", address = %q }]
[[rules]]
name = "second"
backends = [{ id = "s", address = %q }]
`, port, off.Addr, first.Addr, second.Addr)))
	p.WaitLog(`rule \"second\" is shadowed by rule \"first\"`)
	for i := 0; i < 3; i++ {
		if got, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port)); err != nil || got != "first" {
			t.Fatalf("served by %q (%v), want the first enabled rule", got, err)
		}
	}
}
