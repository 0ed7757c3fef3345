package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

const explainUsage = `dynamic-proxy explain: ask the running instance why a connection would go
where it goes (its admin API, GET /api/v1/explain). Nothing changes: no
access slot or token is taken and no rotation advances.

Usage:
  dynamic-proxy explain --client IP:PORT --port N [flags]

Flags:
      --client IP:PORT    the client's address (required)
      --port N            the local port it connects to (required)
      --protocol P        tcp (default) or udp
      --local IP          the address it connects to, when several listeners share the port
      --sni NAME          the TLS server name it sends
      --alpn P1,P2        the ALPN protocols it offers
      --host NAME         the HTTP Host header it sends
      --admin ADDR        the running instance's admin address (default: the config's [admin] bind)
  -c, --config FILE       config file for [admin] bind and token (default "config.toml")
      --json              print the answer as JSON
`

// runExplain is "dynamic-proxy explain ...".
func runExplain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dynamic-proxy explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	var client, port, protocol, local, sni, alpn, host, admin, cfgPath string
	var asJSON bool
	fs.StringVar(&client, "client", "", "")
	fs.StringVar(&port, "port", "", "")
	fs.StringVar(&protocol, "protocol", "tcp", "")
	fs.StringVar(&local, "local", "", "")
	fs.StringVar(&sni, "sni", "", "")
	fs.StringVar(&alpn, "alpn", "", "")
	fs.StringVar(&host, "host", "", "")
	fs.StringVar(&admin, "admin", "", "")
	fs.StringVar(&cfgPath, "c", "config.toml", "")
	fs.StringVar(&cfgPath, "config", "config.toml", "")
	fs.BoolVar(&asJSON, "json", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, explainUsage)
			return 0
		}
		fmt.Fprintln(stderr, "dynamic-proxy explain: see --help")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dynamic-proxy explain: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	if client == "" || port == "" {
		fmt.Fprintln(stderr, "dynamic-proxy explain: --client and --port are required (see --help)")
		return 2
	}
	if _, err := netip.ParseAddrPort(client); err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy explain: --client %q: want IP:PORT, e.g. 192.0.2.7:5555 or [2001:db8::7]:5555\n", client)
		return 2
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		fmt.Fprintf(stderr, "dynamic-proxy explain: --port %q: want a port from 1 to 65535\n", port)
		return 2
	}
	if protocol != "tcp" && protocol != "udp" {
		fmt.Fprintf(stderr, "dynamic-proxy explain: --protocol %q: want tcp or udp\n", protocol)
		return 2
	}
	token := ""
	if admin == "" || fileExists(cfgPath) {
		cfg, err := config.Load(cfgPath)
		switch {
		case err == nil:
			token = cfg.Admin.Token
			if admin == "" {
				admin = cfg.Admin.Bind
			}
		case admin == "":
			fmt.Fprintf(stderr, "dynamic-proxy explain: no --admin, and the config's [admin] bind is unknown: %v\n", err)
			return 1
		}
	}
	if admin == "" {
		fmt.Fprintln(stderr, "dynamic-proxy explain: [admin] bind is off; give --admin ADDR")
		return 1
	}
	q := url.Values{"client": {client}, "port": {port}, "protocol": {protocol}}
	for k, v := range map[string]string{"local": local, "sni": sni, "alpn": alpn, "host": host} {
		if v != "" {
			q.Set(k, v)
		}
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+admin+"/api/v1/explain?"+q.Encode(), nil)
	if err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy explain: %v\n", err)
		return 1
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy explain: cannot ask the running instance at %s: %v\n", admin, err)
		return 1
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy explain: %s: %v\n", admin, err)
		return 1
	}
	var body struct {
		Error    string `json:"error"`
		Protocol string `json:"protocol"`
		proxy.Explanation
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy explain: %s answered %s, not an explanation: %v\n", admin, resp.Status, err)
		return 1
	}
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "dynamic-proxy explain: %s: %s\n", resp.Status, body.Error)
		return 1
	}
	if asJSON {
		stdout.Write(raw)
		return 0
	}
	printExplanation(stdout, body.Protocol, &body.Explanation)
	return 0
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// printExplanation writes the decision record for people.
func printExplanation(w io.Writer, protocol string, x *proxy.Explanation) {
	fmt.Fprintf(w, "listener: %s %s\n", protocol, x.Listener)
	fmt.Fprintln(w, "rules, in order:")
	for _, r := range x.Rules {
		mark := "no match"
		switch {
		case r.Shadowed:
			mark = "matches, shadowed"
		case r.Matched:
			mark = "MATCH"
		}
		fmt.Fprintf(w, "  %-20s %-17s %s\n", r.Name, mark, r.Why)
	}
	if a := x.Access; a != nil {
		fmt.Fprintf(w, "access: %s (%s)\n", a.Decision, a.By)
	}
	if rd := x.Router; rd != nil {
		fmt.Fprintf(w, "router: %s (plugin %s)\n", rd.Router, rd.Plugin)
		fmt.Fprintf(w, "  %s\n", rd.Reason)
		if rd.Slot != nil {
			fmt.Fprintf(w, "  hash_key %s, hash %d, slot %d of %d, probes %v\n", rd.HashKey, rd.Hash, *rd.Slot, rd.TableSize, rd.Probes)
		}
		if rd.Tier != nil {
			fmt.Fprintf(w, "  tier %d (tiers %v)\n", *rd.Tier, rd.Tiers)
		}
		fmt.Fprintln(w, "  backends considered:")
		for _, c := range rd.Candidates {
			var parts []string
			parts = append(parts, fmt.Sprintf("weight %d", c.Weight), fmt.Sprintf("active %d", c.Active))
			if c.MaxConnections > 0 {
				parts = append(parts, fmt.Sprintf("max %d", c.MaxConnections))
			}
			if c.Current != nil {
				parts = append(parts, fmt.Sprintf("current weight %d", *c.Current))
			}
			parts = append(parts, fmt.Sprintf("tier %d", c.Tier))
			state := "usable"
			if c.Skipped != "" {
				state = "skipped: " + c.Skipped
			}
			chosen := " "
			if c.ID == rd.Chosen {
				chosen = "*"
			}
			fmt.Fprintf(w, "  %s %-16s %-22s %s; %s\n", chosen, c.ID, c.Address, strings.Join(parts, ", "), state)
		}
	}
	fmt.Fprintf(w, "outcome: %s\n", x.Outcome)
}
