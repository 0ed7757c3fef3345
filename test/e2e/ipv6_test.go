package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestIPv6ListenerAndBackend: a listener on [::1] forwards to a backend on
// [::1] (IPv6 addresses end to end).
func TestIPv6ListenerAndBackend(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback unavailable: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "v6 %s\n", c.RemoteAddr())
				io.Copy(c, c)
			}()
		}
	}()
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "[::1]:%d"
[health_check]
enabled = false
[[rules]]
name = "v6"
[[rules.backends]]
id = "a"
address = %q
`, port, ln.Addr().String()))
	Start(t, cfg)
	c, err := net.DialTimeout("tcp6", fmt.Sprintf("[::1]:%d", port), harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(harness.Deadline))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "v6 [::1]:") {
		t.Fatalf("through the IPv6 listener: %q %v", line, err)
	}
}
