package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/discovery"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
)

// discoveryReport is --validate's account of the rules' DNS names: each
// is asked once, as the running proxy would, and its answer shown as the
// backends it would give. A name that does not answer is a warning, not
// an error: the proxy starts without its backends and keeps asking.
func discoveryReport(cfg *config.Config, stdout, stderr io.Writer) {
	n := 0
	for i := range cfg.Rules {
		n += len(cfg.Rules[i].Discovery)
	}
	if n == 0 {
		return
	}
	fmt.Fprintf(stdout, "discovery: %d\n", n)
	sys := ""
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		for _, d := range r.Discovery {
			server := d.ResolverAddr()
			if server == "" {
				server = cfg.Server.ResolverAddr()
			}
			if server == "" {
				if sys == "" {
					sys = discovery.SystemResolver()
				}
				server = sys
			}
			q := discovery.Query{Type: d.Type, Host: d.Host(), Port: d.Port(), Server: server, Timeout: d.Timeout.D()}
			ctx, cancel := context.WithTimeout(context.Background(), 4*q.Timeout)
			a, err := discovery.Lookup(ctx, q)
			cancel()
			head := fmt.Sprintf("  %s: %s %s @%s", r.Name, d.Type, d.Name, server)
			if err != nil {
				fmt.Fprintf(stdout, "%s: no answer now\n", head)
				fmt.Fprintf(stderr, "warning: rule %q: discovery %s %s: %v (the proxy keeps asking; the name gives no backend until it answers)\n", r.Name, d.Type, d.Name, err)
				continue
			}
			b := discovery.Bounds{MinTTL: d.MinTTL.D(), MaxTTL: d.MaxTTL.D()}
			fmt.Fprintf(stdout, "%s: %s, %d backends, ttl %s, refresh every %s\n", head, a.Rcode, len(a.Endpoints), a.TTL, b.Refresh(a.TTL))
			for _, ep := range a.Endpoints {
				bc := engine.DiscoveredBackend(d, ep)
				line := fmt.Sprintf("    %s %s weight %d", bc.ID, bc.Address, bc.Weight)
				if t := bc.Tier(); t == config.BackupTier {
					line += " backup"
				} else if t != 0 {
					line += fmt.Sprintf(" tier %d", t)
				}
				fmt.Fprintln(stdout, strings.TrimRight(line, " "))
			}
			if a.Empty() {
				fmt.Fprintf(stderr, "warning: rule %q: discovery %s %s: %s, no records: the name gives no backend now\n", r.Name, d.Type, d.Name, a.Rcode)
			}
		}
	}
}
