package engine

import (
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/fdlimit"
)

// DescriptorPlan checks cfg's server.max_connections against the
// descriptor limit (RLIMIT_NOFILE) for a proxy running workers event
// loops: start-up, every reload and --validate ask it the same question.
// When the limit cannot give every connection its 2 descriptors on top of
// the ones the process holds anyway and the data path's reserve, the plan
// caps max_connections at what the limit can give.
//
// The fixed descriptors counted are a lower bound (what the config
// certainly opens), so the cap is the most connections the limit could
// ever hold: the data path's budget (proxy/fdbudget.go), which counts what
// is actually open, stops accepting before the cap would reset anyone.
func DescriptorPlan(cfg *config.Config, workers int) fdlimit.Plan {
	limit, err := fdlimit.Limit()
	if err != nil {
		limit = 0
	}
	return fdlimit.NewPlan(cfg.Server.MaxConnections, fixedDescriptors(cfg, workers)+fdlimit.Reserve(limit), limit)
}

// fixedDescriptors counts what cfg certainly holds open besides its
// connections and the reserve: stdin, stdout, stderr and the Go runtime's
// poller (5), the metrics and admin listeners, the config watcher, a
// socket per TCP listener, an epoll set and an eventfd per TCP event loop,
// and a socket, an epoll set and an eventfd per UDP listener's event loop.
func fixedDescriptors(cfg *config.Config, workers int) int64 {
	workers = max(workers, 1)
	n := 5
	if cfg.Metrics.Enabled {
		n++
	}
	if cfg.Admin.Bind != "" {
		n++
	}
	if cfg.Server.WatchConfig {
		n++
	}
	tcp, udp := map[string]bool{}, map[string]bool{}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if !r.Enabled {
			continue // binds nothing
		}
		if r.Protocol == "udp" {
			udp[cfg.Listener(r)] = true
		} else {
			tcp[cfg.Listener(r)] = true
		}
	}
	n += len(tcp) + 3*len(udp)*min(workers, 16)
	if len(tcp) > 0 {
		n += 2 * workers
	}
	return int64(n)
}
