package main

// -budget: where a proxy's time goes per unit of work, from linux-perf.
// After the rounds, each budget scenario runs twice more on each proxy:
// first under `perf trace -s`, only to learn which system calls it makes
// (perf trace copies every call to user space: the proxy runs slower, and
// a slower proxy batches more per call, so its counts are not the
// unperturbed ones); then under `perf stat` with the CPU clock, the context
// switches, every system call (raw_syscalls:sys_enter) and the tracepoint
// of each call perf trace saw, all counted in the kernel, which is cheap.
// The figures come from the perf stat window, divided by the units of work
// done in it.

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

var flagBudget = flag.Bool("budget", false, "after the rounds, measure dynamic-proxy's, nginx's and HAProxy's CPU (user, kernel) and system calls per connection, request and round trip with perf stat and perf trace, and add \"Where the time goes (perf)\" to the report")

// budgetUnits maps the budget scenarios to the unit their work is counted in.
var budgetUnits = map[string]string{"churn-4000/s": "connection", "redis-get": "request", "udp-20000/s": "round trip"}

// budgetTargets are the proxies measured (and their -scaling variants).
var budgetTargets = []string{"dynamic-proxy", "nginx", "haproxy"}

func isBudgetTarget(name string) bool {
	for _, b := range budgetTargets {
		if name == b || name == b+"-w1" || name == b+"-w2" {
			return true
		}
	}
	return false
}

// budget is one target's figures for one scenario, per unit of work.
type budget struct {
	scenario, target string
	err              string

	units      float64            // work done in the perf stat window
	cpuUS      float64            // perf task-clock, µs per unit
	userFrac   float64            // user share of the CPU time, from /proc/PID/stat
	ticks      int64              // /proc clock ticks behind userFrac (its resolution)
	syscalls   float64            // raw_syscalls:sys_enter per unit
	ctxSwitch  float64            // context switches per unit
	statCPUUS  float64            // /proc CPU µs per unit in the perf stat window
	traceCPUUS float64            // /proc CPU µs per unit in the perf trace window
	byName     map[string]float64 // perf stat's count of each call perf trace saw, per unit
	traceTotal float64            // system calls per unit counted by perf trace
	lost       int64              // events perf trace lost
}

// runBudget measures every budget target on every budget scenario of scs.
func runBudget(targets []*target, scs []scenario) []budget {
	var out []budget
	for _, sc := range scs {
		if budgetUnits[sc.name] == "" {
			continue
		}
		for _, t := range targets {
			if !isBudgetTarget(t.name) || !sc.runsOn(t) || t.pid() <= 0 {
				continue
			}
			b := measureBudget(sc, t)
			if b.err != "" {
				fmt.Printf("budget %-16s %-24s error: %s\n", sc.name, t.name, b.err)
			} else {
				fmt.Printf("budget %-16s %-24s cpu=%.3gµs user=%.0f%% syscalls=%.3g (%s)\n", sc.name, t.name, b.cpuUS, 100*b.userFrac, b.syscalls, topSyscalls(b.byName, 6))
			}
			out = append(out, b)
		}
	}
	return out
}

func measureBudget(sc scenario, t *target) budget {
	b := budget{scenario: sc.name, target: t.name}
	fail := func(what string, err error) budget { b.err = what + ": " + err.Error(); return b }
	pids := pidList(tree(t.pid()))

	// Window 1: perf trace, for the names of the system calls.
	traceOut, s, err := underPerf(t, sc, "trace", "-s", "-p", pids)
	if err != nil {
		return fail("perf trace", err)
	}
	calls, lost, err := parsePerfTrace(traceOut)
	if err != nil {
		return fail("perf trace", err)
	}
	if units := s[unitsKey]; units > 0 {
		for _, n := range calls {
			b.traceTotal += float64(n) / units
		}
	}
	b.lost = lost
	b.traceCPUUS = s["cpu_us_per_op"]

	// Window 2: perf stat, counting in the kernel.
	events := []string{"task-clock", "context-switches", "raw_syscalls:sys_enter"}
	have := syscallTracepoints()
	for name := range calls {
		if have[name] {
			events = append(events, "syscalls:sys_enter_"+name)
		}
	}
	u0, c0 := userTicks(t.pid())
	statOut, s, err := underPerf(t, sc, "stat", "-x,", "-e", strings.Join(events, ","), "-p", pids)
	if err != nil {
		return fail("perf stat", err)
	}
	u1, c1 := userTicks(t.pid())
	ev, err := parsePerfStat(statOut)
	if err != nil {
		return fail("perf stat", err)
	}
	b.units = s[unitsKey]
	if b.units <= 0 {
		return fail("perf stat", fmt.Errorf("no work done in the window"))
	}
	b.cpuUS = ev["task-clock"] * 1000 / b.units // msec
	b.syscalls = ev["raw_syscalls:sys_enter"] / b.units
	b.ctxSwitch = ev["context-switches"] / b.units
	b.statCPUUS = s["cpu_us_per_op"]
	if b.ticks = c1 - c0; b.ticks > 0 {
		b.userFrac = float64(u1-u0) / float64(b.ticks)
	}
	b.byName = map[string]float64{}
	named := 0.0
	for k, v := range ev {
		if name, ok := strings.CutPrefix(k, "syscalls:sys_enter_"); ok && v > 0 {
			b.byName[name] = v / b.units
			named += v
		}
	}
	if rest := ev["raw_syscalls:sys_enter"] - named; rest > 0 {
		b.byName["unnamed"] = rest / b.units // calls perf trace did not see
	}
	return b
}

var tracepoints map[string]bool

// syscallTracepoints is the set of system calls with a
// syscalls:sys_enter_NAME tracepoint on this kernel.
func syscallTracepoints() map[string]bool {
	if tracepoints != nil {
		return tracepoints
	}
	tracepoints = map[string]bool{}
	out, _ := exec.Command("perf", "list", "syscalls:sys_enter_*").Output()
	for _, f := range strings.Fields(string(out)) {
		if name, ok := strings.CutPrefix(f, "syscalls:sys_enter_"); ok {
			tracepoints[name] = true
		}
	}
	return tracepoints
}

// underPerf runs sc on t while `perf <args>` watches, and returns what perf
// wrote and the scenario's sample. perf runs until the load ends and is
// then stopped with SIGINT, on which it prints its counts.
func underPerf(t *target, sc scenario, args ...string) ([]byte, sample, error) {
	f, err := os.CreateTemp(t.dir, "perf-*.txt")
	if err != nil {
		return nil, nil, err
	}
	f.Close()
	defer os.Remove(f.Name())
	cmd := exec.Command("perf", append([]string{args[0], "-o", f.Name()}, args[1:]...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// perf trace takes a moment to set up its tracepoints and read the
	// syscall table; the load starts after that.
	settle := 300 * time.Millisecond
	if args[0] == "trace" {
		settle = 1500 * time.Millisecond
	}
	select {
	case err := <-done:
		return nil, nil, fmt.Errorf("exited at start: %v: %s", err, firstLine(stderr.Bytes()))
	case <-time.After(settle):
	}
	s, runErr := sc.run(t)
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(60 * time.Second): // perf trace still draining its buffers
		cmd.Process.Kill()
		<-done
		return nil, nil, fmt.Errorf("did not stop on SIGINT")
	}
	if runErr != nil {
		return nil, nil, runErr
	}
	out, err := os.ReadFile(f.Name())
	return out, s, err
}

func pidList(pids []int) string {
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

// parsePerfStat reads `perf stat -x,` output: event name -> count (msec
// for task-clock). An event perf could not count is an error.
func parsePerfStat(out []byte) (map[string]float64, error) {
	ev := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		if strings.HasPrefix(f[0], "<") { // <not counted>, <not supported>
			return nil, fmt.Errorf("%s: %s", f[2], f[0])
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("perf stat line %q: %v", line, err)
		}
		ev[f[2]] += v
	}
	if len(ev) == 0 {
		return nil, fmt.Errorf("no counts in perf stat output %q", firstLine(out))
	}
	return ev, nil
}

var (
	traceRow  = regexp.MustCompile(`^\s+([a-z_0-9]+)\s+(\d+)\s+\d+\s+[\d.]+`) // syscall calls errors total(msec) …
	traceLost = regexp.MustCompile(`LOST (\d+) events`)
)

// parsePerfTrace reads `perf trace -s` output, one summary table per
// thread, and returns the calls of each system call summed over threads,
// and the events perf reported lost.
func parsePerfTrace(out []byte) (calls map[string]int64, lost int64, err error) {
	calls = map[string]int64{}
	inTable := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := traceLost.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			lost += n
			continue
		}
		if strings.Contains(line, "-----") {
			inTable = true
			continue
		}
		if strings.TrimSpace(line) == "" {
			inTable = false
			continue
		}
		if !inTable {
			continue
		}
		if m := traceRow.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[2], 10, 64)
			calls[m[1]] += n
		}
	}
	if len(calls) == 0 {
		return nil, lost, fmt.Errorf("no system call summary in perf trace output %q", firstLine(out))
	}
	return calls, lost, nil
}

// topSyscalls lists the n most frequent system calls per unit, then the
// rest summed as "other".
func topSyscalls(byName map[string]float64, n int) string {
	names := make([]string, 0, len(byName))
	for k := range byName {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		if byName[names[i]] != byName[names[j]] {
			return byName[names[i]] > byName[names[j]]
		}
		return names[i] < names[j]
	})
	var parts []string
	other := 0.0
	for i, k := range names {
		if i < n {
			parts = append(parts, k+" "+num(byName[k]))
		} else {
			other += byName[k]
		}
	}
	if other > 0 {
		parts = append(parts, "other "+num(other))
	}
	return strings.Join(parts, ", ")
}

func renderBudget(bs []budget, results map[string]map[string][]sample) string {
	var b strings.Builder
	b.WriteString("## Where the time goes (perf)\n\n")
	fmt.Fprintf(&b, "Measured with %s (`go run ./bench -budget`), on dynamic-proxy and its peers in the same run, after the rounds. ", versionOf("perf", "--version"))
	b.WriteString("Each scenario runs twice more per proxy, on every thread and worker process of the proxy (`-p PIDS`): ")
	b.WriteString("first under `perf trace -s`, only to learn which system calls the proxy makes; then under ")
	b.WriteString("`perf stat -e task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_NAME…` with the tracepoint of each call perf trace saw. ")
	b.WriteString("Every figure below is from the perf stat window (counted in the kernel), divided by the units of work done in it: ")
	b.WriteString("perf trace copies every call to user space and slows the proxy, which then batches more per call (recvmmsg, epoll_wait), so its own counts are not the proxy's unperturbed ones. ")
	b.WriteString("`unnamed` is the calls perf stat counted that are none of those perf trace saw. ")
	b.WriteString("This VM exposes no hardware counters (`cycles:u` and `cycles:k` are not supported), so the user/kernel split is that of ")
	b.WriteString("`/proc/PID/stat` utime and stime over the perf stat window, applied to perf's task-clock. ")
	b.WriteString("Kernel time is what ran in the proxy's threads: on loopback a send also runs the receiving socket's side of the ")
	b.WriteString("TCP/UDP stack, so part of it is the peer's delivery, and the same holds for every proxy — it is the floor a user-space proxy cannot go below ")
	b.WriteString("with these system calls.\n\n")
	var scs []string
	seen := map[string]bool{}
	for _, x := range bs {
		if !seen[x.scenario] {
			seen[x.scenario] = true
			scs = append(scs, x.scenario)
		}
	}
	for _, sc := range scs {
		unit := budgetUnits[sc]
		fmt.Fprintf(&b, "### Per %s (%s)\n\n", unit, sc)
		fmt.Fprintf(&b, "| target | CPU µs/%s | user µs | kernel µs | system calls | context switches | system calls by name |\n|---|---|---|---|---|---|---|\n", unit)
		for _, x := range bs {
			if x.scenario != sc {
				continue
			}
			if x.err != "" {
				fmt.Fprintf(&b, "| %s | error: %s |\n", x.target, strings.ReplaceAll(x.err, "|", "/"))
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", x.target, num(x.cpuUS), num(x.cpuUS*x.userFrac), num(x.cpuUS*(1-x.userFrac)),
				num(x.syscalls), num(x.ctxSwitch), topSyscalls(x.byName, 8))
		}
		b.WriteString("\nWhat perf itself costs, in proxy CPU µs per " + unit + " from `/proc/PID/stat` " +
			"(the rounds have no perf attached), and what perf trace's slowing does to the count of system calls:\n\n")
		b.WriteString("| target | without perf (rounds' median) | under perf stat | under perf trace | system calls: trace ÷ stat | clock ticks behind the user/kernel split |\n|---|---|---|---|---|---|\n")
		for _, x := range bs {
			if x.scenario != sc || x.err != "" {
				continue
			}
			base := "–"
			if st, ok := summarize(results[sc][x.target], "cpu_us_per_op"); ok {
				base = num(st.med)
			}
			ratio := "–"
			if x.syscalls > 0 {
				ratio = fmt.Sprintf("%.2f", x.traceTotal/x.syscalls)
			}
			if x.lost > 0 {
				ratio += fmt.Sprintf(" (perf trace lost %d events)", x.lost)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %d |\n", x.target, base, num(x.statCPUUS), num(x.traceCPUUS), ratio, x.ticks)
		}
		b.WriteString("\n")
	}
	return b.String()
}
