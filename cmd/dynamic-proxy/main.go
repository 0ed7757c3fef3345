// Command dynamic-proxy is an L4 (TCP and UDP) proxy and load balancer.
// All logic lives in internal/cli; this file only hands it the process.
package main

import (
	"os"

	"github.com/dynamic-proxy/dynamic-proxy/internal/cli"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], os.Stdout, os.Stderr))
}
