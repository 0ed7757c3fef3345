package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Backend ports (below 32768, so no TIME_WAIT client socket in the
// ephemeral range can hold them) and each target's front ports.
const (
	portIperf = 21001
	portEcho  = 21002 // TCP and UDP
	portRedis = 21003
	portSink  = 21004 // discards everything (bulk-sni)
	portHTTP  = 21005 // nginx HTTP server (wrk-keepalive, wrk-close), front base+offHTTP
)

type target struct {
	name string
	base int // front ports: base+1 iperf (tcp+udp), base+2 echo (tcp+udp), base+3 redis, base+offHTTP, base+offNewSession (udp)
	udp  bool
	tls  bool // terminates TLS on base+offTLSECDSA, base+offTLSRSA, base+offTLSBulk
	// workers overrides -workers for this target (the -scaling variants).
	workers int
	env     []string // added to the harness's environment (dynamic-proxy-b)
	proc    *proc
	dir     string
	setup   func(t *target, dir string) error
}

func (t *target) port(kind string) int {
	off := map[string]int{"iperf": 1, "echo": 2, "redis": 3}[kind]
	if t.base == 0 {
		return map[string]int{"iperf": portIperf, "echo": portEcho, "redis": portRedis}[kind]
	}
	return t.base + off
}

// workerCount is t's worker threads or processes: its own, else -workers
// (0: the proxy's default).
func (t *target) workerCount() int {
	if t.workers > 0 {
		return t.workers
	}
	return *flagWorkers
}

func (t *target) pid() int {
	if t.proc == nil {
		return 0
	}
	return t.proc.pid()
}

func allTargets(dpBinary string, metricsOffVariant bool) []*target {
	ts := []*target{
		{name: "direct", udp: true},
		{name: "dynamic-proxy", base: 21100, udp: true, tls: true, setup: func(t *target, dir string) error {
			return startDP(t, dir, dpBinary, true, true, "")
		}},
		// The same build on its portable engine, beside the epoll one.
		{name: "dynamic-proxy-goroutine", base: 21700, udp: true, setup: func(t *target, dir string) error {
			return startDP(t, dir, dpBinary, true, true, "goroutine")
		}},
	}
	if *flagDPFixed {
		// The same build with GOMAXPROCS left at the worker threads
		// (adaptive_threads = false), to measure what the adaptation saves.
		ts = append(ts, &target{name: "dynamic-proxy-fixed", base: 21600, udp: true, setup: func(t *target, dir string) error {
			return startDP(t, dir, dpBinary, true, false, "")
		}})
	}
	if *flagDPB != "" {
		// An A/B of two builds (or of one build under two environments):
		// right after dynamic-proxy, like the metrics-off variant.
		bin := *flagDPB
		if bin == "same" {
			bin = dpBinary
		}
		var env []string
		if *flagDPBEnv != "" {
			env = strings.Split(*flagDPBEnv, ",")
		}
		ts = append(ts, &target{name: "dynamic-proxy-b", base: 21900, udp: true, env: env, setup: func(t *target, dir string) error {
			return startDP(t, dir, bin, true, true, "")
		}})
	}
	if metricsOffVariant {
		// Right after dynamic-proxy, so that in most rounds the two run
		// back to back and their per-round ratio compares like with like.
		ts = append(ts, &target{name: "dynamic-proxy-nometrics", base: 21500, udp: true, setup: func(t *target, dir string) error {
			return startDP(t, dir, dpBinary, false, true, "")
		}})
	}
	ts = append(ts,
		&target{name: "haproxy", base: 21200, tls: true, setup: func(t *target, dir string) error { return startHAProxy(t, dir, false) }},
		&target{name: "haproxy-splice", base: 21300, setup: func(t *target, dir string) error { return startHAProxy(t, dir, true) }},
		&target{name: "nginx", base: 21400, udp: true, tls: true, setup: startNginx})
	if *flagFloor {
		// Last: the rotation is circular, so it runs two places before
		// dynamic-proxy, about as close as the other variants.
		ts = append(ts, &target{name: "floor", base: 21800, udp: true, setup: startFloor})
	}
	if *flagFloorUring {
		// TCP only: it sits out the UDP scenarios.
		ts = append(ts, &target{name: "floor-uring", base: 23000, setup: startFloorUring})
	}
	return ts
}

// buildFloorUring compiles the io_uring floor relay to bin.
func buildFloorUring(bin string) error {
	out, err := exec.Command("cc", "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join("bench", "floor", "floor_uring.c"), "-luring").CombinedOutput()
	if err != nil {
		return fmt.Errorf("building the io_uring floor relay: %v: %s", err, out)
	}
	return nil
}

// startFloorUring starts the relay built by buildFloorUring in dir on the
// floor's TCP routes.
func startFloorUring(t *target, dir string) error {
	argv := []string{filepath.Join(dir, "floor-uring")}
	for _, r := range []struct{ off, backend int }{{1, portIperf}, {2, portEcho}, {3, portRedis}, {offHTTP, portHTTP}} {
		argv = append(argv, "-t", fmt.Sprintf("127.0.0.1:%d=127.0.0.1:%d", t.base+r.off, r.backend))
	}
	p, err := start(t.name, dir, argv...)
	if err != nil {
		return err
	}
	t.proc = p
	return waitPorts(t)
}

// buildFloor compiles the floor relay to bin.
func buildFloor(bin string) error {
	out, err := exec.Command("cc", "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join("bench", "floor", "floor.c")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("building the floor relay: %v: %s", err, out)
	}
	return nil
}

// startFloor starts the floor relay built by buildFloor in dir, with
// the same front ports and backends as the proxies.
func startFloor(t *target, dir string) error {
	argv := []string{filepath.Join(dir, "floor")}
	for _, r := range []struct {
		flag         string
		off, backend int
	}{{"-t", 1, portIperf}, {"-t", 2, portEcho}, {"-t", 3, portRedis}, {"-t", offHTTP, portHTTP}, {"-u", 1, portIperf}, {"-u", 2, portEcho},
		{"-1", offNewSession, portEcho}} { // -1: a UDP session ends with its reply (udp-newsession)
		argv = append(argv, r.flag, fmt.Sprintf("127.0.0.1:%d=127.0.0.1:%d", t.base+r.off, r.backend))
	}
	p, err := start(t.name, dir, argv...)
	if err != nil {
		return err
	}
	t.proc = p
	return waitPorts(t)
}

// startDP starts dynamic-proxy for t; engine is its [server] engine ("":
// the default).
func startDP(t *target, dir, bin string, metrics, adaptive bool, engine string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "[server]\ntcp_bind = \"127.0.0.1:%d\"\nudp_bind = \"127.0.0.1:%d\"\nmax_connections = 0\nwatch_config = false\n", t.base+9, t.base+9)
	if w := t.workerCount(); w > 0 {
		fmt.Fprintf(&b, "worker_threads = %d\n", w)
	}
	if !adaptive {
		b.WriteString("adaptive_threads = false\n")
	}
	if engine != "" {
		fmt.Fprintf(&b, "engine = %q\n", engine)
	}
	b.WriteString("[logging]\nlevel = \"warn\"\n")
	if supportsMetricsSwitch(bin) {
		fmt.Fprintf(&b, "[metrics]\nenabled = %v\nbind = \"127.0.0.1:%d\"\n[admin]\nbind = \"\"\n", metrics, t.base+8)
	}
	for _, r := range []struct {
		name, proto  string
		off, backend int
	}{{"iperf", "tcp", 1, portIperf}, {"echo", "tcp", 2, portEcho}, {"redis", "tcp", 3, portRedis}, {"echo_udp", "udp", 2, portEcho}, {"sink", "tcp", 4, portSink},
		{"http", "tcp", offHTTP, portHTTP}, {"iperf_udp", "udp", 1, portIperf}} {
		if r.proto == "udp" && !*flagDPUDP {
			continue
		}
		fmt.Fprintf(&b, "[[rules]]\nname = %q\nprotocol = %q\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:%d\"\n[rules.matcher]\ntype = \"port\"\nport = %d\n",
			r.name, r.proto, r.backend, t.base+r.off)
	}
	// The same sink behind an SNI matcher: the proxy peeks at the
	// ClientHello, replays it, then splices (bulk-sni).
	fmt.Fprintf(&b, "[[rules]]\nname = \"sink_sni\"\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:%d\"\n[rules.matcher]\nall = [ { type = \"port\", port = %d }, { type = \"sni\", names = [\"bench.example\"] } ]\n",
		portSink, t.base+5)
	if *flagDPUDP {
		b.WriteString(dpNewSessionRule(t.base))
	}
	if t.tls {
		b.WriteString(dpTLSRules(t.base))
	}
	cfg := filepath.Join(dir, t.name+".toml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return err
	}
	p, err := startEnv(t.name, dir, t.env, bin, "-c", cfg)
	if err != nil {
		return err
	}
	t.proc = p
	return waitPorts(t)
}

var metricsSwitch *bool

// supportsMetricsSwitch reports whether this dynamic-proxy build has a
// [metrics] enabled key (so the metrics-off variant can be measured).
func supportsMetricsSwitch(bin string) bool {
	if metricsSwitch != nil {
		return *metricsSwitch
	}
	dir, _ := os.MkdirTemp("", "dp-bench-probe")
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("[metrics]\nenabled = false\n[[rules]]\nname=\"x\"\n[[rules.backends]]\nid=\"a\"\naddress=\"127.0.0.1:1\"\n"), 0o644)
	ok := runQuiet(bin, "-c", cfg, "--validate") == nil
	metricsSwitch = &ok
	return ok
}

func startHAProxy(t *target, dir string, splice bool) error {
	var b strings.Builder
	b.WriteString("global\n  maxconn 7500\n")
	if w := t.workerCount(); w > 0 {
		fmt.Fprintf(&b, "  nbthread %d\n", w)
	}
	b.WriteString("\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10m\n  timeout server 10m\n")
	if splice {
		b.WriteString("  option splice-request\n  option splice-response\n")
	}
	for _, r := range []struct {
		name         string
		off, backend int
	}{{"iperf", 1, portIperf}, {"echo", 2, portEcho}, {"redis", 3, portRedis}, {"http", offHTTP, portHTTP}} {
		fmt.Fprintf(&b, "\nlisten %s\n  bind 127.0.0.1:%d\n  server s1 127.0.0.1:%d\n", r.name, t.base+r.off, r.backend)
	}
	if t.tls {
		b.WriteString(haproxyTLS(t.base))
	}
	cfg := filepath.Join(dir, t.name+".cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return err
	}
	p, err := start(t.name, dir, "haproxy", "-db", "-f", cfg)
	if err != nil {
		return err
	}
	t.proc = p
	return waitPorts(t)
}

func startNginx(t *target, dir string) error {
	var b strings.Builder
	workers := "auto"
	if w := t.workerCount(); w > 0 {
		workers = fmt.Sprint(w)
	}
	// Files named after the target: the -scaling run has two nginx at once.
	fmt.Fprintf(&b, "daemon off;\nuser root;\nworker_processes %s;\nworker_rlimit_nofile 19000;\npid %s/%s.pid;\nerror_log %s/%s-error.log warn;\n", workers, dir, t.name, dir, t.name)
	b.WriteString("load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nevents { worker_connections 18000; }\nstream {\n")
	for _, r := range []struct {
		listen       string
		off, backend int
	}{{"", 1, portIperf}, {"", 2, portEcho}, {"", 3, portRedis}, {" udp", 2, portEcho}, {"", offHTTP, portHTTP}, {" udp", 1, portIperf}} {
		fmt.Fprintf(&b, "  server { listen 127.0.0.1:%d%s; proxy_pass 127.0.0.1:%d; proxy_timeout 10m; }\n", t.base+r.off, r.listen, r.backend)
	}
	b.WriteString(nginxNewSessionServer(t.base))
	if t.tls {
		b.WriteString(nginxTLS(t.base))
	}
	b.WriteString("}\n")
	cfg := filepath.Join(dir, t.name+".conf")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return err
	}
	p, err := start(t.name, dir, "nginx", "-p", dir, "-c", cfg)
	if err != nil {
		return err
	}
	t.proc = p
	return waitPorts(t)
}

// waitPorts waits until every TCP front port of t accepts connections.
func waitPorts(t *target) error {
	deadline := time.Now().Add(15 * time.Second)
	for _, k := range []string{"iperf", "echo", "redis"} {
		for {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", t.port(k)), time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				logText, _ := os.ReadFile(t.proc.log)
				return fmt.Errorf("%s: port %d not ready: %v; its log:\n%s", t.name, t.port(k), err, logText)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}
