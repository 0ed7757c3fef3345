package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/admin"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
)

// diff is --validate --diff: it sends the config file to the running
// instance's admin API as a dry-run reload and prints the plan the engine
// would apply, with the open connections each change touches. It exits 1
// when the instance refuses the config or cannot be asked.
func diff(cfg *config.Config, addr string, stdout, stderr io.Writer) int {
	if addr == "" {
		addr = cfg.Admin.Bind
	}
	if addr == "" {
		fmt.Fprintln(stderr, "dynamic-proxy: --diff needs the running instance's admin address: [admin] bind is off; give --admin ADDR")
		return 1
	}
	url := "http://" + addr + "/api/v1/reload?dry_run=true"
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(cfg.Raw))
	if err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy: --diff: %v\n", err)
		return 1
	}
	if cfg.Admin.Token != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.Admin.Token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy: --diff: cannot ask the running instance at %s: %v\n", addr, err)
		return 1
	}
	defer resp.Body.Close()
	var body struct {
		Error         string              `json:"error"`
		ConfigVersion int                 `json:"config_version"`
		Change        *engine.Change      `json:"change"`
		Problems      []admin.ProblemJSON `json:"problems"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&body); err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy: --diff: %s answered %s, not a plan: %v\n", addr, resp.Status, err)
		return 1
	}
	if resp.StatusCode != http.StatusOK || body.Change == nil {
		fmt.Fprintf(stderr, "dynamic-proxy: --diff: the running instance refused the config (%s): %s\n", resp.Status, body.Error)
		for _, p := range body.Problems {
			fmt.Fprintf(stderr, "  %s\n", strings.TrimPrefix(fmt.Sprintf("%s:%d: %s%s", p.File, p.Line, pathPrefix(p.Path), p.Message), ":0: "))
		}
		return 1
	}
	printPlan(stdout, addr, body.ConfigVersion, *body.Change)
	return 0
}

func pathPrefix(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

// printPlan writes a plan one change a line, each with the open
// connections it touches.
func printPlan(w io.Writer, admin string, version int, ch engine.Change) {
	fmt.Fprintf(w, "plan against the running instance at %s (config version %d):\n", admin, version)
	if ch.Empty() {
		fmt.Fprintln(w, "  no change")
		return
	}
	line := func(what, kind string, items []string) {
		if len(items) == 0 {
			return
		}
		parts := make([]string, len(items))
		for i, it := range items {
			parts[i] = it
			if n := ch.Connections[kind+" "+it]; n > 0 {
				parts[i] += fmt.Sprintf(" (%d open)", n)
			}
		}
		fmt.Fprintf(w, "  %s: %s\n", what, strings.Join(parts, ", "))
	}
	line("listeners opened", "listener", ch.ListenersOpened)
	line("listeners closed", "listener", ch.ListenersClosed)
	line("rules added", "rule", ch.RulesAdded)
	line("rules removed", "rule", ch.RulesRemoved)
	line("rules changed", "rule", ch.RulesChanged)
	line("backends added", "backend", ch.BackendsAdded)
	line("backends removed", "backend", ch.BackendsRemoved)
	line("backends re-weighted", "backend", ch.BackendsReweighted)
	line("backends re-checked", "backend", ch.BackendsRechecked)
	if len(ch.RestartNeeded) > 0 {
		keys := append([]string(nil), ch.RestartNeeded...)
		sort.Strings(keys)
		fmt.Fprintf(w, "  needs a restart: %s\n", strings.Join(keys, ", "))
	}
	if ch.DrainingConnections > 0 {
		fmt.Fprintf(w, "  connections that would drain: %d\n", ch.DrainingConnections)
	}
}
