package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"

	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/metrics"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/upgrade"
)

// upgrades runs binary upgrades for SIGUSR2 and POST /api/v1/upgrade
// (internal/upgrade): the new process gets the engine's listeners and the
// metrics and admin sockets; once it serves, done receives the handover
// and serve hands over and exits.
type upgrades struct {
	upg  *upgrade.Upgrader
	eng  *engine.Engine
	obs  *observe
	log  *slog.Logger
	done chan *upgrade.Handover // one successful upgrade
}

// run upgrades once; it returns when the new process serves or failed.
func (u *upgrades) run(trigger string) (upgrade.Result, error) {
	u.log.Info("upgrade requested: starting the binary at this one's path", "trigger", trigger, "binary", os.Args[0])
	res, h, err := u.upg.Upgrade(u.listenerFiles)
	if errors.Is(err, upgrade.ErrRunning) {
		u.log.Warn("upgrade refused", "trigger", trigger, "err", err.Error())
		return res, err
	}
	if err != nil {
		u.log.Error("upgrade failed; this process keeps serving", "trigger", trigger, "err", err.Error())
		return res, err
	}
	u.log.Info("upgrade: the new process serves; handing over", "new_pid", res.PID, "new_version", res.Version)
	u.done <- h
	return res, nil
}

// listenerFiles duplicates every listening socket, by key: the engine's
// ("tcp ADDR", "udp ADDR") and the metrics and admin servers'.
func (u *upgrades) listenerFiles() (map[string][]*os.File, error) {
	m := map[string][]*os.File{}
	closeAll := func() {
		for _, fs := range m {
			for _, f := range fs {
				f.Close()
			}
		}
	}
	for key, l := range u.eng.Listeners() {
		fs, err := proxy.ListenerFiles(l)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		m[key] = fs
	}
	for key, ln := range u.obs.lns {
		sc, ok := ln.(syscall.Conn)
		if !ok {
			continue
		}
		f, err := proxy.SocketFile(sc)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		m[key] = []*os.File{f}
	}
	return m, nil
}

// observeKey names the metrics or admin server's socket for a handover.
func observeKey(what, addr string) string { return "http " + what + " " + addr }

// counterParts are this process's counters (metrics on) in packets of at
// most 500 series, for the new process of an upgrade to carry on from.
func (u *upgrades) counterParts() []any {
	if u.obs.metrics == nil {
		return nil
	}
	cs := u.obs.metrics.Carry()
	var parts []any
	for len(cs) > 0 {
		n := min(len(cs), 500)
		parts = append(parts, cs[:n])
		cs = cs[n:]
	}
	return parts
}

// addCounters adds one packet of the old process's counters to this
// process's and returns how many series it added to.
func (u *upgrades) addCounters(b json.RawMessage) int {
	var cs []metrics.Carried
	if u.obs.metrics == nil || json.Unmarshal(b, &cs) != nil {
		return 0
	}
	return u.obs.metrics.AddCarried(cs)
}
