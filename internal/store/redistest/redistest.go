// Package redistest starts a real redis-server for tests: on a free port of
// 127.0.0.1, with its own temporary directory, stopped when the test ends.
// It never uses a Redis already running on the machine. The Debian package
// redis-server provides the binary (scripts/test.sh installs it).
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Deadline bounds the wait for redis-server to start or stop.
const Deadline = 20 * time.Second

// Server is one redis-server process (or the place of one, between Kill
// and Restart).
type Server struct {
	t    testing.TB
	Port int
	Addr string // 127.0.0.1:PORT
	Dir  string // its working directory (dump/AOF files)
	TLS  bool   // it speaks TLS only (StartTLS)
	args []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	out    []string
}

// Binary is the redis-server to run.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server"} {
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	t.Fatal("redis-server not found: install the Debian package redis-server (scripts/test.sh does)")
	return ""
}

// Start runs redis-server on a free port of 127.0.0.1 with no persistence
// unless extra arguments ask for it (e.g. "--appendonly", "yes"), and waits
// until it accepts connections.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	return start(t, false, extra)
}

// StartTLS runs redis-server accepting TLS only, with the certificate and
// key in the given PEM files (clients are not asked for certificates).
func StartTLS(t testing.TB, certFile, keyFile string, extra ...string) *Server {
	t.Helper()
	return start(t, true, append([]string{"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no"}, extra...))
}

func start(t testing.TB, tls bool, extra []string) *Server {
	t.Helper()
	s := &Server{t: t, Dir: t.TempDir(), TLS: tls}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.Port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		ports := []string{"--port", strconv.Itoa(s.Port)}
		if tls {
			ports = []string{"--port", "0", "--tls-port", strconv.Itoa(s.Port)}
		}
		s.args = append(append(ports, "--bind", "127.0.0.1", "--dir", s.Dir,
			"--save", "", "--appendonly", "no", "--logfile", "", "--daemonize", "no", "--loglevel", "notice"), extra...)
		if lastErr = s.start(); lastErr == nil {
			t.Cleanup(s.stop)
			return s
		}
	}
	t.Fatalf("redis-server would not start: %v", lastErr)
	return nil
}

// URL is redis://127.0.0.1:PORT, or rediss:// for TLS.
func (s *Server) URL() string {
	if s.TLS {
		return "rediss://" + s.Addr
	}
	return "redis://" + s.Addr
}

func (s *Server) start() error {
	cmd := exec.Command(Binary(s.t), s.args...)
	cmd.Dir = s.Dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	ready := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.exited, s.out = cmd, exited, nil
	s.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.out = append(s.out, line)
			s.mu.Unlock()
			if strings.Contains(line, "Ready to accept connections") {
				once.Do(func() { close(ready) })
			}
		}
		cmd.Wait()
		close(exited)
	}()
	select {
	case <-ready:
		return nil
	case <-exited:
		return fmt.Errorf("redis-server exited at start:\n%s", s.Output())
	case <-time.After(Deadline):
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("redis-server not ready within %v:\n%s", Deadline, s.Output())
	}
}

// Output is what redis-server logged since it last started.
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.out, "\n")
}

// Kill stops redis-server with SIGKILL (no shutdown save) and waits until
// it is gone and its port is closed.
func (s *Server) Kill() {
	s.t.Helper()
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	select {
	case <-exited:
	case <-time.After(Deadline):
		s.t.Fatalf("redis-server did not exit within %v", Deadline)
	}
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}

// Restart starts redis-server again on the same port and directory (with
// --appendonly yes its data survives a Kill).
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

func (s *Server) stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
	if s.t.Failed() {
		s.t.Logf("redis-server %s log:\n%s", s.Addr, s.Output())
	}
}
