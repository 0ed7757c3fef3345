package e2e

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestExplain asks the running instance why: the hash router's key, slot
// and backend (the same twice, and where a real connection from that
// client lands, and logs that decision at debug), a drained backend skipped, SNI rules where an earlier
// rule does not match (through the CLI), and an access control deny.
func TestExplain(t *testing.T) {
	ha, hb, hc := StartEcho(t, "ha"), StartEcho(t, "hb"), StartEcho(t, "hc")
	pHash, pSNI, pACL := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[logging]
level = "debug"
explain_sample = 1
[health_check]
enabled = false
[routers.by_ip]
plugin = "hash"
config = { hash_key = "client_ip" }

[[rules]]
name = "hashed"
router = "by_ip"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "ha"
address = %q
[[rules.backends]]
id = "hb"
address = %q
[[rules.backends]]
id = "hc"
address = %q

[[rules]]
name = "other"
[rules.matcher]
all = [ { type = "port", port = %d }, { type = "sni", names = ["other.example.com"] } ]
[[rules.backends]]
id = "o1"
address = %q

[[rules]]
name = "api"
[rules.matcher]
all = [ { type = "port", port = %d }, { type = "sni", names = ["api.example.com", "*.api.example.com"] } ]
[[rules.backends]]
id = "api1"
address = %q

[[rules]]
name = "guarded"
[rules.matcher]
type = "port"
port = %d
[rules.access]
deny = ["127.0.0.66/32"]
[[rules.backends]]
id = "g1"
address = %q
`, pHash, pHash, ha.Addr, hb.Addr, hc.Addr, pSNI, ha.Addr, pSNI, hb.Addr, pACL, hc.Addr))
	p := Start(t, cfg)
	adm := mxAdminOf(t, p, "")
	explain := func(q url.Values) map[string]any {
		t.Helper()
		return adm.must("GET", "/api/v1/explain?"+q.Encode(), "")
	}
	router := func(x map[string]any) map[string]any {
		t.Helper()
		r, ok := x["router"].(map[string]any)
		if !ok {
			t.Fatalf("no router decision: %v", x)
		}
		return r
	}
	client := url.Values{"client": {"127.0.0.7:5555"}, "port": {fmt.Sprint(pHash)}}

	// Hash: the same backend and slot twice (another source port too:
	// the key is the address), and a real connection from 127.0.0.7.
	x1 := explain(client)
	x2 := explain(url.Values{"client": {"127.0.0.7:6001"}, "port": {fmt.Sprint(pHash)}})
	r1, r2 := router(x1), router(x2)
	if h, _ := r1["hash"].(string); h == "" || x1["rule"] != "hashed" || r1["plugin"] != "hash" || r1["hash_key"] != "client_ip" || r1["slot"] == nil {
		t.Fatalf("hash explanation: %v", x1)
	}
	if r1["chosen"] != r2["chosen"] || r1["slot"] != r2["slot"] || r1["hash"] != r2["hash"] {
		t.Fatalf("two explanations differ: %v / %v", r1, r2)
	}
	chosen := r1["chosen"].(string)
	addr := fmt.Sprintf("127.0.0.1:%d", pHash)
	for range 3 {
		if got, err := greetFrom(t, "127.0.0.7", addr); err != nil || got != chosen {
			t.Fatalf("a connection from 127.0.0.7 reached %q (%v), explained %q", got, err, chosen)
		}
	}

	// explain_sample = 1: every real connection logs its decision record.
	p.WaitLog("connection decision", "rule=hashed", "chosen="+chosen, `\"hash_key\":\"client_ip\"`, fmt.Sprintf(`\"slot\":%v`, r1["slot"]))

	// Drained: skipped for its drain, the key goes on along its probes,
	// and a real connection follows the new answer.
	adm.must("POST", "/api/v1/rules/hashed/backends/"+chosen+"/drain", "")
	x3 := explain(client)
	r3 := router(x3)
	next, _ := r3["chosen"].(string)
	if next == "" || next == chosen || r3["slot"] != r1["slot"] {
		t.Fatalf("with %s drained: %v", chosen, r3)
	}
	skipped := ""
	for _, c := range r3["candidates"].([]any) {
		if c := c.(map[string]any); c["id"] == chosen {
			skipped, _ = c["skipped"].(string)
		}
	}
	if skipped != "draining" {
		t.Fatalf("the drained backend %s: skipped %q, want draining (%v)", chosen, skipped, r3["candidates"])
	}
	if probes := r3["probes"].([]any); len(probes) < 2 {
		t.Fatalf("probes %v: the drained backend's slot should be the first of several", probes)
	}
	if got, err := greetFrom(t, "127.0.0.7", addr); err != nil || got != next {
		t.Fatalf("after the drain a connection from 127.0.0.7 reached %q (%v), explained %q", got, err, next)
	}

	// SNI, through the CLI: the earlier rule's sni does not match.
	adminAddr := strings.TrimPrefix(adm.base, "http://")
	out, errOut, code := Run(t, "explain", "--client", "127.0.0.9:40000", "--port", fmt.Sprint(pSNI), "--sni", "API.example.com", "--admin", adminAddr)
	if code != 0 {
		t.Fatalf("explain exited %d: %s", code, errOut)
	}
	for _, want := range []string{
		fmt.Sprintf("listener: tcp 127.0.0.1:%d", pSNI),
		`other no match all: sni "api.example.com" not in [other.example.com]`,
		`api MATCH all: sni "api.example.com" in [*.api.example.com api.example.com]`,
		"access: allow (no access control on the rule)",
		"router: round_robin (plugin round_robin)",
		"* api1 " + hb.Addr + " weight 1, active 0, tier 0; usable",
		`outcome: rule "api", backend api1 (` + hb.Addr + ")",
	} {
		if !strings.Contains(squeeze(out), want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	if _, errOut, code := Run(t, "explain", "--client", "127.0.0.9:1", "--port", "1", "--admin", adminAddr); code != 1 || !strings.Contains(errOut, "no tcp listener on port 1") {
		t.Errorf("an unknown port: exit %d, %q", code, errOut)
	}

	// Access control: denied by the deny list; a real connection from
	// there reaches nothing.
	x4 := explain(url.Values{"client": {"127.0.0.66:1234"}, "port": {fmt.Sprint(pACL)}})
	acc, _ := x4["access"].(map[string]any)
	if x4["rule"] != "guarded" || acc["decision"] != "deny" || acc["by"] != "deny 127.0.0.66/32" || x4["router"] != nil {
		t.Fatalf("deny: %v", x4)
	}
	if got, err := greetFrom(t, "127.0.0.66", fmt.Sprintf("127.0.0.1:%d", pACL)); err == nil {
		t.Fatalf("a denied client was served by %q", got)
	}
	if x := explain(url.Values{"client": {"127.0.0.67:1234"}, "port": {fmt.Sprint(pACL)}}); router(x)["chosen"] != "g1" {
		t.Fatalf("another client: %v", x)
	}
	if code, body := adm.call("GET", "/api/v1/explain?client=nonsense&port=1", ""); code != 400 || !strings.Contains(fmt.Sprint(body["error"]), "client: want IP:PORT") {
		t.Errorf("a bad client: %d %v", code, body)
	}
}

// squeeze collapses the runs of spaces of every line of s into one.
func squeeze(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}
