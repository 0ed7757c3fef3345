package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
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

// TestParseWrk reads wrk 4.1 reports captured with --latency: kept alive,
// Connection: close, every response a 503, and no request answered.
func TestParseWrk(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		file string
		want wrkResult
	}{
		{"wrk-keepalive.txt", wrkResult{requests: 97004, rate: 88171.35, p50ms: 0.304, p99ms: 2.27}},
		{"wrk-close.txt", wrkResult{requests: 22095, rate: 22075.73, p50ms: 0.765, p99ms: 2.36}},
		{"wrk-non2xx.txt", wrkResult{requests: 108072, rate: 108010.87, p50ms: 0.227, p99ms: 0.716, errors: 108072}},
	} {
		got, err := parseWrk(read(c.file))
		if err != nil || !near(got.requests, c.want.requests) || !near(got.rate, c.want.rate) || !near(got.p50ms, c.want.p50ms) ||
			!near(got.p99ms, c.want.p99ms) || !near(got.errors, c.want.errors) {
			t.Errorf("%s: %+v, %v; want %+v", c.file, got, err, c.want)
		}
	}
	// wrk prints this line only when a socket failed (format from wrk's
	// src/wrk.c); every count is an error.
	withErrs := strings.Replace(string(read("wrk-close.txt")), "Requests/sec:",
		"  Socket errors: connect 1, read 20, write 0, timeout 3\nRequests/sec:", 1)
	if got, err := parseWrk([]byte(withErrs)); err != nil || got.errors != 24 {
		t.Errorf("socket errors: %+v, %v; want 24 errors", got, err)
	}
	if _, err := parseWrk(read("wrk-none.txt")); err == nil || !strings.Contains(err.Error(), "no request") {
		t.Errorf("no request answered: %v, want an error", err)
	}
	if _, err := parseWrk([]byte("unable to connect to 127.0.0.1:21999 Connection refused\n")); err == nil {
		t.Error("connection refused: no error")
	}
}

func TestParseWrkDur(t *testing.T) {
	for in, want := range map[string]float64{"412.00us": 0.412, "1.25ms": 1.25, "2.00s": 2000, "1.50m": 90000} {
		if got, err := parseWrkDur(in); err != nil || !near(got, want) {
			t.Errorf("parseWrkDur(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseWrkDur("3.00h"); err == nil {
		t.Error("an hour: no error")
	}
}

// TestParseIperfUDP reads iperf3 3.12's UDP report (-u -J, trimmed to its
// start and end sums): the receiver's counts, not the sender's.
func TestParseIperfUDP(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "iperf3-udp.json"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseIperfUDP(b)
	if err != nil || !near(got.lostPct, 1.0704957908778066) || !near(got.gbps, 0.9883021535403588) || !near(got.gb, 0.1235584) {
		t.Fatalf("parseIperfUDP: %+v, %v; want 1.07 %% lost, 0.988 Gbit/s, 0.124 GB received", got, err)
	}
	// Without sum_received (iperf3 before 3.10), end.sum has the same counts.
	old := `{"end":{"sum":{"bytes":123558400,"bits_per_second":988302153.5,"lost_percent":1.07,"packets":89211}}}`
	if got, err := parseIperfUDP([]byte(old)); err != nil || got.lostPct != 1.07 {
		t.Errorf("end.sum only: %+v, %v", got, err)
	}
	for _, c := range []struct{ out, want string }{
		{`{"end":{"sum_received":{"bytes":0,"packets":0}}}`, "no datagram"},
		{`{"end":{}}`, "no datagram"},
		{`{"error":"unable to connect to server"}`, "unable to connect"},
		{`not json`, "iperf3 report"},
	} {
		if _, err := parseIperfUDP([]byte(c.out)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseIperfUDP(%s): %v, want an error with %q", c.out, err, c.want)
		}
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// Output of perf 6.1 on this VM, trimmed: `perf stat -x, -o FILE -e … -p
// PID` stopped by SIGINT while bench -mode churn loaded a bench -mode echo.
const perfStatOut = `# started on Thu Dec  3 11:16:26 2026

196.05,msec,task-clock,196051161,100.00,0.152,CPUs utilized
8564,,context-switches,196051161,100.00,43.682,K/sec
44505,,raw_syscalls:sys_enter,196051161,100.00,227.007,K/sec
8671,,syscalls:sys_enter_splice,196051161,100.00,44.228,K/sec
3380,,syscalls:sys_enter_accept4,196051161,100.00,17.240,K/sec
`

// The same with -p naming a process that never ran in the window.
const perfStatNotCounted = `# started on Thu Dec  3 11:15:03 2026

<not counted>,msec,task-clock,0,100.00,,
<not counted>,,raw_syscalls:sys_enter,0,100.00,,
`

// `perf trace -s -o FILE -p PID`, same load, two of its threads (one
// created while traced: clone3).
const perfTraceOut = `
 Summary of events:

 benchbin (28160), 1712 events, 3.6%

   syscall            calls  errors  total       min       avg       max       stddev
                                     (msec)    (msec)    (msec)    (msec)        (%)
   --------------- --------  ------ -------- --------- --------- ---------     ------
   futex                 98      0   193.687     0.000     1.976    42.441     31.42%
   epoll_pwait          112      0    10.017     0.004     0.089     1.143     24.33%
   splice               211     51     1.579     0.004     0.007     0.021      4.14%
   accept4               61     23     0.433     0.005     0.007     0.016      4.18%


 benchbin (28158), 7454 events, 15.8%

   syscall            calls  errors  total       min       avg       max       stddev
                                     (msec)    (msec)    (msec)    (msec)        (%)
   --------------- --------  ------ -------- --------- --------- ---------     ------
   futex                944      4   579.676     0.000     0.614     3.668      2.81%
   nanosleep           2668      0   327.156     0.030     0.123     1.840      2.01%
   clone3                 1      0     0.020     0.020     0.020     0.020      0.00%
`

func TestParsePerfStat(t *testing.T) {
	ev, err := parsePerfStat([]byte(perfStatOut))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"task-clock": 196.05, "context-switches": 8564, "raw_syscalls:sys_enter": 44505,
		"syscalls:sys_enter_splice": 8671, "syscalls:sys_enter_accept4": 3380}
	if len(ev) != len(want) {
		t.Errorf("got %v, want %v", ev, want)
	}
	for k, v := range want {
		if ev[k] != v {
			t.Errorf("%s = %v, want %v", k, ev[k], v)
		}
	}
	if _, err := parsePerfStat([]byte(perfStatNotCounted)); err == nil || !strings.Contains(err.Error(), "not counted") {
		t.Errorf("not counted: %v, want an error", err)
	}
	if _, err := parsePerfStat([]byte("# started on Thu Dec  3 11:15:03 2026\n\n")); err == nil {
		t.Error("no counts: no error")
	}
}

func TestParsePerfTrace(t *testing.T) {
	// LOST is perf trace's own line for dropped events (builtin-trace.c:
	// "LOST %" PRIu64 " events!").
	calls, lost, err := parsePerfTrace([]byte("LOST 17 events!\n" + perfTraceOut))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"futex": 1042, "epoll_pwait": 112, "splice": 211, "accept4": 61, "nanosleep": 2668, "clone3": 1}
	if len(calls) != len(want) {
		t.Errorf("got %v, want %v", calls, want)
	}
	for k, v := range want {
		if calls[k] != v {
			t.Errorf("%s = %d, want %d (summed over threads)", k, calls[k], v)
		}
	}
	if lost != 17 {
		t.Errorf("lost = %d, want 17", lost)
	}
	if _, _, err := parsePerfTrace([]byte("\n Summary of events:\n\n")); err == nil {
		t.Error("no summary: no error")
	}
}

func TestTopSyscalls(t *testing.T) {
	got := topSyscalls(map[string]float64{"read": 2, "write": 2, "accept4": 1, "close": 2, "epoll_wait": 0.4, "futex": 0.01}, 4)
	if want := "close 2.00, read 2.00, write 2.00, accept4 1.00, other 0.410"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestFloorRelays builds the floor relay and checks that it relays TCP
// (checkTCPRelay); UDP round trips from two client sockets each get their
// own replies; a -1 listener's session ends with its reply; and once the
// connections are closed the relay holds no more descriptors than before
// them.
func TestFloorRelays(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the floor relay uses epoll")
	}
	if _, err := exec.LookPath("cc"); err != nil {
		t.Fatal("no C compiler (cc): scripts/test.sh installs gcc")
	}
	bin := buildRelay(t, "floor.c")
	tb := startTCPBackends(t)
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

	fr := newTCPFronts(t)
	udpFront, oneFront := freePort(t, "udp"), freePort(t, "udp")
	cmd := startRelay(t, bin, append(fr.args(tb), "-u", udpFront+"="+pc.LocalAddr().String(), "-1", oneFront+"="+pc.LocalAddr().String())...)
	waitAccepts(t, fr.echo)
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
	const idle = 5 // the listeners
	waitFds(idle, "before the connections")
	checkTCPRelay(t, tb, fr, func(what string) { waitFds(idle, what) })

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

	// -1: a session per request, ended by its reply; the same client
	// socket gets a new one each time.
	one, err := net.Dial("udp", oneFront)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	for round := 0; round < 3; round++ {
		msg := fmt.Sprintf("one-shot %d", round)
		one.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := one.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		if n, err := one.Read(buf); err != nil || string(buf[:n]) != msg {
			t.Fatalf("-1: got %q, %v; want %q", buf[:n], err, msg)
		}
		waitFds(idle+2, "a -1 session ended by its reply")
	}
}

// TestFloorUringRelays builds the io_uring floor relay and checks that it
// relays TCP like the epoll one (checkTCPRelay). Its sockets live in the
// ring's file table, not in /proc/PID/fd, so that no connection is left
// open is read from /proc/net/tcp. It is TCP only: -u is refused.
func TestFloorUringRelays(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the io_uring floor relay is Linux only")
	}
	if _, err := exec.LookPath("cc"); err != nil {
		t.Fatal("no C compiler (cc): scripts/test.sh installs gcc")
	}
	if _, err := os.Stat("/usr/include/liburing.h"); err != nil {
		t.Fatal("no liburing.h: scripts/test.sh installs liburing-dev")
	}
	bin := buildRelay(t, "floor_uring.c", "-luring")
	if err := exec.Command(bin, "-u", "127.0.0.1:1=127.0.0.1:2").Run(); err == nil {
		t.Error("floor_uring -u: no error, want it refused (TCP only)")
	}
	tb := startTCPBackends(t)
	fr := newTCPFronts(t)
	startRelay(t, bin, fr.args(tb)...)
	waitAccepts(t, fr.echo)
	checkTCPRelay(t, tb, fr, func(string) {})
}

// buildRelay compiles bench/floor/src (with the harness's flags) into a
// temporary directory.
func buildRelay(t *testing.T, src string, libs ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), strings.TrimSuffix(src, ".c"))
	args := append([]string{"-O2", "-Wall", "-Werror", "-o", bin, filepath.Join("floor", src)}, libs...)
	if out, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	return bin
}

func startRelay(t *testing.T, bin string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// waitAccepts waits until a relay's front port accepts.
func waitAccepts(t *testing.T, front string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", front)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay does not accept on %s: %v", front, err)
		}
	}
}

// tcpBackends are a relay test's TCP backends: an echo (until EOF, then
// close); a greeter that says hello and half-closes, then reports what the
// client sent until its EOF; and an address where nothing listens.
type tcpBackends struct {
	echo, greet net.Listener
	refused     string
	heard       chan string // what the greeter read, to EOF
}

func startTCPBackends(t *testing.T) *tcpBackends {
	t.Helper()
	b := &tcpBackends{refused: freePort(t, "tcp"), heard: make(chan string, 1)}
	var err error
	if b.echo, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.echo.Close() })
	go func() {
		for {
			c, err := b.echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	if b.greet, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.greet.Close() })
	go func() {
		for {
			c, err := b.greet.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				c.Write([]byte("hello"))
				c.(*net.TCPConn).CloseWrite()
				got, _ := io.ReadAll(c)
				select {
				case b.heard <- string(got):
				default:
				}
			}()
		}
	}()
	return b
}

// tcpFronts are the relay's listen addresses for the three backends.
type tcpFronts struct{ echo, greet, refused string }

func newTCPFronts(t *testing.T) tcpFronts {
	return tcpFronts{freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")}
}

func (f tcpFronts) args(b *tcpBackends) []string {
	return []string{"-t", f.echo + "=" + b.echo.Addr().String(), "-t", f.greet + "=" + b.greet.Addr().String(), "-t", f.refused + "=" + b.refused}
}

// ownedTCPSockets counts the IPv4 TCP sockets, other than listeners, that
// a process still holds (an inode: closed ones in TIME_WAIT have none)
// with a local port in locals or a remote port in remotes.
func ownedTCPSockets(t *testing.T, locals, remotes []string) int {
	t.Helper()
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	hexPort := func(addr string) string {
		_, p, _ := net.SplitHostPort(addr)
		var n int
		fmt.Sscan(p, &n)
		return fmt.Sprintf("%04X", n)
	}
	in := func(port string, addrs []string) bool {
		for _, a := range addrs {
			if hexPort(a) == port {
				return true
			}
		}
		return false
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] == "0A" || f[9] == "0" { // 0A: LISTEN
			continue
		}
		_, lp, _ := strings.Cut(f[1], ":")
		_, rp, _ := strings.Cut(f[2], ":")
		if in(lp, locals) || in(rp, remotes) {
			n++
		}
	}
	return n
}

// checkTCPRelay checks a relay started with fr.args(b): TCP echoes through
// it on several connections at once, each half-closed by the client, which
// gets every byte back and then EOF; a backend's half-close reaches the
// client, whose bytes still reach the backend after it; a backend that
// refuses closes the client's connection; and after each, no socket of
// these connections is left open. settled(what) is the relay's own check
// after each step.
func checkTCPRelay(t *testing.T, b *tcpBackends, fr tcpFronts, settled func(what string)) {
	t.Helper()
	closed := func(what string) {
		t.Helper()
		locals, remotes := []string{fr.echo, fr.greet, fr.refused}, []string{b.echo.Addr().String(), b.greet.Addr().String()}
		for deadline := time.Now().Add(5 * time.Second); ownedTCPSockets(t, locals, remotes) != 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d sockets of the relayed connections still open", what, ownedTCPSockets(t, locals, remotes))
			}
		}
		settled(what)
	}
	closed("before the connections")

	// Several connections at once, each sending more than the relay's
	// buffer and the socket buffers hold, then half-closing; half of them
	// start reading only once half is written, so that the relay's writes
	// find full sockets.
	const conns, size = 8, 4 << 20
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		go func(i int) {
			c, err := net.Dial("tcp", fr.echo)
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
			halfWritten := make(chan struct{})
			go func() {
				c.Write(msg[:size/2])
				close(halfWritten)
				c.Write(msg[size/2:])
				c.(*net.TCPConn).CloseWrite()
			}()
			if i%2 == 1 {
				<-halfWritten
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
	closed("after the echo connections")

	// The backend half-closes first: the client reads its hello to EOF,
	// then sends, and the backend gets it.
	c, err := net.Dial("tcp", fr.greet)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(c); err != nil || string(got) != "hello" {
		t.Errorf("backend half-closed: the client read %q, %v; want \"hello\" then EOF", got, err)
	}
	if _, err := c.Write([]byte("bye")); err != nil {
		t.Errorf("writing after the backend's half-close: %v", err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case got := <-b.heard:
		if got != "bye" {
			t.Errorf("after its half-close the backend read %q, want \"bye\"", got)
		}
	case <-time.After(10 * time.Second):
		t.Error("after its half-close the backend never read the client's EOF")
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || os.IsTimeout(err) {
		t.Errorf("after both half-closes: read %d bytes, %v; want EOF", n, err)
	}
	c.Close()
	closed("after the half-closed connection")

	// A backend that refuses: the client's connection is closed.
	c, err = net.Dial("tcp", fr.refused)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || os.IsTimeout(err) {
		t.Errorf("backend refused: read %d bytes, %v; want EOF or a reset", n, err)
	}
	c.Close()
	closed("after the refused connection")
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
