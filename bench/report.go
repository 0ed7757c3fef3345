package main

import (
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"
)

var peers = []string{"haproxy", "haproxy-splice", "nginx"}

func sortStrings(s []string) { sort.Strings(s) }

type stats struct {
	med, lo, hi float64
	n           int
}

func summarize(samples []sample, key string) (stats, bool) {
	var v []float64
	for _, s := range samples {
		if x, ok := s[key]; ok {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return stats{}, false
	}
	sort.Float64s(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return stats{med: med, lo: v[0], hi: v[len(v)-1], n: len(v)}, true
}

// pairedRatio is the median over rounds of a[key]/b[key], pairing the
// samples of the same round; n is the number of pairs.
func pairedRatio(a, b []sample, key string) (ratio float64, n int) {
	byRound := map[float64]float64{}
	for _, s := range b {
		if x, ok := s[key]; ok && x != 0 {
			byRound[s[roundKey]] = x
		}
	}
	var rs []float64
	for _, s := range a {
		if y, ok := byRound[s[roundKey]]; ok {
			if x, ok := s[key]; ok {
				rs = append(rs, x/y)
			}
		}
	}
	if len(rs) == 0 {
		return 0, 0
	}
	sort.Float64s(rs)
	ratio = rs[len(rs)/2]
	if len(rs)%2 == 0 {
		ratio = (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2
	}
	return ratio, len(rs)
}

func num(x float64) string {
	switch a := math.Abs(x); {
	case a == 0:
		return "0"
	case a >= 1000:
		return fmt.Sprintf("%.0f", x)
	case a >= 100:
		return fmt.Sprintf("%.1f", x)
	case a >= 1:
		return fmt.Sprintf("%.2f", x)
	default:
		return fmt.Sprintf("%.3f", x)
	}
}

// bestPeer returns the best peer median for a metric.
func bestPeer(res map[string][]sample, m metric) (string, float64, bool) {
	bestName, best, found := "", 0.0, false
	for _, p := range peers {
		st, ok := summarize(res[p], m.key)
		if !ok {
			continue
		}
		if !found || (m.higher && st.med > best) || (!m.higher && st.med < best) {
			bestName, best, found = p, st.med, true
		}
	}
	return bestName, best, found
}

func render(dp string, targets []*target, scs []scenario, results map[string]map[string][]sample, errs map[string]map[string][]string) string {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("Produced by `make bench` (`go run ./bench`), which writes this file. ")
	b.WriteString("Every target runs every scenario in interleaved rounds whose order rotates each round; ")
	b.WriteString("each cell is the median over the rounds with the min–max spread. ")
	b.WriteString("Proxy CPU is user+system time of the proxy's process tree from `/proc/PID/stat` over the run, divided by the work done: ")
	b.WriteString("on a 2-core machine shared with the load generator it is far steadier than raw rates.\n\n")
	fmt.Fprintf(&b, "- date: %s\n- machine: %s\n- command: `go run ./bench %s`\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), machine(), strings.Join(os.Args[1:], " "))
	fmt.Fprintf(&b, "- dynamic-proxy: %s\n- %s\n- %s\n- %s\n- %s\n- %s\n\n",
		versionOf(dp, "--version-info"), versionOf("haproxy", "-v"), versionOf("nginx", "-v"), versionOf("iperf3", "--version"), versionOf("redis-benchmark", "--version"), pinNote())
	b.WriteString("Targets: `direct` (client to backend, the physical limit), `dynamic-proxy`, `haproxy` (mode tcp, defaults), ")
	b.WriteString("`haproxy-splice` (with `option splice-request` and `option splice-response`), `nginx` (stream module)")
	for _, t := range targets {
		switch t.name {
		case "dynamic-proxy-goroutine":
			b.WriteString(", `dynamic-proxy-goroutine` (the same build with `engine = \"goroutine\"`)")
		case "dynamic-proxy-nometrics":
			b.WriteString(", `dynamic-proxy-nometrics` (metrics disabled)")
		case "dynamic-proxy-b":
			fmt.Fprintf(&b, ", `dynamic-proxy-b` (`-dp-b %s`, environment `%s`: the B of an A/B)", *flagDPB, *flagDPBEnv)
		case "dynamic-proxy-fixed":
			b.WriteString(", `dynamic-proxy-fixed` (`adaptive_threads = false`: GOMAXPROCS stays at the worker threads)")
		case "floor":
			b.WriteString(", `floor` (`bench/floor/floor.c`: the smallest relay that does the job, one thread, epoll, " +
				"only accept, connect, read, write, shutdown and close on TCP and one connected backend socket per client on UDP, " +
				"read/write through a 16 KiB buffer, no splice; the CPU floor dynamic-proxy is held to, and not a peer)")
		case "floor-uring":
			b.WriteString(", `floor-uring` (`bench/floor/floor_uring.c`: the floor relay on io_uring, one thread, one ring, " +
				"multishot accept, connect, recv and send through the ring, each send linked to the next recv, close through the ring, " +
				"`socket` and `shutdown` as system calls, one `io_uring_enter` per loop turn; TCP only; a yardstick for an io_uring data path, and not a peer)")
		}
	}
	b.WriteString(". HAProxy has no UDP.\n\n")
	b.WriteString("Backends, started by the harness: iperf3 (TCP and UDP), an echo server (TCP and UDP), a sink, redis-server, ")
	b.WriteString("and nginx as an HTTP server answering `ok` (one worker, no access log) for the wrk scenarios. ")
	b.WriteString("With `-pin` each proxy's process tree runs on CPU 0 with one worker and everything else on CPU 1; ")
	b.WriteString("without it (the default) proxies, backends and load generators share every CPU, as on a small VM, ")
	b.WriteString("which is the setup of the saturation targets (wrk-keepalive, wrk-close, udp-iperf-1g).\n\n")

	b.WriteString(targetsTable(results))

	for _, sc := range scs {
		res := results[sc.name]
		fmt.Fprintf(&b, "## %s\n\n| target |", sc.name)
		for _, m := range sc.metrics {
			fmt.Fprintf(&b, " %s |", m.label)
		}
		b.WriteString(" ×direct | ×best peer |\n|---|")
		for range sc.metrics {
			b.WriteString("---|")
		}
		b.WriteString("---|---|\n")
		head := sc.metrics[0]
		directSt, hasDirect := summarize(res["direct"], head.key)
		_, peerBest, hasPeer := bestPeer(res, head)
		for _, t := range targets {
			if !sc.runsOn(t) {
				continue
			}
			if e := errs[sc.name][t.name]; len(e) > 0 && len(res[t.name]) == 0 {
				fmt.Fprintf(&b, "| %s | error: %s |\n", t.name, lastErr(e))
				continue
			}
			fmt.Fprintf(&b, "| %s |", t.name)
			for _, m := range sc.metrics {
				st, ok := summarize(res[t.name], m.key)
				if !ok {
					b.WriteString(" – |")
					continue
				}
				fmt.Fprintf(&b, " %s (%s–%s) |", num(st.med), num(st.lo), num(st.hi))
			}
			st, ok := summarize(res[t.name], head.key)
			ratio := func(ref float64, okRef bool) string {
				if !ok || !okRef || ref == 0 {
					return "–"
				}
				return fmt.Sprintf("%.2f", st.med/ref)
			}
			fmt.Fprintf(&b, " %s | %s |\n", ratio(directSt.med, hasDirect), ratio(peerBest, hasPeer))
		}
		fmt.Fprintf(&b, "\nRatios are of the first column (%s).\n\n", head.label)
		if f := failedRounds(targets, errs[sc.name], res); f != "" {
			b.WriteString(f + "\n\n")
		}
		if note := scenarioNotes[sc.name]; note != "" {
			b.WriteString(note + "\n\n")
		}
	}
	return b.String()
}

// targetsTable checks the targets against the medians.
func targetsTable(results map[string]map[string][]sample) string {
	med := func(sc, t, key string) (float64, bool) {
		st, ok := summarize(results[sc][t], key)
		return st.med, ok
	}
	type check struct {
		what string
		dp   string
		ref  string
		ok   string
	}
	var rows []check
	cmp := func(what, sc, key, refTarget string, factor float64, higher bool) {
		d, ok1 := med(sc, "dynamic-proxy", key)
		r, ok2 := med(sc, refTarget, key)
		if !ok1 || !ok2 {
			rows = append(rows, check{what, "–", "–", "not measured"})
			return
		}
		pass := d >= factor*r
		if !higher {
			pass = d <= factor*r
		}
		verdict := "yes"
		if !pass {
			verdict = "**no**"
		}
		rows = append(rows, check{what, num(d), fmt.Sprintf("%s × %s = %s", refTarget, num(factor), num(factor*r)), verdict})
	}
	// Targets that are a ratio to another target, of a few per cent or
	// within the drift between rounds, are judged on the median of the
	// per-round ratios (pairedRatio): pairedRow, whose label names the
	// ratio in the table.
	pairedRow := func(what, sc, key, ref, label string, factor float64, higher bool) {
		r, n := pairedRatio(results[sc]["dynamic-proxy"], results[sc][ref], key)
		if n == 0 {
			rows = append(rows, check{what, "–", "–", "not measured"})
			return
		}
		pass, op := r <= factor, "≤"
		if higher {
			pass, op = r >= factor, "≥"
		}
		verdict := "yes"
		if !pass {
			verdict = "**no**"
		}
		rows = append(rows, check{what, fmt.Sprintf("%s = %.3f", label, r), fmt.Sprintf("median of %d per-round ratios %s %.2f", n, op, factor), verdict})
	}
	pairedPeer := func(what, sc, key, ref string, factor float64, higher bool) {
		pairedRow(what, sc, key, ref, "÷ "+ref, factor, higher)
	}
	// The issue 26 saturation targets are for the unpinned setup, where
	// clients, backends and proxy share the cores: a pinned run shows the
	// figures without a verdict.
	unpinned := func(what string, add func(what string)) {
		add(what + " (unpinned)")
		if *flagPin && rows[len(rows)-1].ok != "not measured" {
			rows[len(rows)-1].ok = "n/a: pinned run"
		}
	}
	pairedPeer("bulk-1 throughput ≥ 0.70 × direct", "bulk-1", "gbps", "direct", 0.70, true)
	cmp("bulk-1 throughput ≥ 1.5 × haproxy", "bulk-1", "gbps", "haproxy", 1.5, true)
	cmp("bulk-8 throughput ≥ 0.70 × direct", "bulk-8", "gbps", "direct", 0.70, true)
	pairedPeer("bulk-1 CPU/GB ≤ 0.9 × haproxy-splice", "bulk-1", "cpu_ms_per_gb", "haproxy-splice", 0.9, false)
	pairedPeer("bulk-5g CPU/GB ≤ 0.9 × haproxy-splice", "bulk-5g", "cpu_ms_per_gb", "haproxy-splice", 0.9, false)
	cmp("churn CPU/conn ≤ haproxy", "churn-4000/s", "cpu_us_per_op", "haproxy", 1, false)
	pairedPeer("churn-4000/s CPU/conn ≤ 0.85 × nginx", "churn-4000/s", "cpu_us_per_op", "nginx", 0.85, false)
	pairedPeer("churn-saturation CPU/conn ≤ 0.85 × nginx", "churn-saturation", "cpu_us_per_op", "nginx", 0.85, false)
	pairedPeer("churn-4000/s p99 ≤ nginx", "churn-4000/s", "p99_ms", "nginx", 1, false)
	cmp("redis CPU/req ≤ haproxy", "redis-get", "cpu_us_per_op", "haproxy", 1, false)
	pairedPeer("redis CPU/req ≤ 0.85 × nginx", "redis-get", "cpu_us_per_op", "nginx", 0.85, false)
	cmp("UDP rate (saturation) ≥ nginx", "udp-saturation", "rate", "nginx", 1, true)
	pairedPeer("udp-20000/s CPU/round trip ≤ 0.85 × nginx", "udp-20000/s", "cpu_us_per_op", "nginx", 0.85, false)
	pairedPeer("udp-saturation CPU/round trip ≤ 0.85 × nginx", "udp-saturation", "cpu_us_per_op", "nginx", 0.85, false)
	pairedPeer("udp-newsession CPU/round trip ≤ 0.85 × nginx", "udp-newsession", "cpu_us_per_op", "nginx", 0.85, false)
	pairedPeer("udp-20000/s p99 ≤ nginx", "udp-20000/s", "p99_ms", "nginx", 1, false)
	unpinned("wrk-keepalive requests/s ≥ haproxy", func(w string) { pairedPeer(w, "wrk-keepalive", "rate", "haproxy", 1, true) })
	unpinned("wrk-close requests/s ≥ haproxy", func(w string) { pairedPeer(w, "wrk-close", "rate", "haproxy", 1, true) })
	// Medians, not per-round ratios: direct's loss can be 0.
	unpinned("udp-iperf-1g loss ≤ 2 × direct", func(w string) { cmp(w, "udp-iperf-1g", "lost_pct", "direct", 2, false) })
	cmp("idle RSS/conn ≤ nginx", "idle-5000", "rss_kb_per_conn", "nginx", 1, false)
	if d, ok := med("idle-5000", "dynamic-proxy", "fds_per_conn"); ok {
		v := "yes"
		if math.Abs(d-2) > 0.05 {
			v = "**no**"
		}
		rows = append(rows, check{"idle: 2 descriptors per connection", num(d), "2", v})
	}
	// Metrics on vs off is a difference of a few per cent between two
	// builds of the same proxy, below the drift between rounds here, so it
	// is judged on the median of the per-round ratios (the two run back to
	// back in most rounds) rather than on the ratio of the medians.
	paired := func(what, sc, key string, lo, hi float64) {
		if lo > 0 {
			pairedRow(what, sc, key, "dynamic-proxy-nometrics", "on/off", lo, true)
		} else {
			pairedRow(what, sc, key, "dynamic-proxy-nometrics", "on/off", hi, false)
		}
	}
	pairedPeer("TLS CPU/full ECDSA handshake ≤ nginx", "tls-full-ecdsa", "cpu_us_per_op", "nginx", 1, false)
	pairedPeer("TLS bulk CPU/GB ≤ 1.2 × nginx", "tls-bulk", "cpu_ms_per_gb", "nginx", 1.2, false)
	// The floor: dynamic-proxy's CPU against the minimal relay's, per
	// round, like the metrics cost (the two figures are close, the rounds
	// drift).
	for _, sc := range []string{"churn-4000/s", "churn-saturation", "redis-get", "udp-20000/s", "udp-saturation"} {
		pairedRow(fmt.Sprintf("dynamic-proxy CPU ≤ 1.15 × floor (%s)", sc), sc, "cpu_us_per_op", "floor", "dp/floor", 1.15, false)
	}
	if *flagDPB != "" {
		// dynamic-proxy-b ÷ dynamic-proxy: < 1 means B spends less.
		names := make([]string, 0, len(results))
		for sc := range results {
			names = append(names, sc)
		}
		sort.Strings(names)
		for _, sc := range names {
			for _, key := range []string{"cpu_us_per_op", "cpu_ms_per_gb", "p99_ms"} {
				r, n := pairedRatio(results[sc]["dynamic-proxy-b"], results[sc]["dynamic-proxy"], key)
				if n > 0 {
					rows = append(rows, check{fmt.Sprintf("A/B: %s %s, dynamic-proxy-b ÷ dynamic-proxy", sc, key), fmt.Sprintf("%.3f", r), fmt.Sprintf("median of %d per-round ratios", n), "info"})
				}
			}
		}
	}
	// The io_uring floor against nginx and the epoll floor, for
	// information (issue 26: could io_uring take a relay below 0.85 ×
	// nginx?).
	for _, sc := range []string{"churn-4000/s", "churn-saturation", "redis-get"} {
		for _, ref := range []string{"nginx", "floor"} {
			if r, n := pairedRatio(results[sc]["floor-uring"], results[sc][ref], "cpu_us_per_op"); n > 0 {
				rows = append(rows, check{fmt.Sprintf("floor-uring CPU ÷ %s (%s)", ref, sc), fmt.Sprintf("%.3f", r), fmt.Sprintf("median of %d per-round ratios", n), "info"})
			}
		}
		if r, n := pairedRatio(results[sc]["floor"], results[sc]["nginx"], "cpu_us_per_op"); n > 0 && len(results[sc]["floor-uring"]) > 0 {
			rows = append(rows, check{fmt.Sprintf("floor CPU ÷ nginx (%s)", sc), fmt.Sprintf("%.3f", r), fmt.Sprintf("median of %d per-round ratios", n), "info"})
		}
	}
	paired("metrics on vs off: CPU/conn within 3% (churn-4000/s)", "churn-4000/s", "cpu_us_per_op", 0, 1.03)
	paired("metrics on vs off: CPU/req within 3% (redis-get)", "redis-get", "cpu_us_per_op", 0, 1.03)
	paired("metrics on vs off: connection rate within 3% (churn-saturation)", "churn-saturation", "rate", 0.97, math.Inf(1))

	var b strings.Builder
	b.WriteString("## Targets\n\n| target | dynamic-proxy | reference | met |\n|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.what, r.dp, r.ref, r.ok)
	}
	b.WriteString("\n")
	return b.String()
}

var scenarioNotes = map[string]string{
	"idle-5000": "Each round restarts every proxy before this scenario, so RSS per connection is what 5,000 new " +
		"connections cost a fresh process. Descriptors and RSS are the proxy's process tree; slab is the whole " +
		"system's slab change while the connections are held (client, proxy and backend sockets together, and " +
		"whatever else the kernel did meanwhile): a noisy sanity figure, not a per-proxy cost.",
	"bulk-sni": "Only dynamic-proxy: the same stream through a plain rule and through a rule chosen by SNI after " +
		"the proxy peeked at a real ClientHello; both send the same hello first.",
	"churn-saturation": "For information: on 2 cores the load generator, not the proxy, is the limit here.",
	"udp-saturation":   "16 client sockets, each with one datagram in flight (closed loop).",
	"tls-full-ecdsa": "TLS terminated by the proxy (HAProxy `bind … ssl crt`, nginx `listen … ssl`, dynamic-proxy `[rules.tls]`), " +
		"then 64 bytes echoed by the plaintext backend: 16 closed-loop clients, a new connection and a full handshake each time. " +
		"Every client is Go's crypto/tls offering TLS 1.3 with an X25519 key share (OpenSSL 3.0 has no ML-KEM); the certificate is a self-signed ECDSA P-256 one, generated per run.",
	"tls-full-rsa": "As tls-full-ecdsa with an RSA-2048 certificate. Go's RSA signing is slower than OpenSSL's; the target is on ECDSA, RSA is reported as measured.",
	"tls-resumed":  "As tls-full-ecdsa, each client keeping a session cache: every connection after its first resumes with a TLS 1.3 ticket (the resumed column checks that it did).",
	"tls-bulk":     "One client streams for the run's length through a terminated connection to a backend that discards; the proxy decrypts and writes plaintext.",
	"bulk-5g":      "One iperf3 stream paced at `-b 5G`: proxy CPU per GB at a fixed rate every target sustains, beside bulk-1's at saturation.",
	"wrk-keepalive": "wrk, one thread and 32 connections kept alive for the whole run, to the nginx HTTP backend; " +
		"proxy CPU per request, latencies from wrk's `--latency` distribution, errors are wrk's socket errors plus non-2xx responses.",
	"wrk-close": "As wrk-keepalive with `-H 'Connection: close'`: the backend closes after each response and wrk reconnects, a new proxied connection per request.",
	"udp-iperf-1g": "iperf3 `-u -b 1G -l 1400`: its TCP control connection and its UDP datagrams through the same front port. " +
		"Loss and Gbit/s are the receiver's (iperf3's `end.sum_received`); CPU is per GB received.",
	"udp-newsession": "UDP round trips at 5,000/s, each from a new client socket closed after its echo: every request is a new proxy session, " +
		"on a rule whose sessions end after one reply (dynamic-proxy `max_responses = 1`, nginx `proxy_responses 1`; both keep an unanswered one 30 s).",
}

// failedRounds names the targets that failed some rounds but not all (a
// target that failed every round has an error row instead), with how many
// and the last error: those rounds are left out of the medians, and the
// report says so.
func failedRounds(targets []*target, errs map[string][]string, res map[string][]sample) string {
	var parts []string
	for _, t := range targets {
		e := errs[t.name]
		if len(e) == 0 || len(res[t.name]) == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d of %d (%s)", t.name, len(e), len(e)+len(res[t.name]), lastErr(e)))
	}
	if len(parts) == 0 {
		return ""
	}
	return "Rounds that failed, left out of the medians: " + strings.Join(parts, "; ") + "."
}

// lastErr is the last of a target's errors, fit for a Markdown table cell.
func lastErr(errs []string) string { return strings.ReplaceAll(errs[len(errs)-1], "|", "/") }
