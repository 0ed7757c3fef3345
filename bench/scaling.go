package main

// -scaling: dynamic-proxy, nginx and HAProxy each with 1 and 2 workers,
// side by side in the same interleaved rounds.

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

var flagScaling = flag.Bool("scaling", false, "run dynamic-proxy, nginx and HAProxy with 1 and 2 workers each (worker_threads, worker_processes, nbthread) on the chosen scenarios (default "+scalingScenarios+") and write the scaling table (default -out: docs/SCALING.md)")

const scalingScenarios = "churn-saturation,redis-get,udp-saturation"

// outPath is -out, or docs/SCALING.md for a -scaling run left at the
// default, so that it does not replace the main report.
func outPath() string {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "out" })
	if *flagScaling && !set {
		return "docs/SCALING.md"
	}
	return *flagOut
}

// scalingKinds are the proxies compared, in table order.
var scalingKinds = []string{"dynamic-proxy", "nginx", "haproxy"}

// scalingTargets are NAME-w1 and NAME-w2 for each of scalingKinds, on
// front ports of their own (22000–22599), ordered so that the rotation
// of the rounds interleaves them.
func scalingTargets(dp string) []*target {
	var ts []*target
	for _, w := range []int{1, 2} {
		base := 22000 + 100*(w-1)
		ts = append(ts,
			&target{name: fmt.Sprintf("dynamic-proxy-w%d", w), base: base, udp: true, workers: w, setup: func(t *target, dir string) error {
				return startDP(t, dir, dp, true, true, "")
			}},
			&target{name: fmt.Sprintf("nginx-w%d", w), base: base + 200, udp: true, workers: w, setup: startNginx},
			&target{name: fmt.Sprintf("haproxy-w%d", w), base: base + 400, workers: w, setup: func(t *target, dir string) error {
				return startHAProxy(t, dir, false)
			}})
	}
	return ts
}

func renderScaling(dp string, targets []*target, scs []scenario, results map[string]map[string][]sample, errs map[string]map[string][]string) string {
	var b strings.Builder
	b.WriteString("# Scaling: 1 and 2 workers\n\n")
	b.WriteString("Produced by `go run ./bench -scaling`, which writes this file. dynamic-proxy (`worker_threads`), nginx (`worker_processes`) ")
	b.WriteString("and HAProxy (`nbthread`, mode tcp) each run with 1 and with 2 workers, all six in the same interleaved rounds. ")
	b.WriteString("Each cell is the median over the rounds with the min–max spread; a w2/w1 ratio is the median of the per-round ratios. ")
	b.WriteString("Proxy CPU is user+system time of the proxy's process tree from `/proc/PID/stat`, divided by the work done. ")
	b.WriteString("The load generator and the backends share the machine's CPUs with the proxy, so on a 2-core machine a second worker cannot double a rate; ")
	b.WriteString("CPU per unit staying flat from 1 to 2 workers is the sign that the workers do not contend.\n\n")
	fmt.Fprintf(&b, "- date: %s\n- machine: %s\n- command: `go run ./bench %s`\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), machine(), strings.Join(os.Args[1:], " "))
	fmt.Fprintf(&b, "- dynamic-proxy: %s\n- %s\n- %s\n\n", versionOf(dp, "--version-info"), versionOf("haproxy", "-v"), versionOf("nginx", "-v"))
	b.WriteString("| scenario | target | rate, 1 worker | rate, 2 workers | rate w2/w1 | CPU µs/op, 1 worker | CPU µs/op, 2 workers | CPU w2/w1 |\n|---|---|---|---|---|---|---|---|\n")
	byName := map[string]*target{}
	for _, t := range targets {
		byName[t.name] = t
	}
	cell := func(res []sample, key string) string {
		st, ok := summarize(res, key)
		if !ok {
			return "–"
		}
		return fmt.Sprintf("%s (%s–%s)", num(st.med), num(st.lo), num(st.hi))
	}
	for _, sc := range scs {
		res := results[sc.name]
		for _, k := range scalingKinds {
			w1, w2 := k+"-w1", k+"-w2"
			if t := byName[w1]; t == nil || !sc.runsOn(t) {
				continue
			}
			row := []string{sc.name, k}
			for _, key := range []string{"rate", "cpu_us_per_op"} {
				r := "–"
				if x, n := pairedRatio(res[w2], res[w1], key); n > 0 {
					r = fmt.Sprintf("%.2f", x)
				}
				row = append(row, cell(res[w1], key), cell(res[w2], key), r)
			}
			for _, w := range []string{w1, w2} {
				if e := errs[sc.name][w]; len(e) > 0 && len(res[w]) == 0 {
					row = append(row[:2], fmt.Sprintf("error (%s): %s", w, lastErr(e)))
					break
				}
			}
			fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
		}
	}
	b.WriteString("\n")
	var failed []string
	for _, sc := range scs {
		if f := failedRounds(targets, errs[sc.name], results[sc.name]); f != "" {
			failed = append(failed, sc.name+": "+f)
		}
	}
	if len(failed) > 0 {
		b.WriteString(strings.Join(failed, "\n\n") + "\n\n")
	}
	for _, sc := range scs {
		if note := scenarioNotes[sc.name]; note != "" {
			fmt.Fprintf(&b, "%s: %s\n\n", sc.name, note)
		}
	}
	return b.String()
}
