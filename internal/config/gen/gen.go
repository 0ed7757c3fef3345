// Package gen writes large, valid dynamic-proxy configs for load benchmarks
// and tests (tools/genconfig, internal/config's BenchmarkLoad).
package gen

import (
	"fmt"
	"io"
)

// Options shape a generated config.
type Options struct {
	Rules       int    // number of rules
	Kind        string // "port": a port matcher per rule; "sni": SNI matchers, all on tcp_bind
	BasePort    int    // port of rule 0's port matcher (Kind "port")
	BackendPort int    // backend ports start here
	Health      bool   // leave active health checks on
	TCPBind     string // server.tcp_bind
	Admin       string // admin.bind; "" turns the admin API off
	Metrics     string // metrics.bind; "" turns metrics off
}

// Write writes the config. Rule i is named "rule-i" and has backend "a" and,
// for every odd i, a second backend "b": on 127.0.0.1 and 127.0.0.2 at port
// BackendPort + i%20000.
func Write(w io.Writer, o Options) error {
	if o.Kind != "port" && o.Kind != "sni" {
		return fmt.Errorf("kind must be port or sni, got %q", o.Kind)
	}
	if o.Kind == "port" && (o.BasePort < 1 || o.BasePort+o.Rules-1 > 65535) {
		return fmt.Errorf("%d port rules from port %d do not fit in 1-65535", o.Rules, o.BasePort)
	}
	if o.BackendPort < 1 || o.BackendPort+min(o.Rules, 20000)-1 > 65535 {
		return fmt.Errorf("backend ports from %d do not fit in 1-65535", o.BackendPort)
	}
	if o.TCPBind == "" {
		o.TCPBind = "127.0.0.1:18080"
	}
	fmt.Fprintf(w, "# generated: %d %s rules\n[server]\ntcp_bind = %q\nudp_bind = \"127.0.0.1:0\"\nwatch_config = false\n\n", o.Rules, o.Kind, o.TCPBind)
	fmt.Fprintf(w, "[health_check]\nenabled = %v\n\n", o.Health)
	if o.Metrics == "" {
		fmt.Fprint(w, "[metrics]\nenabled = false\n\n")
	} else {
		fmt.Fprintf(w, "[metrics]\nenabled = true\nbind = %q\n\n", o.Metrics)
	}
	fmt.Fprintf(w, "[admin]\nbind = %q\n", o.Admin)
	for i := 0; i < o.Rules; i++ {
		fmt.Fprintf(w, "\n[[rules]]\nname = \"rule-%d\"\n", i)
		bp := o.BackendPort + i%20000
		fmt.Fprintf(w, "\n[[rules.backends]]\nid = \"a\"\naddress = \"127.0.0.1:%d\"\n", bp)
		if i%2 == 1 {
			fmt.Fprintf(w, "\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.2:%d\"\nweight = 2\n", bp)
		}
		if o.Kind == "port" {
			fmt.Fprintf(w, "\n[rules.matcher]\ntype = \"port\"\nport = %d\n", o.BasePort+i)
		} else {
			fmt.Fprintf(w, "\n[rules.matcher]\ntype = \"sni\"\nnames = [\"r%d.example.com\", \"*.r%d.example.net\"]\n", i, i)
		}
	}
	return nil
}
