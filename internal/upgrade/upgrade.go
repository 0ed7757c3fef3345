// Package upgrade replaces the running binary without dropping anything: on
// SIGUSR2 or POST /api/v1/upgrade the process starts the binary at its own
// path with the same arguments (cloudflare/tableflip: the start, the
// readiness pipe, the timeout, one upgrade at a time), hands it every
// listening socket over a Unix socket with SCM_RIGHTS, and once it reports
// ready stops accepting and exits when its connections have ended.
//
// The listeners go over our own socket rather than tableflip's Fds:
// tableflip keeps a duplicate of every socket it was given until the
// process exits or upgrades and cannot forget one, so a listener a reload
// closed would keep its port bound and accepting into a backlog nobody
// reads; here the set is read when the new process asks for it. The same
// socket carries the open connections (docs/architecture.md, "An upgrade
// hands over listeners, then connections").
//
// It is Linux only (upgrade_linux.go); elsewhere an upgrade is refused with
// a message saying so (upgrade_other.go).
package upgrade

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
)

// EnvSocket names the environment variable through which the old process
// tells the new one the address of its handover socket.
const EnvSocket = "DYNAMIC_PROXY_UPGRADE_SOCKET"

// ErrRunning refuses an upgrade while another one runs (in this process,
// or in the old process this one replaces, which has not exited yet).
var ErrRunning = errors.New("an upgrade is already running")

// Result is what a successful upgrade reports: the new process.
type Result struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
}

// Notify sends state lines to systemd (sd_notify(3)): "READY=1",
// "MAINPID=…". Without $NOTIFY_SOCKET (not run by systemd as
// Type=notify) it does nothing.
func Notify(lines ...string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(strings.Join(lines, "\n") + "\n"))
	return err
}

// readyLines are what a process that serves tells systemd: its PID, so
// that systemd follows the new process of an upgrade (the unit sets
// NotifyAccess=all), and READY=1.
func readyLines() []string {
	return []string{"MAINPID=" + strconv.Itoa(os.Getpid()), "READY=1"}
}
