package main

// Issue 26: the pinned setup (-pin), and the scenarios that saturate the
// proxy with real clients or measure it at fixed rates.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

var flagPin = flag.Bool("pin", false, "pin every proxy target's processes to CPU 0 with one worker (as -workers 1 unless -workers is given), and the harness, its backends and load generators to CPU 1")

// Under -pin the proxy has CPU 0 to itself; everything else the harness
// runs shares CPU 1.
const (
	cpuProxy = 0
	cpuLoad  = 1
)

// applyPin makes -pin imply -workers 1 unless -workers was given, and pins
// the harness to cpuLoad: the threads it creates later and the processes it
// starts (backends, iperf3, redis-benchmark, wrk, the proxies before they
// are moved) inherit the mask.
func applyPin() error {
	if !*flagPin {
		return nil
	}
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "workers" })
	if !given {
		*flagWorkers = 1
	}
	return pinPID(os.Getpid(), cpuLoad)
}

// pinTargets wraps every proxy target's setup so that each process it
// starts (the idle scenario restarts them) has its whole tree, every
// thread, moved to cpuProxy.
func pinTargets(targets []*target) {
	for _, t := range targets {
		setup := t.setup
		if setup == nil {
			continue
		}
		t.setup = func(t *target, dir string) error {
			if err := setup(t, dir); err != nil {
				return err
			}
			for _, pid := range tree(t.pid()) {
				if err := pinPID(pid, cpuProxy); err != nil {
					return fmt.Errorf("%s: %v", t.name, err)
				}
			}
			return checkPinned(t.pid(), cpuProxy)
		}
	}
}

// pinPID sets the CPU affinity of every thread of pid (taskset -a).
func pinPID(pid, cpu int) error {
	out, err := exec.Command("taskset", "-a", "-p", "-c", strconv.Itoa(cpu), strconv.Itoa(pid)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset -a -p -c %d %d: %v: %s", cpu, pid, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// checkPinned verifies that every thread in root's tree may run on cpu
// alone (an nginx worker forked while the master was being moved would
// otherwise keep the old mask unnoticed).
func checkPinned(root, cpu int) error {
	for _, pid := range tree(root) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue // the thread ended
			}
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok && strings.TrimSpace(v) != strconv.Itoa(cpu) {
					return fmt.Errorf("%s: allowed CPUs %s, want %d", f, strings.TrimSpace(v), cpu)
				}
			}
		}
	}
	return nil
}

// pinNote is the report header's line on the CPU placement.
func pinNote() string {
	if *flagPin {
		return fmt.Sprintf("pinned: each proxy's process tree on CPU %d with %d worker(s); the harness, backends and load generators on CPU %d",
			cpuProxy, *flagWorkers, cpuLoad)
	}
	return "pinned: no (proxies, backends and load generators share every CPU)"
}

// offHTTP is the front port, as an offset from a target's base, of the
// rule to the nginx HTTP backend (portHTTP).
const offHTTP = 6

func httpPort(t *target) int {
	if t.base == 0 {
		return portHTTP
	}
	return t.base + offHTTP
}

// startHTTPBackend starts the HTTP server wrk loads through the proxies:
// nginx with one worker answering "ok" to every request, without access
// log, keeping a keep-alive connection for as many requests as it carries.
// It has its own prefix, so that it shares no file with the nginx target.
func startHTTPBackend(dir string) (*proc, error) {
	prefix := filepath.Join(dir, "httpd")
	if err := os.MkdirAll(prefix, 0o755); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "daemon off;\nuser root;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\nevents { worker_connections 4096; }\n", prefix, prefix)
	b.WriteString("http {\n  access_log off;\n  keepalive_requests 100000000;\n")
	for _, k := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&b, "  %s_temp_path %s/%s;\n", k, prefix, k)
	}
	fmt.Fprintf(&b, "  server {\n    listen 127.0.0.1:%d;\n    location / { default_type text/plain; return 200 \"ok\\n\"; }\n  }\n}\n", portHTTP)
	cfg := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	p, err := start("nginx-http-backend", dir, "nginx", "-p", prefix, "-c", cfg)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", portHTTP), time.Second)
		if err == nil {
			c.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			logText, _ := os.ReadFile(p.log)
			return p, fmt.Errorf("HTTP backend: port %d not ready: %v; its log:\n%s", portHTTP, err, logText)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func scenarios26() []scenario {
	rt := []metric{{"rate", "requests/s", true}, {"cpu_us_per_op", "proxy CPU µs/request", false}, {"p50_ms", "p50 ms", false}, {"p99_ms", "p99 ms", false}, {"errors", "errors", false}}
	rtUDP := []metric{{"rate", "ops/s", true}, {"cpu_us_per_op", "proxy CPU µs/op", false}, {"p50_ms", "p50 ms", false}, {"p99_ms", "p99 ms", false}, {"errors", "errors", false}}
	return []scenario{
		{name: "wrk-keepalive", metrics: rt, run: wrkRun(false)},
		{name: "wrk-close", metrics: rt, run: wrkRun(true)},
		{name: "udp-iperf-1g", udpOnly: true, metrics: []metric{{"lost_pct", "lost %", false}, {"gbps", "Gbit/s received", true},
			{"cpu_ms_per_gb", "proxy CPU ms/GB received", false}}, run: iperfUDP},
		{name: "bulk-5g", metrics: []metric{{"gbps", "Gbit/s", true}, {"cpu_ms_per_gb", "proxy CPU ms/GB", false}}, run: iperfTCP(1, "5G")},
		{name: "udp-newsession", udpOnly: true, metrics: rtUDP, run: udpNewSessionRun(5000, 64, dur(4*time.Second, 2*time.Second))},
	}
}

// wrkRun loads t's HTTP front with wrk: one thread, 32 connections, kept
// alive or (closeEach) a new connection per request.
func wrkRun(closeEach bool) func(t *target) (sample, error) {
	return func(t *target) (sample, error) {
		return cpuWrap(t, func() (sample, float64, error) {
			secs := int(dur(4*time.Second, 2*time.Second) / time.Second)
			args := []string{"30", "wrk", "-t1", "-c32", fmt.Sprintf("-d%ds", secs), "--latency"}
			if closeEach {
				args = append(args, "-H", "Connection: close")
			}
			args = append(args, fmt.Sprintf("http://127.0.0.1:%d/", httpPort(t)))
			out, err := exec.Command("timeout", args...).CombinedOutput()
			if err != nil {
				return nil, 0, fmt.Errorf("wrk: %v: %s", err, firstLine(out))
			}
			r, err := parseWrk(out)
			if err != nil {
				return nil, 0, err
			}
			return sample{"rate": r.rate, "p50_ms": r.p50ms, "p99_ms": r.p99ms, "errors": r.errors}, r.requests, nil
		}, "cpu_us_per_op", 1e6)
	}
}

type wrkResult struct {
	requests, rate, p50ms, p99ms, errors float64
}

// parseWrk reads wrk's text report (with --latency): the requests done,
// Requests/sec, the 50 % and 99 % latencies, and the socket errors plus
// non-2xx/3xx responses.
func parseWrk(out []byte) (wrkResult, error) {
	var r wrkResult
	var haveRate, haveN bool
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk: %q: %v", l, err)
			}
			r.rate, haveRate = v, true
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return r, fmt.Errorf("wrk: %q: %v", l, err)
			}
			r.requests, haveN = v, true
		case len(f) == 2 && (f[0] == "50%" || f[0] == "99%"):
			d, err := parseWrkDur(f[1])
			if err != nil {
				return r, fmt.Errorf("wrk: %q: %v", l, err)
			}
			if f[0] == "50%" {
				r.p50ms = d
			} else {
				r.p99ms = d
			}
		case len(f) > 2 && f[0] == "Socket" && f[1] == "errors:":
			// Socket errors: connect 0, read 0, write 0, timeout 0
			for i := 2; i+1 < len(f); i += 2 {
				v, _ := strconv.ParseFloat(strings.TrimSuffix(f[i+1], ","), 64)
				r.errors += v
			}
		case strings.HasPrefix(strings.TrimSpace(l), "Non-2xx or 3xx responses:"):
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			r.errors += v
		}
	}
	if !haveRate || !haveN {
		return r, fmt.Errorf("wrk: no Requests/sec or request count in %q", firstLine(out))
	}
	if r.requests == 0 {
		return r, errors.New("wrk: no request completed")
	}
	return r, nil
}

// parseWrkDur reads a wrk latency such as 412.00us, 1.25ms or 2.00s, in ms.
func parseWrkDur(s string) (float64, error) {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 1e-3}, {"ms", 1}, {"m", 60e3}, {"s", 1e3}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			x, err := strconv.ParseFloat(v, 64)
			return x * u.ms, err
		}
	}
	return 0, fmt.Errorf("unknown unit in %q", s)
}

// iperfUDP sends 1 Gbit/s of 1400-byte datagrams with iperf3 through t
// (its TCP control connection and its UDP data on the same front port).
func iperfUDP(t *target) (sample, error) {
	return cpuWrap(t, func() (sample, float64, error) {
		secs := int(dur(4*time.Second, 2*time.Second) / time.Second)
		out, err := exec.Command("timeout", "30", "iperf3", "-c", "127.0.0.1", "-p", strconv.Itoa(t.port("iperf")),
			"-u", "-b", "1G", "-l", "1400", "-t", strconv.Itoa(secs), "-J").Output()
		if err != nil {
			return nil, 0, fmt.Errorf("iperf3 -u: %v: %s", err, firstLine(out))
		}
		r, err := parseIperfUDP(out)
		if err != nil {
			return nil, 0, err
		}
		return sample{"lost_pct": r.lostPct, "gbps": r.gbps}, r.gb, nil
	}, "cpu_ms_per_gb", 1000)
}

type iperfUDPResult struct {
	lostPct, gbps, gb float64
}

// parseIperfUDP reads the receiver's side of iperf3's UDP report (-J -u):
// end.sum_received holds the server's counts (the datagrams it got and
// the ones missing from the sequence); iperf3 before 3.10 has only end.sum,
// with the same counts.
func parseIperfUDP(out []byte) (iperfUDPResult, error) {
	type sum struct {
		Bytes       float64 `json:"bytes"`
		Bps         float64 `json:"bits_per_second"`
		LostPercent float64 `json:"lost_percent"`
		Packets     float64 `json:"packets"`
	}
	var r struct {
		Error string `json:"error"`
		End   struct {
			Sum         *sum `json:"sum"`
			SumReceived *sum `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return iperfUDPResult{}, fmt.Errorf("iperf3 report: %v", err)
	}
	if r.Error != "" {
		return iperfUDPResult{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	s := r.End.SumReceived
	if s == nil {
		s = r.End.Sum
	}
	if s == nil || s.Bytes <= 0 || s.Packets <= 0 {
		return iperfUDPResult{}, errors.New("iperf3 received no datagram")
	}
	return iperfUDPResult{lostPct: s.LostPercent, gbps: s.Bps / 1e9, gb: s.Bytes / 1e9}, nil
}

// offNewSession is the UDP front port, as an offset from a target's base,
// whose sessions end after one reply (udp-newsession): dynamic-proxy
// max_responses = 1, nginx proxy_responses 1. Both keep an unanswered
// session 30 s, dynamic-proxy's default session_timeout.
const offNewSession = 7

func dpNewSessionRule(base int) string {
	return fmt.Sprintf("[[rules]]\nname = \"echo_udp_newsession\"\nprotocol = \"udp\"\nmax_responses = 1\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:%d\"\n[rules.matcher]\ntype = \"port\"\nport = %d\n",
		portEcho, base+offNewSession)
}

func nginxNewSessionServer(base int) string {
	return fmt.Sprintf("  server { listen 127.0.0.1:%d udp; proxy_pass 127.0.0.1:%d; proxy_responses 1; proxy_timeout 30s; }\n", base+offNewSession, portEcho)
}

func udpNewSessionRun(rate, workers int, d time.Duration) func(t *target) (sample, error) {
	return func(t *target) (sample, error) {
		return cpuWrap(t, func() (sample, float64, error) {
			port := portEcho
			if t.base != 0 {
				port = t.base + offNewSession
			}
			r := udpNewSessions(fmt.Sprintf("127.0.0.1:%d", port), rate, workers, d)
			if r.ops == 0 {
				return nil, 0, fmt.Errorf("no round trip completed: %v", r.firstErr)
			}
			return sample{"rate": float64(r.ops) / r.elapsed.Seconds(), "p50_ms": ms(r.lat.pct(0.5)),
				"p99_ms": ms(r.lat.pct(0.99)), "errors": float64(r.errors)}, float64(r.ops), nil
		}, "cpu_us_per_op", 1e6)
	}
}

// udpNewSessions is udpLoad with a new client socket for every round trip,
// closed after its echo: each datagram comes from a new source port, so
// it starts a new proxy session. At most `workers` sockets are open at
// once; the latency is from the write to the echo, as in udpLoad.
func udpNewSessions(addr string, rate, workers int, d time.Duration) loadResult {
	msg := make([]byte, 64)
	op := func() (time.Duration, error) {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return udpEcho(c, msg)
	}
	return drive(rate, workers, d, op)
}

// iperfTCP streams through t's iperf front with iperf3, over `streams`
// connections, as fast as they go or paced at bitrate ("5G": iperf3 -b).
func iperfTCP(streams int, bitrate string) func(t *target) (sample, error) {
	return func(t *target) (sample, error) {
		return cpuWrap(t, func() (sample, float64, error) {
			secs := int(dur(4*time.Second, 2*time.Second) / time.Second)
			args := []string{"30", "iperf3", "-c", "127.0.0.1", "-p", strconv.Itoa(t.port("iperf")),
				"-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-J"}
			if bitrate != "" {
				args = append(args, "-b", bitrate)
			}
			out, err := exec.Command("timeout", args...).Output()
			if err != nil {
				return nil, 0, fmt.Errorf("iperf3: %v: %s", err, firstLine(out))
			}
			gbps, gb, err := parseIperf(out)
			if err != nil {
				return nil, 0, err
			}
			return sample{"gbps": gbps}, gb, nil
		}, "cpu_ms_per_gb", 1000)
	}
}
