// Package e2e tests the built dynamic-proxy binary end to end, on loopback.
//
// TestMain builds the binary once; each test starts it with Start (a config
// written to a temp dir), waits for events on its log (never sleeps), and
// stops it by PID when the test ends.
package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binary string

// Deadline is the generous bound every wait in these tests uses.
const Deadline = 20 * time.Second

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dp-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "dynamic-proxy")
	args := []string{"build", "-o", binary}
	if os.Getenv("E2E_RACE") != "" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../../cmd/dynamic-proxy")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the binary failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Proxy is a running dynamic-proxy process.
type Proxy struct {
	t      testing.TB
	Cmd    *exec.Cmd
	Config string // path of its config file

	mu     sync.Mutex
	lines  []string
	notify chan struct{}
	exited chan struct{}
	err    error
}

// WriteConfig writes a config file into a temp dir and returns its path.
//
// Unless the config has its own [metrics] or [admin] section, the metrics
// and admin servers are put on free ports (127.0.0.1:0), so that the
// proxies of several tests, or of other test runs on this machine, never
// collide on the default ports 9090 and 9091.
func WriteConfig(t testing.TB, toml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	toml = WithFreeObservePorts(toml)
	if err := os.WriteFile(p, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Run runs the binary to completion with args and returns its output and exit code.
func Run(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

// Start runs the binary on configPath with extra args, and waits until it
// logs "dynamic-proxy started". It is stopped (SIGKILL) when the test ends
// if still running.
func Start(t testing.TB, configPath string, args ...string) *Proxy {
	t.Helper()
	p := StartNoWait(t, configPath, args...)
	p.WaitLog("dynamic-proxy started")
	return p
}

// StartNoWait starts the binary without waiting for it to be ready.
func StartNoWait(t testing.TB, configPath string, args ...string) *Proxy {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"-c", configPath}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	p := &Proxy{t: t, Cmd: cmd, Config: configPath, notify: make(chan struct{}), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.notify)
			p.notify = make(chan struct{})
			p.mu.Unlock()
		}
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("proxy log:\n%s", p.Log())
		}
	})
	return p
}

// Log returns everything the process logged so far.
func (p *Proxy) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// WaitLog waits until a log line contains every one of subs, and returns it.
func (p *Proxy) WaitLog(subs ...string) string {
	p.t.Helper()
	deadline := time.After(Deadline)
	seen := 0
	for {
		p.mu.Lock()
		lines, ch := p.lines, p.notify
		p.mu.Unlock()
		for ; seen < len(lines); seen++ {
			if containsAll(lines[seen], subs) {
				return lines[seen]
			}
		}
		select {
		case <-ch:
		case <-p.exited:
			p.mu.Lock()
			lines = p.lines
			p.mu.Unlock()
			for ; seen < len(lines); seen++ {
				if containsAll(lines[seen], subs) {
					return lines[seen]
				}
			}
			p.t.Fatalf("proxy exited (%v) before logging %q; log:\n%s", p.err, subs, p.Log())
		case <-deadline:
			p.t.Fatalf("proxy did not log %q within %v; log:\n%s", subs, Deadline, p.Log())
		}
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// Signal sends sig to the process.
func (p *Proxy) Signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proxy) Wait() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(Deadline):
		p.t.Fatalf("proxy did not exit within %v; log:\n%s", Deadline, p.Log())
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return 0
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, below
// the ephemeral range's usual start so a TIME_WAIT socket cannot hold it.
func FreePort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 1000; i++ {
		port := 20000 + int(time.Now().UnixNano()/1000%12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return port
	}
	t.Fatal("no free port")
	return 0
}

// EchoServer is a TCP backend that greets with "NAME\n" then echoes.
type EchoServer struct {
	Name string
	Addr string
	ln   net.Listener
}

// StartEcho starts an echo backend on 127.0.0.1 named name.
func StartEcho(t testing.TB, name string) *EchoServer {
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
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(e.Close)
	return e
}

// Close stops accepting.
func (e *EchoServer) Close() { e.ln.Close() }

// Greeting dials addr and returns the first line the backend sends (its
// name), or an error.
func Greeting(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, Deadline)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(Deadline))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

var (
	metricsSection = regexp.MustCompile(`(?m)^\s*\[metrics\]`)
	adminSection   = regexp.MustCompile(`(?m)^\s*\[admin\]`)
)

// WithFreeObservePorts appends [metrics] and [admin] sections binding
// 127.0.0.1:0 to a config that has none of its own.
func WithFreeObservePorts(toml string) string {
	if !metricsSection.MatchString(toml) {
		toml += "\n[metrics]\nbind = \"127.0.0.1:0\"\n"
	}
	if !adminSection.MatchString(toml) {
		toml += "\n[admin]\nbind = \"127.0.0.1:0\"\n"
	}
	return toml
}
