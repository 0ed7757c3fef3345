package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestWithKeptPart: a new report replaces the old one but keeps what
// follows the marker, and a file without the marker is replaced whole.
func TestWithKeptPart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if got := withKeptPart(path, "# new\n"); got != "# new\n" {
		t.Errorf("no file: %q", got)
	}
	kept := keptMarker + "\n\n## By hand\n\nfigures\n"
	if err := os.WriteFile(path, []byte("# old\n\n"+kept), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := withKeptPart(path, "# new\n"); got != "# new\n\n"+kept {
		t.Errorf("with the marker: %q", got)
	}
	if err := os.WriteFile(path, []byte("# old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := withKeptPart(path, "# new\n"); got != "# new\n" {
		t.Errorf("without the marker: %q", got)
	}
}

func TestParseIperf(t *testing.T) {
	gbps, gb, err := parseIperf([]byte(`{"end":{"sum_received":{"bytes":6000000000,"bits_per_second":12000000000}}}`))
	if err != nil || gbps != 12 || gb != 6 {
		t.Fatalf("a good report: %v Gbit/s, %v GB, %v; want 12, 6, nil", gbps, gb, err)
	}
	for _, c := range []struct{ out, want string }{
		{`{"end":{"sum_received":{"bytes":0,"bits_per_second":0}}}`, "no bytes"},
		{`{"end":{}}`, "no bytes"},
		{`{"error":"unable to connect to server"}`, "unable to connect"},
		{`not json`, "iperf3 report"},
	} {
		if _, _, err := parseIperf([]byte(c.out)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseIperf(%s): %v, want an error with %q", c.out, err, c.want)
		}
	}
}

func TestFailedRounds(t *testing.T) {
	targets := []*target{{name: "a"}, {name: "b"}, {name: "c"}}
	res := map[string][]sample{"a": {{}, {}}, "b": {{}, {}, {}}}
	errs := map[string][]string{"a": {"x", "iperf3 received no bytes"}, "c": {"down"}}
	got := failedRounds(targets, errs, res)
	want := "Rounds that failed, left out of the medians: a 2 of 4 (iperf3 received no bytes)."
	if got != want {
		t.Fatalf("failedRounds = %q, want %q (c failed every round: it has an error row instead)", got, want)
	}
	if got := failedRounds(targets, nil, res); got != "" {
		t.Fatalf("no failures: %q, want nothing", got)
	}
}

// TestFloorRelays builds the floor relay and checks that it relays: TCP
// echoes through it on several connections at once, each half-closed by
// the client, which gets every byte back and then EOF; a backend that
// refuses closes the client's connection; UDP round trips from two client
// sockets each get their own replies; and once the connections are closed
// the relay holds no more descriptors than before them.
func TestFloorRelays(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the floor relay uses epoll")
	}
	if _, err := exec.LookPath("cc"); err != nil {
		t.Fatal("no C compiler (cc): scripts/test.sh installs gcc")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "floor")
	if out, err := exec.Command("cc", "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join("floor", "floor.c")).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}

	// Backends: TCP echo (until EOF, then close) and UDP echo.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
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
			pc.WriteTo(buf[:n], from)
		}
	}()
	refused := freePort(t, "tcp") // nothing listens there

	tcpFront, refusedFront, udpFront := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "udp")
	cmd := exec.Command(bin, "-t", tcpFront+"="+ln.Addr().String(), "-t", refusedFront+"="+refused, "-u", udpFront+"="+pc.LocalAddr().String())
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var c0 net.Conn
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c0, err = net.Dial("tcp", tcpFront); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the floor relay does not accept on %s: %v", tcpFront, err)
		}
	}
	c0.Close()
	// The relay's sockets (it may inherit other descriptors from the test's
	// parent, which say nothing).
	fds := func() int {
		dir := fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid)
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
				n++
			}
		}
		return n
	}
	waitFds := func(want int, what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); fds() != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the relay holds %d sockets, want %d", what, fds(), want)
			}
		}
	}
	const idle = 3 // the listeners
	waitFds(idle, "before the connections")

	// TCP: several connections at once, each sending more than the relay's
	// buffer and the socket buffers hold, then half-closing; half of them
	// read late, so that the relay's writes find full sockets.
	const conns, size = 8, 4 << 20
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		go func(i int) {
			c, err := net.Dial("tcp", tcpFront)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			msg := make([]byte, size)
			for k := range msg {
				msg[k] = byte(i*7 + k%251)
			}
			go func() {
				c.Write(msg)
				c.(*net.TCPConn).CloseWrite()
			}()
			if i%2 == 1 {
				time.Sleep(300 * time.Millisecond)
			}
			got, err := io.ReadAll(c) // to EOF
			if err != nil {
				errs <- fmt.Errorf("connection %d: %v after %d bytes", i, err, len(got))
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("connection %d: %d bytes back, not the %d sent", i, len(got), len(msg))
				return
			}
			errs <- nil
		}(i)
	}
	for i := 0; i < conns; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	waitFds(idle, "after the TCP connections closed")

	// A backend that refuses: the client's connection is closed.
	c, err := net.Dial("tcp", refusedFront)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || os.IsTimeout(err) {
		t.Errorf("backend refused: read %d bytes, %v; want EOF or a reset", n, err)
	}
	c.Close()
	waitFds(idle, "after the refused connection")

	// UDP: two client sockets, each getting its own replies.
	var clients [2]net.Conn
	for k := range clients {
		if clients[k], err = net.Dial("udp", udpFront); err != nil {
			t.Fatal(err)
		}
		defer clients[k].Close()
	}
	for round := 0; round < 5; round++ {
		for k, c := range clients {
			msg := fmt.Sprintf("client %d round %d", k, round)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != msg {
				t.Fatalf("client %d: got %q, %v; want %q", k, buf[:n], err, msg)
			}
		}
	}
	waitFds(idle+2, "two UDP sessions, one backend socket each")
}

// freePort is a 127.0.0.1 address with a port free for network ("tcp" or
// "udp") a moment ago.
func freePort(t *testing.T, network string) string {
	t.Helper()
	var addr string
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		pc.Close()
	} else {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
	}
	return addr
}

// TestFloorRows: the Targets table holds dynamic-proxy's CPU against the
// floor's as the median of per-round ratios, and the floor is no peer.
func TestFloorRows(t *testing.T) {
	round := func(r, cpu float64) sample { return sample{roundKey: r, "cpu_us_per_op": cpu} }
	results := map[string]map[string][]sample{
		"churn-4000/s": {
			"dynamic-proxy": {round(0, 11), round(1, 30), round(2, 12)},
			"floor":         {round(0, 10), round(1, 20), round(2, 10)}, // ratios 1.1, 1.5, 1.2
		},
		"redis-get": {
			"dynamic-proxy": {round(0, 10)},
			"floor":         {round(0, 10)},
			"haproxy":       {round(0, 12)},
		},
	}
	table := targetsTable(results)
	for _, want := range []string{
		"| dynamic-proxy CPU ≤ 1.15 × floor (churn-4000/s) | dp/floor = 1.200 | median of 3 per-round ratios ≤ 1.15 | **no** |",
		"| dynamic-proxy CPU ≤ 1.15 × floor (redis-get) | dp/floor = 1.000 | median of 1 per-round ratios ≤ 1.15 | yes |",
		"| dynamic-proxy CPU ≤ 1.15 × floor (udp-20000/s) | – | – | not measured |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("no row %q in\n%s", want, table)
		}
	}
	if name, _, _ := bestPeer(results["redis-get"], metric{key: "cpu_us_per_op"}); name != "haproxy" {
		t.Errorf("best peer on redis-get: %q, want haproxy (the floor is no peer)", name)
	}
}
