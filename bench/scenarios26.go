package main

// Issue 26: the pinned setup (-pin), and the scenarios that saturate the
// proxy with real clients or measure it at fixed rates.

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
