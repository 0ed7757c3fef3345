package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/health"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
)

// Check runs every check of a loaded config that applying it runs, short of
// binding its listeners: backend host names resolve, and each backend's
// health check compiles. Start-up, every reload and --validate go through
// it, so "--validate exits 0" means "this config starts and reloads" (a
// port another process holds is the one thing only binding can tell).
func Check(cfg *config.Config) error {
	seen := map[string]bool{}
	var errs []error
	rsv := lookupWith(cfg)
	for _, r := range cfg.Rules {
		if !r.Enabled {
			continue // binds and resolves nothing
		}
		for _, b := range r.Backends {
			if _, err := health.Compile(r.Protocol, b.Address, r.Health); err != nil {
				errs = append(errs, fmt.Errorf("rule %q: backend %q: %w", r.Name, b.ID, err))
			}
			host, _, _ := net.SplitHostPort(b.Address)
			if seen[host] || net.ParseIP(host) != nil {
				continue
			}
			seen[host] = true
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := rsv.LookupHost(ctx, host)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("rule %q: backend %q: host %q does not resolve: %w", r.Name, b.ID, host, unwrapOp(err)))
			}
		}
	}
	return errors.Join(errs...)
}

// lookupWith is the resolver cfg names (server.resolver), or the system's.
func lookupWith(cfg *config.Config) *net.Resolver {
	if addr := cfg.Server.ResolverAddr(); addr != "" {
		return resolve.ServerResolver(addr)
	}
	return net.DefaultResolver
}
