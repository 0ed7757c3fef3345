// Command genconfig writes a large dynamic-proxy config for load benchmarks
// (docs/BENCHMARKS.md, "Config loading"): n rules, each with a port matcher
// (-kind port: one listener per rule) or an SNI matcher (-kind sni: every
// rule on tcp_bind), and 1 or 2 backends on IP literals (127.0.0.1, 127.0.0.2) so
// nothing is resolved.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config/gen"
)

func main() {
	var o gen.Options
	out := flag.String("o", "", "output file (default stdout)")
	flag.IntVar(&o.Rules, "rules", 1000, "number of rules")
	flag.StringVar(&o.Kind, "kind", "port", "matcher of every rule: port or sni")
	flag.IntVar(&o.BasePort, "base-port", 10000, "port of the first port rule (-kind port)")
	flag.IntVar(&o.BackendPort, "backend-port", 40000, "backend ports start here")
	flag.BoolVar(&o.Health, "health", false, "leave active health checks on (default: [health_check] enabled = false)")
	flag.StringVar(&o.TCPBind, "tcp-bind", "127.0.0.1:18080", "server.tcp_bind")
	flag.StringVar(&o.Admin, "admin", "", "admin.bind (default \"\": off)")
	flag.StringVar(&o.Metrics, "metrics", "", "metrics.bind (default \"\": metrics off)")
	flag.Parse()
	w := os.Stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			fmt.Fprintln(os.Stderr, "genconfig:", err)
			os.Exit(1)
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	if err := gen.Write(bw, o); err != nil {
		fmt.Fprintln(os.Stderr, "genconfig:", err)
		os.Exit(2)
	}
	if err := bw.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "genconfig:", err)
		os.Exit(1)
	}
}
