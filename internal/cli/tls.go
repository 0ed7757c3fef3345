package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
)

// printCertificates is --validate's account of TLS: every certificate a
// terminating rule serves, with its names, serial and expiry (those
// expiring within 14 days are also among the warnings), and the rules
// that originate TLS to their backends.
func printCertificates(cfg *config.Config, stdout io.Writer, now time.Time) {
	n := 0
	for i := range cfg.Rules {
		if t := cfg.Rules[i].TLS; t != nil {
			n += len(t.Certs)
		}
	}
	if n == 0 && !originates(cfg) {
		return
	}
	fmt.Fprintf(stdout, "certificates: %d\n", n)
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if r.TLS == nil {
			continue
		}
		for _, c := range r.TLS.Certs {
			def := ""
			if c.Default {
				def = " (default)"
			}
			left := c.NotAfter.Sub(now)
			mark := ""
			if left < config.CertificateExpiryWarning {
				mark = " WARNING: expires soon"
			}
			fmt.Fprintf(stdout, "  %s: %s%s: %s; serial %s; expires %s (in %dd)%s\n", r.Name, c.Cert, def,
				strings.Join(c.Names, ", "), c.Serial, c.NotAfter.UTC().Format(time.RFC3339), int(left.Hours()/24), mark)
		}
	}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		var tlsTo []string
		for j := range r.Backends {
			if o, ok := cfg.BackendTLSFor(r, &r.Backends[j]); ok {
				verify := "system roots"
				switch {
				case o.InsecureSkipVerify:
					verify = "NOT VERIFIED"
				case o.CA != "":
					verify = "ca " + o.CA
				}
				if o.Cert != "" {
					verify += ", client certificate " + o.Cert
				}
				tlsTo = append(tlsTo, r.Backends[j].ID+" ("+verify+")")
			}
		}
		if len(tlsTo) > 0 {
			fmt.Fprintf(stdout, "  %s: TLS to backends %s\n", r.Name, strings.Join(tlsTo, ", "))
		}
	}
}

func originates(cfg *config.Config) bool {
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		for j := range r.Backends {
			if _, ok := cfg.BackendTLSFor(r, &r.Backends[j]); ok {
				return true
			}
		}
	}
	return false
}
