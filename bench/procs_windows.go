//go:build windows

package main

import "os/exec"

// ownGroup does nothing on Windows: there is no process group to signal.
func ownGroup(*exec.Cmd) {}

// stop kills the process (Windows has no SIGTERM to send first).
func (p *proc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Kill()
}
