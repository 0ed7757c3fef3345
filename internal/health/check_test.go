package health

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// closedPort returns a 127.0.0.1 address nothing listens on.
func closedPort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		pc.Close()
		return addr
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestProbeTCP(t *testing.T) {
	redis := startTCP(t, func(c net.Conn, _ int64) {
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		if string(buf[:n]) == "PING\r\n" {
			io.WriteString(c, "+PONG\r\n")
		} else {
			io.WriteString(c, "-ERR unknown command\r\n")
		}
	})
	banner := startTCP(t, func(c net.Conn, _ int64) { io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n") })
	slowBanner := startTCP(t, func(c net.Conn, _ int64) {
		io.WriteString(c, "+PO") // then nothing: the rest never comes
		c.Read(make([]byte, 1))
	})
	silent := startTCP(t, func(c net.Conn, _ int64) { io.Copy(io.Discard, c) })
	hangup := startTCP(t, func(c net.Conn, _ int64) {})
	closed := closedPort(t, "tcp")

	set := func(edit func(*config.HealthCheck)) func(*config.HealthCheck) {
		return func(h *config.HealthCheck) {
			h.Timeout = config.Duration(300 * time.Millisecond)
			h.Interval = config.Duration(time.Second)
			if edit != nil {
				edit(h)
			}
		}
	}
	ping := func(expect string) func(*config.HealthCheck) {
		return set(func(h *config.HealthCheck) { h.Send, h.Expect = "PING\r\n", expect })
	}
	cases := []struct {
		name, addr string
		edit       func(*config.HealthCheck)
		kind       string
		wantErr    string // "" for a pass
	}{
		{"connect", redis.addr, set(nil), "tcp connect", ""},
		{"connect refused", closed, set(nil), "tcp connect", "dial tcp " + closed + ": connect: connection refused"},
		{"send/expect pass", redis.addr, ping("+PONG"), "tcp send/expect", ""},
		{"send/expect whole line", redis.addr, ping("+PONG\r\n"), "tcp send/expect", ""},
		{"send/expect wrong reply", redis.addr, set(func(h *config.HealthCheck) { h.Send, h.Expect = "HELLO\r\n", "+PONG" }),
			"tcp send/expect", `reply "-ERR " does not start with "+PONG"`},
		{"expect hex", redis.addr, set(func(h *config.HealthCheck) { h.SendHex, h.ExpectHex = "50494e470d0a", "2b504f4e47" }), "tcp send/expect", ""},
		{"expect regex pass", redis.addr, set(func(h *config.HealthCheck) { h.Send, h.ExpectRegex = "PING\r\n", `(?m)^\+PO[N]G\r$` }), "tcp send/expect", ""},
		{"expect regex fail", redis.addr, set(func(h *config.HealthCheck) { h.Send, h.ExpectRegex = "X\r\n", `^\+PONG` }),
			"tcp send/expect", `reply "-ERR unknown command\r\n" does not match /^\+PONG/`},
		{"banner without send", banner.addr, set(func(h *config.HealthCheck) { h.Expect = "SSH-2.0-" }), "tcp send/expect", ""},
		{"banner mismatch", banner.addr, set(func(h *config.HealthCheck) { h.Expect = "220 " }), "tcp send/expect", `reply "SSH-" does not start with "220 "`},
		{"send only", silent.addr, set(func(h *config.HealthCheck) { h.Send = "hello" }), "tcp send/expect", ""},
		{"no reply", silent.addr, ping("+PONG"), "tcp send/expect", "no reply from tcp " + silent.addr + " within 300ms"},
		{"partial reply", slowBanner.addr, set(func(h *config.HealthCheck) { h.Expect = "+PONG" }), "tcp send/expect",
			`reply "+PO" does not start with "+PONG" (no more within 300ms)`},
		{"closed without reply", hangup.addr, set(func(h *config.HealthCheck) { h.Expect = "+OK" }), "tcp send/expect",
			"tcp " + hangup.addr + " closed the connection without a reply"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := check(t, "tcp", tc.addr, tc.edit)
			if c.Kind() != tc.kind {
				t.Errorf("kind %q, want %q", c.Kind(), tc.kind)
			}
			// The probe's own timeout must end it, naming it in the error;
			// the context only keeps a probe that ignores it from hanging.
			ctx, cancel := context.WithTimeout(context.Background(), harness.Deadline)
			defer cancel()
			err := c.Probe(ctx)
			if ctx.Err() != nil {
				t.Fatalf("probe still running %v later (timeout %v): %v", harness.Deadline, c.Timeout, err)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("want a pass, got %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("want a failure containing %q, got a pass", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestProbeUDP: a UDP check passes only on a reply that matches, never on
// silence.
func TestProbeUDP(t *testing.T) {
	pong := startUDP(t, func(req []byte, _ int64) []byte {
		if string(req) == "PING\r\n" {
			return []byte("+PONG\r\n")
		}
		return []byte("-ERR\r\n")
	})
	silent := startUDP(t, func([]byte, int64) []byte { return nil })
	closed := closedPort(t, "udp")
	cases := []struct {
		name, addr, send, expect, regex string
		wantErr                         string
	}{
		{"reply matches", pong.addr, "PING\r\n", "+PONG", "", ""},
		{"any reply", pong.addr, "PING\r\n", "", "", ""},
		{"regex", pong.addr, "PING\r\n", "", `^\+PONG\r\n$`, ""},
		{"wrong reply", pong.addr, "HELLO", "+PONG", "", `reply "-ERR\r\n" does not start with "+PONG"`},
		{"regex mismatch", pong.addr, "HELLO", "", `PONG`, `does not match /PONG/`},
		{"silence", silent.addr, "PING\r\n", "+PONG", "", "no reply from udp " + silent.addr + " within 200ms"},
		{"silence without expect", silent.addr, "PING\r\n", "", "", "no reply from udp"},
		{"nothing listening", closed, "PING\r\n", "", "", ""}, // refused (ICMP) or no reply: a failure either way
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := check(t, "udp", tc.addr, func(h *config.HealthCheck) {
				h.Send, h.Expect, h.ExpectRegex = tc.send, tc.expect, tc.regex
				h.Timeout, h.Interval = config.Duration(200*time.Millisecond), config.Duration(time.Second)
			})
			if c.Kind() != "udp send/expect" {
				t.Errorf("kind %q", c.Kind())
			}
			err := c.Probe(context.Background())
			if tc.name == "nothing listening" {
				if err == nil {
					t.Fatal("a UDP check of a closed port passed")
				}
				if !strings.Contains(err.Error(), "connection refused") && !strings.Contains(err.Error(), "no reply") {
					t.Fatalf("unexpected reason %q", err)
				}
				return
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("want a pass, got %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("want a failure containing %q, got a pass", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
	if n := silent.received.Load(); n < 2 {
		t.Errorf("the silent server received %d checks; the checks did not reach it", n)
	}
}

// TestProbePort: port checks another port of the backend's host.
func TestProbePort(t *testing.T) {
	s := startTCP(t, nil)
	_, port, _ := net.SplitHostPort(s.addr)
	traffic := closedPort(t, "tcp")
	p, _ := strconv.Atoi(port)
	c := check(t, "tcp", traffic, func(h *config.HealthCheck) { h.Port = p })
	if c.Target != s.addr || c.Address != traffic {
		t.Fatalf("target %s address %s", c.Target, c.Address)
	}
	if err := c.Probe(context.Background()); err != nil {
		t.Fatalf("check of port %d failed: %v", p, err)
	}
	// The check passes once the kernel completed the handshake; the
	// server's accept loop may count the connection a moment later.
	harness.Eventually(t, "the check port's server to accept the check", func() bool { return s.accepted.Load() >= 1 })
	if s.accepted.Load() != 1 {
		t.Errorf("check port got %d connections", s.accepted.Load())
	}
}

// TestProbeCanceled: a check in flight ends as soon as its context does.
func TestProbeCanceled(t *testing.T) {
	silent := startTCP(t, func(c net.Conn, _ int64) { c.Read(make([]byte, 1)) })
	c := check(t, "tcp", silent.addr, func(h *config.HealthCheck) {
		h.Expect, h.Timeout, h.Interval = "x", config.Duration(time.Hour), config.Duration(2*time.Hour)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Probe(ctx) }()
	harness.Eventually(t, "the check to connect", func() bool { return silent.accepted.Load() == 1 })
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a canceled check passed")
		}
	case <-time.After(deadline):
		t.Fatal("canceling did not end the check")
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*config.HealthCheck)
		want string
	}{
		{"timeout", func(h *config.HealthCheck) { h.Timeout = h.Interval }, "need 0 < timeout"},
		{"rise", func(h *config.HealthCheck) { h.Rise = 0 }, "must be at least 1"},
		{"udp send", func(h *config.HealthCheck) { h.Send = "" }, "a UDP check needs send"},
		{"regex", func(h *config.HealthCheck) { h.ExpectRegex = "(" }, "expect_regex"},
	} {
		hc := config.HealthCheck{Enabled: true, Interval: config.Duration(time.Second), Timeout: config.Duration(time.Millisecond), Retries: 1, Rise: 1, Send: "x"}
		tc.edit(&hc)
		if _, err := Compile("udp", "127.0.0.1:1", hc); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestOffsetsSpread: the first checks of many backends are spread over the
// interval, not bunched at its start.
func TestOffsetsSpread(t *testing.T) {
	const n, buckets = 1000, 10
	interval := time.Second
	var count [buckets]int
	for i := 0; i < n; i++ {
		c := &Check{Protocol: "tcp", Address: "127.0.0.1:" + strconv.Itoa(20000+i), Interval: interval}
		c.Target = c.Address
		off := c.offset()
		if off < 0 || off >= interval {
			t.Fatalf("offset %v outside [0, %v)", off, interval)
		}
		if again := c.offset(); again != off {
			t.Fatalf("offset not deterministic: %v then %v", off, again)
		}
		count[off*buckets/interval]++
	}
	for i, c := range count {
		if c < n/buckets/2 || c > n/buckets*2 {
			t.Errorf("bucket %d of the interval holds %d of %d first checks: %v", i, c, n, count)
		}
	}
}
