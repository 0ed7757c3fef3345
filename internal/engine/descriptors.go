package engine

import (
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/fdlimit"
)

// processDescriptors is what the process holds besides its listeners,
// event loops, health checks and connections: stdin, stdout and stderr,
// the Go runtime's poller, the metrics and admin listeners and a few of
// their clients, the config watcher, Redis connections, log files.
const processDescriptors = 32

// DescriptorPlan checks cfg's server.max_connections against the
// descriptor limit (RLIMIT_NOFILE) for a proxy running workers event
// loops: start-up, every reload and --validate ask it the same question.
// When the limit cannot give every connection its 2 descriptors on top of
// the fixed ones and the data path's reserve, the plan caps max_connections.
func DescriptorPlan(cfg *config.Config, workers int) fdlimit.Plan {
	limit, err := fdlimit.Limit()
	if err != nil {
		limit = 0
	}
	return fdlimit.NewPlan(cfg.Server.MaxConnections, fixedDescriptors(cfg, workers)+fdlimit.Reserve(limit), limit)
}

// fixedDescriptors estimates what cfg holds open besides its connections
// and the reserve: a socket per TCP listener, a socket, an epoll set and an
// eventfd per UDP listener's event loop, an epoll set and an eventfd per
// TCP event loop, a socket per health-checked address while it is checked.
func fixedDescriptors(cfg *config.Config, workers int) int64 {
	workers = max(workers, 1)
	tcp, udp, checked := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if !r.Enabled {
			continue
		}
		if r.Protocol == "udp" {
			udp[cfg.Listener(r)] = true
		} else {
			tcp[cfg.Listener(r)] = true
		}
		if r.Health.Enabled {
			for _, b := range r.Backends {
				checked[r.Protocol+" "+b.Address] = true
			}
		}
	}
	n := processDescriptors + len(tcp) + 3*len(udp)*min(workers, 16) + len(checked)
	if len(tcp) > 0 {
		n += 2 * workers
	}
	return int64(n)
}
