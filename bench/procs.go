package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// proc is a process the harness started; it is stopped by its PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
}

func start(name, logDir string, argv ...string) (*proc, error) {
	return startEnv(name, logDir, nil, argv...)
}

// startEnv is start with env added to the harness's environment.
func startEnv(name, logDir string, env []string, argv ...string) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	ownGroup(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	go func() { cmd.Wait(); f.Close() }()
	return &proc{name: name, cmd: cmd, log: logPath}, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// tree returns pid and all its descendants (nginx workers, for instance).
func tree(root int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

type stat struct {
	ppid       int
	cpuTicks   int64 // utime + stime
	userTicks  int64 // utime
	rssPages   int64
	numThreads int
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:]) // f[0] is field 3 (state)
	atoi := func(k int) int64 { v, _ := strconv.ParseInt(f[k-3], 10, 64); return v }
	return stat{ppid: int(atoi(4)), cpuTicks: atoi(14) + atoi(15), userTicks: atoi(14), numThreads: int(atoi(20)), rssPages: atoi(24)}, nil
}

const clkTck = 100 // USER_HZ on Linux

// userTicks is the user and the user+system clock ticks of root's tree.
func userTicks(root int) (user, total int64) {
	for _, pid := range tree(root) {
		if st, err := readStat(pid); err == nil {
			user += st.userTicks
			total += st.cpuTicks
		}
	}
	return user, total
}

// cpuSeconds is the CPU time (user+system) of root and its descendants.
func cpuSeconds(root int) float64 {
	_, t := userTicks(root)
	return float64(t) / clkTck
}

// rssBytes sums VmRSS over the process tree.
func rssBytes(root int) int64 {
	var total int64
	for _, pid := range tree(root) {
		if st, err := readStat(pid); err == nil {
			total += st.rssPages * int64(os.Getpagesize())
		}
	}
	return total
}

// fdCount counts open descriptors over the process tree.
func fdCount(root int) int {
	n := 0
	for _, pid := range tree(root) {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err == nil {
			n += len(ents)
		}
	}
	return n
}

// slabBytes is the kernel's slab memory (/proc/meminfo Slab).
func slabBytes() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Slab:") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v * 1024
		}
	}
	return 0
}
