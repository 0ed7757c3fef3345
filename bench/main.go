// Command bench runs dynamic-proxy side by side with HAProxy (mode tcp,
// default and with splice), nginx stream and a direct connection, in
// interleaved rounds with a rotating order, and writes docs/BENCHMARKS.md.
//
//	make bench                      # 5 rounds, the full set
//	go run ./bench -rounds 1 -quick # a short smoke run
//	go run ./bench -workers 1 -only churn-4000/s,redis-get -out /tmp/b.md
//	                                # one worker thread/process for every proxy
//	go run ./bench -pin             # proxies on CPU 0 with one worker, the
//	                                # rest on CPU 1
//	go run ./bench -mode churn -target 127.0.0.1:8080 -rate 4000 -for 10s
//	                                # the load alone, to profile a running proxy
//	                                # (-mode udp: UDP echo round trips; udp-new: on a new socket each)
//	go run ./bench -budget -only churn-4000/s,redis-get,udp-20000/s
//	                                # also: CPU (user, kernel) and system calls per
//	                                # connection, request and round trip, from perf
//	go run ./bench -scaling         # 1 against 2 workers of each proxy (docs/SCALING.md)
//
// Every load loop is bounded in time, all traffic stays on 127.0.0.1, and
// every process the harness starts is stopped by its PID.
package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

var (
	flagRounds     = flag.Int("rounds", 5, "interleaved rounds (at least 5 for the report)")
	flagOut        = flag.String("out", "docs/BENCHMARKS.md", "report file")
	flagQuick      = flag.Bool("quick", false, "shorter runs (smoke test of the harness)")
	flagOnly       = flag.String("only", "", "comma-separated scenarios to run (default all)")
	flagMode       = flag.String("mode", "", "internal: echo, sink, or churn / udp / udp-new / tls (TCP connection churn, UDP echo round trips on long sessions or on a new socket each, or full TLS handshakes by 8 closed-loop clients alone, for profiling: -target, -rate, -for)")
	flagTarget     = flag.String("target", "", "churn mode: address to load")
	flagRate       = flag.Int("rate", 4000, "churn mode: connections per second (0: closed loop)")
	flagFor        = flag.Duration("for", 10*time.Second, "churn mode: how long")
	flagListen     = flag.String("listen", "", "internal: echo listen address")
	flagDP         = flag.String("dp", "", "dynamic-proxy binary (default: build it)")
	flagWorkers    = flag.Int("workers", 0, "worker threads of every proxy (dynamic-proxy worker_threads, HAProxy nbthread, nginx worker_processes); 0: each one's default, one per CPU")
	flagDPFixed    = flag.Bool("dp-fixed", false, "also run dynamic-proxy-fixed: dynamic-proxy with adaptive_threads = false (GOMAXPROCS stays at the worker threads)")
	flagDPUDP      = flag.Bool("dp-udp", true, "give dynamic-proxy its UDP rule")
	flagDPB        = flag.String("dp-b", "", "also run dynamic-proxy-b: this dynamic-proxy binary beside the default one, for an A/B of a change (the Targets table gets its per-round ratio to dynamic-proxy); \"same\": the same binary")
	flagDPBEnv     = flag.String("dp-b-env", "", "environment of dynamic-proxy-b, as comma-separated KEY=VALUE")
	flagTargets    = flag.String("targets", "", "comma-separated targets to run (default all; e.g. dynamic-proxy,dynamic-proxy-b,nginx for a quick A/B)")
	flagFloor      = flag.Bool("floor", true, "also run floor: a minimal C read/write relay (bench/floor/floor.c), the system-call floor dynamic-proxy is compared with")
	flagFloorUring = flag.Bool("floor-uring", false, "also run floor-uring: the floor relay on io_uring (bench/floor/floor_uring.c: multishot accept, send linked to the next recv, close through the ring, one io_uring_enter per loop turn; TCP only), built with cc and liburing (liburing-dev is installed when missing)")
)

func main() {
	flag.Parse()
	if *flagMode == "sink" {
		fmt.Fprintln(os.Stderr, sinkServe(*flagListen))
		os.Exit(1)
	}
	if *flagMode == "churn" || *flagMode == "udp" || *flagMode == "udp-new" || *flagMode == "tls" {
		load := churn
		switch *flagMode {
		case "udp":
			load = udpLoad
		case "udp-new": // as udp-newsession's: a new client socket per round trip
			load = udpNewSessions
		case "tls": // as tls-full-ecdsa's clients, to a TLS-terminating target
			load = func(addr string, _, _ int, d time.Duration) loadResult {
				r, _ := tlsHandshakes(addr, false, 8, d)
				return r
			}
		}
		r := load(*flagTarget, *flagRate, 64, *flagFor)
		fmt.Printf("%d operations in %v (%.0f/s), %d errors (first: %v), p50 %v p99 %v\n", r.ops, r.elapsed.Round(time.Millisecond),
			float64(r.ops)/r.elapsed.Seconds(), r.errors, r.firstErr, r.lat.pct(0.5), r.lat.pct(0.99))
		return
	}
	if *flagMode == "echo" {
		fmt.Fprintln(os.Stderr, echoServe(*flagListen))
		os.Exit(1)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// sample is one measurement: metric name -> value.
type sample map[string]float64

// roundKey holds a sample's round in the sample itself, so that two
// targets' samples can be paired by round (pairedRatio).
const roundKey = "_round"

// unitsKey holds the units of work a sample's CPU figure was divided by
// (connections, requests, round trips, GB), for the -budget windows.
const unitsKey = "_units"

type scenario struct {
	name    string
	udpOnly bool
	dpOnly  bool // only dynamic-proxy has the rules it needs
	tlsOnly bool // only the targets that terminate TLS
	metrics []metric
	run     func(t *target) (sample, error)
}

// runsOn reports whether t takes part in sc.
func (sc scenario) runsOn(t *target) bool {
	return !(sc.udpOnly && !t.udp || sc.dpOnly && t.name != "dynamic-proxy" || sc.tlsOnly && !t.tls)
}

type metric struct {
	key, label string
	higher     bool // higher is better
}

var dur = func(full, quick time.Duration) time.Duration {
	if *flagQuick {
		return quick
	}
	return full
}

// cpuWrap runs f, which returns a sample and the units of work it did, and
// adds to the sample the proxy's CPU per unit (× scale) under perKey.
func cpuWrap(t *target, f func() (sample, float64, error), perKey string, scale float64) (sample, error) {
	c0 := 0.0
	if t.pid() > 0 {
		c0 = cpuSeconds(t.pid())
	}
	s, units, err := f()
	if err != nil {
		return nil, err
	}
	if t.pid() > 0 && units > 0 {
		s[perKey] = (cpuSeconds(t.pid()) - c0) / units * scale
	}
	s[unitsKey] = units
	return s, nil
}

func scenarios() []scenario {
	iperf := func(streams int) func(t *target) (sample, error) { return iperfTCP(streams, "") }
	churnRun := func(rate, workers int, d time.Duration) func(t *target) (sample, error) {
		return func(t *target) (sample, error) {
			return cpuWrap(t, func() (sample, float64, error) {
				r := churn(fmt.Sprintf("127.0.0.1:%d", t.port("echo")), rate, workers, d)
				if r.ops == 0 {
					return nil, 0, fmt.Errorf("no connection completed: %v", r.firstErr)
				}
				return sample{"rate": float64(r.ops) / r.elapsed.Seconds(), "p50_ms": ms(r.lat.pct(0.5)),
					"p99_ms": ms(r.lat.pct(0.99)), "errors": float64(r.errors)}, float64(r.ops), nil
			}, "cpu_us_per_op", 1e6)
		}
	}
	udpRun := func(rate, clients int, d time.Duration) func(t *target) (sample, error) {
		return func(t *target) (sample, error) {
			return cpuWrap(t, func() (sample, float64, error) {
				r := udpLoad(fmt.Sprintf("127.0.0.1:%d", t.port("echo")), rate, clients, d)
				if r.ops == 0 {
					return nil, 0, fmt.Errorf("no round trip completed: %v", r.firstErr)
				}
				return sample{"rate": float64(r.ops) / r.elapsed.Seconds(), "p50_ms": ms(r.lat.pct(0.5)),
					"p99_ms": ms(r.lat.pct(0.99)), "errors": float64(r.errors)}, float64(r.ops), nil
			}, "cpu_us_per_op", 1e6)
		}
	}
	redis := func(t *target) (sample, error) {
		return cpuWrap(t, func() (sample, float64, error) {
			// 300,000 requests: about 2.5 s of proxy CPU, so the
			// 10 ms clock ticks of /proc/PID/stat are 0.4 % of it.
			n := 300000
			if *flagQuick {
				n = 20000
			}
			out, err := exec.Command("timeout", "60", "redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(t.port("redis")),
				"-t", "get", "-n", strconv.Itoa(n), "-c", "50", "--csv").Output()
			if err != nil {
				return nil, 0, fmt.Errorf("redis-benchmark: %v", err)
			}
			recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
			if err != nil || len(recs) < 2 {
				return nil, 0, fmt.Errorf("redis-benchmark output: %q", out)
			}
			col := map[string]int{}
			for i, h := range recs[0] {
				col[h] = i
			}
			f := func(k string) float64 { v, _ := strconv.ParseFloat(recs[1][col[k]], 64); return v }
			return sample{"rate": f("rps"), "p50_ms": f("p50_latency_ms"), "p99_ms": f("p99_latency_ms")}, float64(n), nil
		}, "cpu_us_per_op", 1e6)
	}
	idle := func(t *target) (sample, error) {
		n := 5000
		if *flagQuick {
			n = 1000
		}
		// A fresh proxy process: memory grown by earlier scenarios or rounds
		// would otherwise be reused and hide the cost of the connections.
		if t.setup != nil {
			t.proc.stop()
			if err := t.setup(t, t.dir); err != nil {
				return nil, err
			}
		}
		var fd0 int
		var rss0 int64
		if t.pid() > 0 {
			fd0, rss0 = fdCount(t.pid()), rssBytes(t.pid())
		}
		slab0 := slabBytes()
		conns, err := idleConns(fmt.Sprintf("127.0.0.1:%d", t.port("echo")), n)
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		if err != nil {
			return nil, fmt.Errorf("after %d connections: %v", len(conns), err)
		}
		s := sample{"slab_kb_per_conn": float64(slabBytes()-slab0) / float64(n) / 1024}
		if t.pid() > 0 {
			s["fds_per_conn"] = float64(fdCount(t.pid())-fd0) / float64(n)
			s["rss_kb_per_conn"] = float64(rssBytes(t.pid())-rss0) / float64(n) / 1024
		}
		return s, nil
	}
	tlsRun := func(off int, resume bool) func(t *target) (sample, error) {
		return func(t *target) (sample, error) {
			return cpuWrap(t, func() (sample, float64, error) {
				r, resumed := tlsHandshakes(fmt.Sprintf("127.0.0.1:%d", t.base+off), resume, 16, dur(3*time.Second, 1*time.Second))
				if r.ops == 0 {
					return nil, 0, fmt.Errorf("no handshake completed: %v", r.firstErr)
				}
				s := sample{"rate": float64(r.ops) / r.elapsed.Seconds(), "p50_ms": ms(r.lat.pct(0.5)),
					"p99_ms": ms(r.lat.pct(0.99)), "errors": float64(r.errors)}
				if resume {
					s["resumed_pct"] = 100 * float64(resumed) / float64(r.ops)
				}
				return s, float64(r.ops), nil
			}, "cpu_us_per_op", 1e6)
		}
	}
	tlsBulk := func(t *target) (sample, error) {
		return cpuWrap(t, func() (sample, float64, error) {
			start := time.Now()
			n, err := tlsBulkSend(fmt.Sprintf("127.0.0.1:%d", t.base+offTLSBulk), dur(4*time.Second, 2*time.Second))
			if err != nil {
				return nil, 0, err
			}
			return sample{"gbps": float64(n) * 8 / time.Since(start).Seconds() / 1e9}, float64(n) / 1e9, nil
		}, "cpu_ms_per_gb", 1000)
	}
	rt := []metric{{"rate", "ops/s", true}, {"cpu_us_per_op", "proxy CPU µs/op", false}, {"p50_ms", "p50 ms", false}, {"p99_ms", "p99 ms", false}, {"errors", "errors", false}}
	hs := []metric{{"rate", "handshakes/s", true}, {"cpu_us_per_op", "proxy CPU µs/handshake", false}, {"p50_ms", "p50 ms", false}, {"p99_ms", "p99 ms", false}, {"errors", "errors", false}}
	return append([]scenario{
		{name: "bulk-1", metrics: []metric{{"gbps", "Gbit/s", true}, {"cpu_ms_per_gb", "proxy CPU ms/GB", false}}, run: iperf(1)},
		{name: "bulk-8", metrics: []metric{{"gbps", "Gbit/s", true}, {"cpu_ms_per_gb", "proxy CPU ms/GB", false}}, run: iperf(8)},
		{name: "churn-4000/s", metrics: rt, run: churnRun(4000, 64, dur(4*time.Second, 2*time.Second))},
		{name: "churn-saturation", metrics: rt, run: churnRun(0, 16, dur(3*time.Second, 1*time.Second))},
		{name: "redis-get", metrics: rt[:4], run: redis},
		{name: "udp-20000/s", udpOnly: true, metrics: rt, run: udpRun(20000, 64, dur(4*time.Second, 2*time.Second))},
		{name: "udp-saturation", udpOnly: true, metrics: rt, run: udpRun(0, 16, dur(3*time.Second, 1*time.Second))},
		{name: "bulk-sni", dpOnly: true, metrics: []metric{{"sni_gbps", "SNI-routed Gbit/s", true}, {"plain_gbps", "plain Gbit/s", true},
			{"sni_cpu_ms_per_gb", "SNI CPU ms/GB", false}, {"plain_cpu_ms_per_gb", "plain CPU ms/GB", false}}, run: sniBulk},
		{name: "tls-full-ecdsa", tlsOnly: true, metrics: hs, run: tlsRun(offTLSECDSA, false)},
		{name: "tls-full-rsa", tlsOnly: true, metrics: hs, run: tlsRun(offTLSRSA, false)},
		{name: "tls-resumed", tlsOnly: true, metrics: append(hs[:2:2], metric{"resumed_pct", "resumed %", true}, hs[2], hs[3], hs[4]), run: tlsRun(offTLSECDSA, true)},
		{name: "tls-bulk", tlsOnly: true, metrics: []metric{{"gbps", "Gbit/s", true}, {"cpu_ms_per_gb", "proxy CPU ms/GB", false}}, run: tlsBulk},
		{name: "idle-5000", metrics: []metric{{"fds_per_conn", "fds/conn", false}, {"rss_kb_per_conn", "RSS kB/conn", false}, {"slab_kb_per_conn", "slab kB/conn (whole system)", false}}, run: idle},
	}, scenarios26()...)
}

// sniBulk streams through the same dynamic-proxy twice: through a plain rule
// and through a rule chosen by SNI after a peek, to show the peek costs the
// stream nothing once splicing resumes.
func sniBulk(t *target) (sample, error) {
	s := sample{}
	hello := clientHello("bench.example")
	d := dur(4*time.Second, 2*time.Second)
	for _, k := range []struct {
		key    string
		port   int
		prefix []byte
	}{{"plain", t.base + 4, hello}, {"sni", t.base + 5, hello}} {
		c0 := cpuSeconds(t.pid())
		start := time.Now()
		n, err := bulkSend(fmt.Sprintf("127.0.0.1:%d", k.port), k.prefix, d)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", k.key, err)
		}
		el := time.Since(start).Seconds()
		s[k.key+"_gbps"] = float64(n) * 8 / el / 1e9
		s[k.key+"_cpu_ms_per_gb"] = (cpuSeconds(t.pid()) - c0) / (float64(n) / 1e9) * 1000
	}
	return s, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func firstLine(b []byte) string {
	s := string(b)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func runQuiet(argv ...string) error {
	return exec.Command(argv[0], argv[1:]...).Run()
}

func ensurePackages() error {
	need := map[string]string{"haproxy": "haproxy", "nginx": "nginx-light", "iperf3": "iperf3", "redis-server": "redis-server", "redis-benchmark": "redis-tools", "wrk": "wrk"}
	if *flagFloor {
		need["cc"] = "gcc" // builds the floor relay
	}
	if *flagFloorUring {
		need["cc"] = "gcc"
	}
	var missing []string
	for cmd, pkg := range need {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, pkg)
		}
	}
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_stream_module.so"); err != nil {
		missing = append(missing, "libnginx-mod-stream")
	}
	if _, err := os.Stat("/usr/include/liburing.h"); err != nil && *flagFloorUring {
		missing = append(missing, "liburing-dev") // builds floor-uring
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Println("bench: installing", strings.Join(missing, " "))
	if err := runQuiet("apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	cmd := exec.Command("apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func run() error {
	if err := ensurePackages(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "dp-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	dp := *flagDP
	if dp == "" {
		dp = filepath.Join(dir, "dynamic-proxy")
		build := exec.Command("go", "build", "-o", dp, "./cmd/dynamic-proxy")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building dynamic-proxy: %w", err)
		}
	}
	if *flagFloor {
		if err := buildFloor(filepath.Join(dir, "floor")); err != nil {
			return err
		}
	}
	if *flagFloorUring {
		if err := buildFloorUring(filepath.Join(dir, "floor-uring")); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := applyPin(); err != nil { // after the build, which may use every CPU
		return err
	}

	// Backends.
	var procs []*proc
	var targets []*target
	defer func() {
		for _, t := range targets {
			t.proc.stop() // the current process of each target (idle restarts them)
		}
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()
	for _, argv := range [][]string{
		{"iperf3", "-s", "-p", strconv.Itoa(portIperf)},
		{self, "-mode", "echo", "-listen", fmt.Sprintf("127.0.0.1:%d", portEcho)},
		{self, "-mode", "sink", "-listen", fmt.Sprintf("127.0.0.1:%d", portSink)},
		{"redis-server", "--port", strconv.Itoa(portRedis), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir},
	} {
		p, err := start(filepath.Base(argv[0])+"-backend", dir, argv...)
		if err != nil {
			return err
		}
		procs = append(procs, p)
	}
	httpd, err := startHTTPBackend(dir)
	if httpd != nil {
		procs = append(procs, httpd)
	}
	if err != nil {
		return err
	}
	if err := waitPorts(&target{name: "backends", proc: procs[0]}); err != nil {
		return err
	}
	if err := runQuiet("redis-cli", "-p", strconv.Itoa(portRedis), "set", "key:__rand_int__", "x"); err != nil {
		return fmt.Errorf("seeding redis: %w", err)
	}

	if err := writeBenchCerts(dir); err != nil {
		return err
	}
	targets = allTargets(dp, supportsMetricsSwitch(dp))
	if *flagTargets != "" {
		keep := map[string]bool{}
		for _, n := range strings.Split(*flagTargets, ",") {
			keep[strings.TrimSpace(n)] = true
		}
		var ts []*target
		for _, t := range targets {
			if keep[t.name] {
				ts = append(ts, t)
				delete(keep, t.name)
			}
		}
		for n := range keep {
			fmt.Fprintf(os.Stderr, "bench: -targets: no target %q\n", n)
			os.Exit(2)
		}
		targets = ts
	}
	if *flagScaling {
		targets = scalingTargets(dp)
	}
	if *flagPin {
		pinTargets(targets)
	}
	for _, t := range targets {
		if t.setup == nil {
			continue
		}
		t.dir = dir
		if err := t.setup(t, dir); err != nil {
			return err
		}
	}

	scs := scenarios()
	only := *flagOnly
	if only == "" && *flagScaling {
		only = scalingScenarios
	}
	if only != "" {
		var keep []scenario
		for _, s := range scs {
			if strings.Contains(","+only+",", ","+s.name+",") {
				keep = append(keep, s)
			}
		}
		scs = keep
	}
	// results[scenario][target] = samples over rounds
	results := map[string]map[string][]sample{}
	errs := map[string]map[string][]string{} // every failed round's error
	for round := 0; round < *flagRounds; round++ {
		for _, sc := range scs {
			for i := range targets {
				t := targets[(i+round)%len(targets)] // rotate the order every round
				if !sc.runsOn(t) {
					continue
				}
				s, err := sc.run(t)
				if results[sc.name] == nil {
					results[sc.name] = map[string][]sample{}
					errs[sc.name] = map[string][]string{}
				}
				if err != nil {
					errs[sc.name][t.name] = append(errs[sc.name][t.name], err.Error())
					fmt.Printf("round %d %-16s %-24s error: %v\n", round+1, sc.name, t.name, err)
					continue
				}
				s[roundKey] = float64(round)
				results[sc.name][t.name] = append(results[sc.name][t.name], s)
				fmt.Printf("round %d %-16s %-24s %s\n", round+1, sc.name, t.name, fmtSample(s))
			}
		}
	}
	var report string
	if *flagScaling {
		report = renderScaling(dp, targets, scs, results, errs)
	} else {
		report = render(dp, targets, scs, results, errs)
	}
	if *flagBudget {
		report += renderBudget(runBudget(targets, scs), results)
	}
	out := outPath()
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(out, []byte(withKeptPart(out, report)), 0o644); err != nil {
		return err
	}
	fmt.Println()
	fmt.Print(report)
	fmt.Println("written to", out)
	return nil
}

// keptMarker starts the part of the report file a new run keeps: figures
// measured by other commands, written by hand below it.
const keptMarker = "<!-- make bench rewrites the report above this line and keeps what follows. -->"

// withKeptPart is report followed by the kept part of the file at path:
// from keptMarker to the end, when the file has it.
func withKeptPart(path, report string) string {
	old, err := os.ReadFile(path)
	if err != nil {
		return report
	}
	if i := strings.Index(string(old), keptMarker); i >= 0 {
		return strings.TrimRight(report, "\n") + "\n\n" + string(old[i:])
	}
	return report
}

func fmtSample(s sample) string {
	keys := make([]string, 0, len(s))
	for k := range s {
		if !strings.HasPrefix(k, "_") { // roundKey, unitsKey
			keys = append(keys, k)
		}
	}
	sortStrings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%.4g ", k, s[k])
	}
	return b.String()
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs, %s", cpu, runtime.NumCPU(), runtime.Version())
}

func versionOf(argv ...string) string {
	out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	return strings.TrimSpace(firstLine(out))
}

// parseIperf reads iperf3's JSON report (-J): the throughput received in
// Gbit/s and the gigabytes moved. iperf3 can exit 0 having moved nothing
// (a test cut short, or an "error" in the report): that is an error, not a
// sample of 0 Gbit/s.
func parseIperf(out []byte) (gbps, gb float64, err error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes float64 `json:"bytes"`
				Bps   float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, 0, fmt.Errorf("iperf3 report: %v", err)
	}
	if r.Error != "" {
		return 0, 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.Bytes <= 0 {
		return 0, 0, fmt.Errorf("iperf3 received no bytes")
	}
	return r.End.SumReceived.Bps / 1e9, r.End.SumReceived.Bytes / 1e9, nil
}
