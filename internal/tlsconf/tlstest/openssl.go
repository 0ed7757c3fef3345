package tlstest

import (
	"bufio"
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// SServer runs openssl s_server -www (it answers an HTTP GET with a page
// starting "HTTP/1.0 200 ok") on a free loopback port with args, stopped
// when the test ends, and returns its address once it accepts.
func SServer(t testing.TB, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl not installed (the Debian package openssl; scripts/test.sh installs it)")
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(t)))
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "openssl", append([]string{"s_server", "-accept", addr, "-www"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		var seen []string
		for sc.Scan() {
			seen = append(seen, sc.Text())
			if strings.HasPrefix(sc.Text(), "ACCEPT") {
				ready <- ""
				for sc.Scan() { // drain, so s_server never blocks on its output
				}
				return
			}
		}
		ready <- strings.Join(seen, "\n")
	}()
	select {
	case msg := <-ready:
		if msg != "" {
			t.Fatalf("openssl s_server did not start:\n%s", msg)
		}
	case <-time.After(harness.Deadline):
		t.Fatal("openssl s_server did not start")
	}
	return addr
}
