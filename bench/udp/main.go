// Command udp measures the UDP request/response rate through dynamic-proxy,
// nginx stream (as shipped, and with reuseport) and directly, in one run:
// rounds interleaved with a rotating order, medians and spread reported,
// with the CPU time each proxy spends per request read from /proc.
//
//	go run ./bench/udp                       # both scenarios, 3 rounds of 3 s
//	go run ./bench/udp -rounds 5 -duration 5s -scenario stream
//
// Scenarios:
//
//	stream  -clients sockets, each keeping -window datagrams in flight for
//	        the whole run: long sessions, the per-datagram path.
//	dns     every request from a new socket, answered once (max_responses
//	        = 1, nginx proxy_responses 1): a session per datagram.
//	dnsmode -dnsclients sockets, each keeping -dnswindow DNS queries in
//	        flight (a forwarding resolver's few ports): dynamic-proxy in
//	        session mode, in DNS mode (dns = true: each query balanced on its
//	        own, its reply matched by id) and nginx stream, CPU per query.
//
// Everything runs on 127.0.0.1; every load loop is bounded by -duration;
// every process started is stopped by its PID.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
)

var (
	flagRounds   = flag.Int("rounds", 3, "interleaved rounds per scenario")
	flagDuration = flag.Duration("duration", 3*time.Second, "load time per target per round")
	flagClients  = flag.Int("clients", 32, "stream: client sockets")
	flagWindow   = flag.Int("window", 8, "stream: datagrams in flight per client")
	flagWorkers  = flag.Int("workers", 16, "dns: concurrent one-shot clients")
	flagSize     = flag.Int("size", 64, "datagram payload bytes")
	flagDNSCl    = flag.Int("dnsclients", 4, "dnsmode: client sockets")
	flagDNSWin   = flag.Int("dnswindow", 16, "dnsmode: queries in flight per client")
	flagScenario = flag.String("scenario", "stream,dns,dnsmode", "scenarios to run")
	flagTargets  = flag.String("targets", "direct,dynamic-proxy,dynamic-proxy-1loop,nginx,nginx-reuseport", "targets to measure (also: dynamic-proxy-nometrics, [metrics] enabled = false; dynamic-proxy-1loop: worker_threads = 1, one event loop)")
	flagDP       = flag.String("dp", "", "dynamic-proxy binary (default: build ./cmd/dynamic-proxy)")
	flagMode     = flag.String("mode", "", "internal: echo")
	flagListen   = flag.String("listen", "", "internal: echo address")
)

func main() {
	flag.Parse()
	if *flagMode == "echo" {
		fmt.Fprintln(os.Stderr, echo(*flagListen))
		os.Exit(1)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/udp:", err)
		os.Exit(1)
	}
}

// echo answers every datagram with itself, 64 at a time with
// recvmmsg/sendmmsg (golang.org/x/net/ipv4's batch API); one of a DNS
// header's size or more gets the header's QR bit set, so that a DNS query
// comes back as a response (the dnsmode scenario).
func echo(addr string) error {
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return err
	}
	c.(*net.UDPConn).SetReadBuffer(4 << 20)
	c.(*net.UDPConn).SetWriteBuffer(4 << 20)
	pc := ipv4.NewPacketConn(c)
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 65536)}
	}
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			msgs[i].Buffers[0] = msgs[i].Buffers[0][:msgs[i].N]
			if msgs[i].N >= 12 {
				msgs[i].Buffers[0][2] |= 0x80
			}
		}
		for off := 0; off < n; {
			k, err := pc.WriteBatch(msgs[off:n], 0)
			if err != nil {
				k = 1 // drop the one that failed
			}
			off += k
		}
		for i := 0; i < n; i++ {
			msgs[i].Buffers[0] = msgs[i].Buffers[0][:cap(msgs[i].Buffers[0])]
		}
	}
}

type target struct {
	name    string
	port    int // where clients send
	procs   []*os.Process
	dnsPort int // dynamic-proxy: its dns = true rule's port; 0: none
}

const (
	echoPort = 23001
	dpPort   = 23101
	dp1Port  = 23151
	dpnmPort = 23171
	ngPort   = 23201
	ngrpPort = 23301
)

func run() error {
	dir, err := os.MkdirTemp("", "bench-udp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var started []*os.Process
	defer func() {
		for _, p := range started {
			p.Signal(syscall.SIGTERM)
		}
		for _, p := range started {
			done := make(chan struct{})
			go func() { p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				p.Kill()
				<-done
			}
		}
	}()
	startProc := func(name string, argv ...string) (*os.Process, error) {
		log, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		started = append(started, cmd.Process)
		return cmd.Process, nil
	}

	echoP, err := startProc("echo", self, "-mode", "echo", "-listen", fmt.Sprintf("127.0.0.1:%d", echoPort))
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, t := range strings.Split(*flagTargets, ",") {
		want[strings.TrimSpace(t)] = true
	}
	var targets []*target
	if want["direct"] {
		targets = append(targets, &target{name: "direct", port: echoPort, procs: nil})
	}
	if want["dynamic-proxy"] || want["dynamic-proxy-1loop"] || want["dynamic-proxy-nometrics"] {
		bin := *flagDP
		if bin == "" {
			bin = filepath.Join(dir, "dynamic-proxy")
			b := exec.Command("go", "build", "-o", bin, "./cmd/dynamic-proxy")
			b.Stdout, b.Stderr = os.Stderr, os.Stderr
			if err := b.Run(); err != nil {
				return fmt.Errorf("building dynamic-proxy (run from the repository root): %w", err)
			}
		}
		for _, v := range []struct {
			name, threads string
			port          int
			metrics       bool
		}{{"dynamic-proxy", "0", dpPort, true}, {"dynamic-proxy-1loop", "1", dp1Port, true}, {"dynamic-proxy-nometrics", "0", dpnmPort, false}} {
			if !want[v.name] {
				continue
			}
			cfg := filepath.Join(dir, v.name+".toml")
			err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[server]
tcp_bind = "127.0.0.1:%d"
udp_bind = "127.0.0.1:%d"
watch_config = false
worker_threads = %s
[logging]
level = "warn"
[metrics]          # on by default, here on a port of its own
enabled = %t
bind = "127.0.0.1:0"
[admin]
bind = ""
[[rules]]
name = "stream"
protocol = "udp"
max_sessions = 0
[[rules.backends]]
id = "echo"
address = "127.0.0.1:%d"
[[rules]]
name = "dns"
protocol = "udp"
max_responses = 1
max_sessions = 0
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "echo"
address = "127.0.0.1:%d"
[[rules]]
name = "dnsmode"
protocol = "udp"
dns = true
max_sessions = 0
[rules.health_check]
enabled = false
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "echo"
address = "127.0.0.1:%d"
`, v.port, v.port, v.threads, v.metrics, echoPort, v.port+1, echoPort, v.port+2, echoPort)), 0o644)
			if err != nil {
				return err
			}
			p, err := startProc(v.name, bin, "-c", cfg)
			if err != nil {
				return err
			}
			targets = append(targets, &target{name: v.name, port: v.port, procs: []*os.Process{p}, dnsPort: v.port + 2})
		}
	}
	for _, v := range []struct {
		name      string
		port      int
		reuseport string
	}{{"nginx", ngPort, ""}, {"nginx-reuseport", ngrpPort, " reuseport"}} {
		if !want[v.name] {
			continue
		}
		if _, err := exec.LookPath("nginx"); err != nil {
			fmt.Fprintf(os.Stderr, "bench/udp: skipping %s: nginx not installed (apt-get install -y nginx-light libnginx-mod-stream)\n", v.name)
			continue
		}
		ndir := filepath.Join(dir, v.name)
		os.MkdirAll(ndir, 0o755)
		conf := fmt.Sprintf(`daemon off;
worker_processes auto;
worker_rlimit_nofile 19000;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log error;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 18000; }
stream {
  server { listen 127.0.0.1:%[2]d udp%[4]s; proxy_pass 127.0.0.1:%[3]d; proxy_timeout 30s; }
  server { listen 127.0.0.1:%[5]d udp%[4]s; proxy_pass 127.0.0.1:%[3]d; proxy_timeout 30s; proxy_responses 1; }
}
`, ndir, v.port, echoPort, v.reuseport, v.port+1)
		cfg := filepath.Join(ndir, "nginx.conf")
		if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
			return err
		}
		p, err := startProc(v.name, "nginx", "-p", ndir, "-c", cfg, "-e", filepath.Join(ndir, "error.log"))
		if err != nil {
			return err
		}
		targets = append(targets, &target{name: v.name, port: v.port, procs: []*os.Process{p}})
	}
	// Wait until every target answers.
	for _, t := range targets {
		for _, port := range []int{t.port, t.port + 1, t.dnsPort} {
			if t.name == "direct" && port != t.port || port == 0 {
				continue
			}
			if err := waitAnswer(port); err != nil {
				return fmt.Errorf("%s on port %d: %w", t.name, port, err)
			}
		}
	}

	fmt.Printf("machine: %d CPUs, %s\n", numCPU(), kernel())
	fmt.Printf("datagrams of %d bytes; %d rounds of %v per target, order rotating\n\n", *flagSize, *flagRounds, *flagDuration)
	for _, sc := range strings.Split(*flagScenario, ",") {
		sc = strings.TrimSpace(sc)
		var load func(port int) (int64, int64)
		var desc string
		switch sc {
		case "stream":
			desc = fmt.Sprintf("stream: %d client sockets x %d datagrams in flight, long-lived sessions", *flagClients, *flagWindow)
			load = func(port int) (int64, int64) {
				return streamLoad(port, *flagClients, *flagWindow, *flagSize, *flagDuration)
			}
		case "dns":
			desc = fmt.Sprintf("dns: %d workers, each request from a new socket, one answer (max_responses = 1 / proxy_responses 1)", *flagWorkers)
			load = func(port int) (int64, int64) { return dnsLoad(port+1, *flagWorkers, *flagSize, *flagDuration) }
		case "dnsmode":
			desc = fmt.Sprintf("dnsmode: %d client sockets x %d DNS queries in flight; dynamic-proxy as a session per client (max_responses = 0, one backend socket per client) and with dns = true (each query balanced and matched by id)", *flagDNSCl, *flagDNSWin)
			load = func(port int) (int64, int64) {
				return pipelinedLoad(port, *flagDNSCl, *flagDNSWin, 0, *flagDuration, true)
			}
		default:
			return fmt.Errorf("unknown scenario %q", sc)
		}
		ts := targets
		if sc == "dnsmode" { // each dynamic-proxy twice: session mode and DNS mode
			ts = nil
			for _, t := range targets {
				ts = append(ts, t)
				if t.dnsPort != 0 {
					ts = append(ts, &target{name: t.name + " dns=true", port: t.dnsPort, procs: t.procs})
				}
			}
		}
		results := map[string][]result{}
		for r := 0; r < *flagRounds; r++ {
			for i := range ts {
				t := ts[(i+r)%len(ts)]
				port := t.port
				if sc == "dns" && t.name == "direct" {
					port-- // direct has no second port: the echo itself
				}
				cpu0 := cpuSeconds(t.procs)
				echo0 := cpuSeconds([]*os.Process{echoP})
				t0 := time.Now()
				ok, lost := load(port)
				el := time.Since(t0).Seconds()
				res := result{rate: float64(ok) / el, lost: lost}
				if len(t.procs) > 0 && ok > 0 {
					res.cpuPerReq = (cpuSeconds(t.procs) - cpu0) / float64(ok) * 1e6
				}
				res.echoCPU = (cpuSeconds([]*os.Process{echoP}) - echo0) / float64(max(ok, 1)) * 1e6
				results[t.name] = append(results[t.name], res)
			}
		}
		report(desc, ts, results)
	}
	return nil
}

type result struct {
	rate      float64 // answered requests per second
	lost      int64   // requests that got no answer in time
	cpuPerReq float64 // proxy CPU microseconds per answered request
	echoCPU   float64
}

func report(desc string, targets []*target, res map[string][]result) {
	fmt.Printf("%s\n\n", desc)
	fmt.Printf("| target | requests/s (median) | min–max | vs direct | proxy CPU µs/request | lost |\n")
	fmt.Printf("|---|---:|---:|---:|---:|---:|\n")
	direct := 0.0
	if rs := res["direct"]; len(rs) > 0 {
		direct = median(rs, func(r result) float64 { return r.rate })
	}
	for _, t := range targets {
		rs := res[t.name]
		if len(rs) == 0 {
			continue
		}
		med := median(rs, func(r result) float64 { return r.rate })
		lo, hi := rs[0].rate, rs[0].rate
		var lost int64
		for _, r := range rs {
			lo, hi = min(lo, r.rate), max(hi, r.rate)
			lost += r.lost
		}
		vs, cpu := "", "–"
		if direct > 0 {
			vs = fmt.Sprintf("%.2f", med/direct)
		}
		if len(t.procs) > 0 {
			cpu = fmt.Sprintf("%.1f", median(rs, func(r result) float64 { return r.cpuPerReq }))
		}
		fmt.Printf("| %s | %.0f | %.0f–%.0f | %s | %s | %d |\n", t.name, med, lo, hi, vs, cpu, lost)
	}
	fmt.Println()
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// streamLoad runs clients sockets, each keeping window datagrams in
// flight (sent and read in batches), for d. It returns the answers
// received and the datagrams presumed lost (no answer within 200 ms, then
// resent).
func streamLoad(port, clients, window, size int, d time.Duration) (int64, int64) {
	return pipelinedLoad(port, clients, window, size, d, false)
}

// dnsQueryBench is a DNS query for example.com, type A, with id.
func dnsQueryBench(p []byte, id uint16) []byte {
	p = append(p[:0], byte(id>>8), byte(id), 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0)
	p = append(p, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0)
	return append(p, 0, 1, 0, 1)
}

// pipelinedLoad is streamLoad's: with dns, every datagram is a DNS query
// (size is ignored) with an id of its own.
func pipelinedLoad(port, clients, window, size int, d time.Duration, dns bool) (int64, int64) {
	var ok, lost atomic.Int64
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial:", err)
			continue
		}
		c.SetReadBuffer(1 << 20)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			pc := ipv4.NewPacketConn(c)
			out := make([]ipv4.Message, window)
			for j := range out {
				out[j].Buffers = [][]byte{make([]byte, size)}
			}
			var id uint16
			fresh := func(n int) { // DNS: the next n queries, new ids
				for j := 0; dns && j < n; j++ {
					id++
					out[j].Buffers[0] = dnsQueryBench(out[j].Buffers[0], id)
				}
			}
			in := make([]ipv4.Message, window)
			for j := range in {
				in[j].Buffers = [][]byte{make([]byte, 65536)}
			}
			send := func(n int) bool {
				fresh(n)
				for off := 0; off < n; {
					k, err := pc.WriteBatch(out[off:n], 0)
					if err != nil {
						return false
					}
					off += k
				}
				return true
			}
			if !send(window) {
				return
			}
			for time.Now().Before(end) {
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				n, err := pc.ReadBatch(in, 0)
				if err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						// The window drained without answers: count it
						// lost and refill it.
						lost.Add(int64(window))
						if !send(window) {
							return
						}
						continue
					}
					return
				}
				ok.Add(int64(n))
				if !send(n) {
					return
				}
			}
		}()
	}
	wg.Wait()
	return ok.Load(), lost.Load()
}

// dnsLoad runs workers that each, until d is over, open a socket, send one
// request, wait for its answer and close the socket.
func dnsLoad(port, workers, size int, d time.Duration) (int64, int64) {
	var ok, lost atomic.Int64
	end := time.Now().Add(d)
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, buf := make([]byte, size), make([]byte, 65536)
			for time.Now().Before(end) {
				c, err := net.DialUDP("udp4", nil, to)
				if err != nil {
					lost.Add(1)
					continue
				}
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := c.Write(p); err == nil {
					if _, err := c.Read(buf); err == nil {
						ok.Add(1)
					} else {
						lost.Add(1)
					}
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	return ok.Load(), lost.Load()
}

func waitAnswer(port int) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		c.Write(dnsQueryBench(nil, 1)) // a DNS query: a dns = true rule drops anything else
		_, err = c.Read(make([]byte, 16))
		c.Close()
		if err == nil {
			return nil
		}
	}
	return errors.New("no answer within 15s")
}

// cpuSeconds is the user+system CPU time of the processes and all their
// descendants, from /proc.
func cpuSeconds(ps []*os.Process) float64 {
	total := 0.0
	for _, p := range ps {
		for _, pid := range tree(p.Pid) {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				continue
			}
			s := string(b)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
			// fields after the command: state(0) ppid(1) ... utime(11) stime(12)
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			total += (ut + st) / 100 // USER_HZ
		}
	}
	return total
}

// tree is root and its descendants.
func tree(root int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		pp, _ := strconv.Atoi(f[1])
		parent[pid] = pp
	}
	out := []int{root}
	for changed := true; changed; {
		changed = false
		for pid, pp := range parent {
			if contains(out, pp) && !contains(out, pid) {
				out = append(out, pid)
				changed = true
			}
		}
	}
	return out
}

func contains(s []int, x int) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return "Linux " + strings.TrimSpace(string(b))
}
