// Package e2e tests the built dynamic-proxy binary end to end, on loopback.
//
// TestMain builds the binary once; each test starts it with Start (a config
// written to a temp dir), waits for events on its log (never sleeps), and
// stops it by PID when the test ends.
package e2e

import (
	"bytes"
	"io"
	"net"
	"os/exec"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

var binary string

func TestMain(m *testing.M) { harness.Main(m, "e2e", "E2E_RACE", &binary) }

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
func Start(t testing.TB, configPath string, args ...string) *harness.Proxy {
	t.Helper()
	p := StartNoWait(t, configPath, args...)
	p.WaitLog("dynamic-proxy started")
	return p
}

// StartNoWait starts the binary without waiting for it to be ready.
func StartNoWait(t testing.TB, configPath string, args ...string) *harness.Proxy {
	t.Helper()
	return harness.Launch(t, configPath, append([]string{binary, "-c", configPath}, args...)...)
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
	return StartEchoOn(t, name, "127.0.0.1:0")
}

// StartEchoOn starts an echo backend named name listening on addr.
func StartEchoOn(t testing.TB, name, addr string) *EchoServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
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
