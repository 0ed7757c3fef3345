package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// diffConfig has rule web on webPort (backends a, b), rule db on dbPort
// (backend d of weight dbWeight) and, with api, rule api on apiPort.
func diffConfig(adminPort, webPort, dbPort, apiPort, dbWeight int, a, b, d *EchoServer, api bool) string {
	s := fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[admin]
bind = "127.0.0.1:%d"
[health_check]
enabled = false
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
[[rules]]
name = "db"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "d"
address = %q
weight = %d
`, webPort, adminPort, a.Addr, b.Addr, dbPort, d.Addr, dbWeight)
	if api {
		s += fmt.Sprintf(`[[rules]]
name = "api"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "x"
address = %q
`, apiPort, a.Addr)
	}
	return s
}

// TestValidateDiff: --validate --diff asks the running instance what a
// config would change — from the plan the engine would apply — and prints
// it with the open connections each change touches; nothing changes. The
// new config re-weights one backend, adds a rule and moves a listener.
func TestValidateDiff(t *testing.T) {
	a, b, d := StartEcho(t, "A"), StartEcho(t, "B"), StartEcho(t, "D")
	adminPort, webPort, dbPort, apiPort, newWebPort := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	first := harness.WriteConfig(t, diffConfig(adminPort, webPort, dbPort, apiPort, 1, a, b, d, false))
	p := Start(t, first)
	// Three connections held open on web, one on db.
	for _, port := range []int{webPort, webPort, webPort, dbPort} {
		c := dialT(t, fmt.Sprintf("127.0.0.1:%d", port))
		readLine(t, bufio.NewReader(c))
	}
	next := harness.WriteConfig(t, diffConfig(adminPort, newWebPort, dbPort, apiPort, 5, a, b, d, true))
	out, errOut, code := Run(t, "--validate", "--diff", "-c", next)
	if code != 0 {
		t.Fatalf("exit %d:\n%s%s", code, out, errOut)
	}
	plan := out[strings.Index(out, "plan against"):]
	for _, want := range []string{
		fmt.Sprintf("plan against the running instance at 127.0.0.1:%d (config version 1):", adminPort),
		"  listeners opened: ",
		fmt.Sprintf("  listeners closed: tcp 127.0.0.1:%d (3 open)\n", webPort),
		"  rules added: api\n",
		"  rules changed: db (1 open)\n", // web moves with tcp_bind; its own settings stay
		"  backends added: api/x\n",
		"  backends re-weighted: db/d (1 open)\n",
	} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	for _, port := range []int{newWebPort, apiPort} {
		if !strings.Contains(plan, fmt.Sprintf("tcp 127.0.0.1:%d", port)) {
			t.Errorf("plan does not open tcp 127.0.0.1:%d:\n%s", port, plan)
		}
	}
	// Nothing changed: still version 1, and the same file previews empty.
	same, _, code := Run(t, "--validate", "--diff", "-c", first)
	if code != 0 || !strings.Contains(same, "(config version 1):\n  no change\n") {
		t.Errorf("the running file's own plan (exit %d):\n%s", code, same)
	}
	// The admin API's dry run of the file on disk says the same.
	resp, err := http.Post(p.AdminURL()+"/api/v1/reload?dry_run=true", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 200 || body["status"] != "plan" || body["changes"] != "rules +0 -0 ~0; backends +0 -0; listeners +0 -0" {
		t.Errorf("dry run of the file: %d %v", resp.StatusCode, body)
	}
	// An invalid config is refused before anything is asked.
	bad := harness.WriteConfig(t, strings.Replace(diffConfig(adminPort, webPort, dbPort, apiPort, 1, a, b, d, false), `name = "db"`, `name = "db"`+"\nrouter = \"nope\"", 1))
	if _, errOut, code := Run(t, "--validate", "--diff", "-c", bad); code != 1 || !strings.Contains(errOut, "nope") {
		t.Errorf("an invalid config: exit %d, stderr:\n%s", code, errOut)
	}
	// No instance to ask: a clear error.
	if _, errOut, code := Run(t, "--validate", "--diff", "--admin", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)), "-c", next); code != 1 || !strings.Contains(errOut, "cannot ask the running instance") {
		t.Errorf("no instance: exit %d, stderr:\n%s", code, errOut)
	}
	if _, errOut, code := Run(t, "--diff", "-c", next); code != 2 || !strings.Contains(errOut, "--diff and --admin go with --validate") {
		t.Errorf("--diff alone: exit %d, stderr:\n%s", code, errOut)
	}
	if p.Count("config reloaded") != 0 {
		t.Error("a preview reloaded the config")
	}
}
