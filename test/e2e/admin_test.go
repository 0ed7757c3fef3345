package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// mxAdmin is a client of one proxy's admin API.
type mxAdmin struct {
	t     *testing.T
	base  string // http://127.0.0.1:PORT
	token string
}

func mxAdminOf(t *testing.T, p *harness.Proxy, token string) *mxAdmin {
	return &mxAdmin{t: t, base: p.AdminURL(), token: token}
}

// call sends a request and returns the status and the decoded JSON body.
func (a *mxAdmin) call(method, path, body string) (int, map[string]any) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.base+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	res, err := (&http.Client{Timeout: harness.Deadline}).Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		a.t.Fatalf("%s %s: %s: not JSON: %q", method, path, res.Status, raw)
	}
	return res.StatusCode, m
}

func (a *mxAdmin) must(method, path, body string) map[string]any {
	a.t.Helper()
	code, m := a.call(method, path, body)
	if code != 200 {
		a.t.Fatalf("%s %s: %d %v", method, path, code, m)
	}
	return m
}

// backend returns a backend of the status document.
func (a *mxAdmin) backend(rule, id string) map[string]any {
	a.t.Helper()
	st := a.must("GET", "/api/v1/status", "")
	for _, r := range st["rules"].([]any) {
		rm := r.(map[string]any)
		if rm["name"] != rule {
			continue
		}
		for _, b := range rm["backends"].([]any) {
			if bm := b.(map[string]any); bm["id"] == id {
				return bm
			}
		}
	}
	a.t.Fatalf("no backend %s/%s in the status", rule, id)
	return nil
}

func mxTwoBackends(port int, router string, a, b *EchoServer, extra string) string {
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
%s
[[rules]]
name = "web"
router = %q
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
`, port, extra, router, a.Addr, b.Addr)
}

// mxGreetings opens n connections and counts the backends that greet.
func mxGreetings(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		name, err := harness.Greeting(addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		got[name]++
	}
	return got
}

// TestAdminDrain drains a backend through the API: new connections go to
// the other one while an open connection to it runs on; enable undoes it.
func TestAdminDrain(t *testing.T) {
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, mxTwoBackends(port, "round_robin", ea, eb, "")))
	adm := mxAdminOf(t, p, "")
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	// An open connection to a.
	var open net.Conn
	var r *bufio.Reader
	for open == nil {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(harness.Deadline))
		br := bufio.NewReader(c)
		if name, _ := br.ReadString('\n'); name == "a\n" {
			open, r = c, br
		} else {
			c.Close()
		}
	}
	defer open.Close()

	b := adm.must("POST", "/api/v1/rules/web/backends/a/drain", "")
	if b["draining"] != true || b["id"] != "a" {
		t.Fatalf("drain answered %v", b)
	}
	if got := mxGreetings(t, addr, 10); got["b"] != 10 {
		t.Fatalf("after draining a, new connections went to %v, want all 10 to b", got)
	}
	// The open connection to a still works.
	if _, err := io.WriteString(open, "still here\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || line != "still here\n" {
		t.Fatalf("the open connection to a draining backend broke: %q %v", line, err)
	}
	if st := adm.backend("web", "a"); st["draining"] != true || st["active_connections"] != float64(1) || st["available"] != false {
		t.Errorf("status of the draining backend: %v", st)
	}
	p.WaitLog("admin API: backend changed", "backend=a", "action=drain")

	adm.must("POST", "/api/v1/rules/web/backends/a/enable", "")
	if got := mxGreetings(t, addr, 10); got["a"] != 5 || got["b"] != 5 {
		t.Fatalf("after enable: %v, want 5 and 5", got)
	}
	adm.must("POST", "/api/v1/rules/web/backends/b/disable", "")
	if got := mxGreetings(t, addr, 6); got["a"] != 6 {
		t.Fatalf("after disabling b: %v, want all 6 to a", got)
	}
}

// TestAdminWeight changes a weight through the API: the smooth weighted
// split follows from the next connection, and a reload that leaves the
// backend's entry alone keeps the change.
func TestAdminWeight(t *testing.T) {
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, mxTwoBackends(port, "weighted", ea, eb, ""))
	p := Start(t, cfg)
	adm := mxAdminOf(t, p, "")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if got := mxGreetings(t, addr, 20); got["a"] != 10 || got["b"] != 10 {
		t.Fatalf("weights 1:1 gave %v", got)
	}
	if b := adm.must("PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 3}`); b["weight"] != float64(3) {
		t.Fatalf("weight answered %v", b)
	}
	if got := mxGreetings(t, addr, 40); got["a"] != 30 || got["b"] != 10 {
		t.Fatalf("weights 3:1 gave %v, want 30 and 10", got)
	}
	// A reload that changes nothing of backend a keeps weight 3.
	content, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, cfg, string(content)+"\n[[rules]]\nname = \"extra\"\n[rules.matcher]\ntype = \"port\"\nport = "+fmt.Sprint(harness.FreePort(t))+"\n[[rules.backends]]\nid = \"x\"\naddress = \""+ea.Addr+"\"\n")
	if code, body := adm.call("POST", "/api/v1/reload", ""); code != 200 || body["config_version"] != float64(2) {
		t.Fatalf("reload: %d %v", code, body)
	}
	if b := adm.backend("web", "a"); b["weight"] != float64(3) {
		t.Errorf("an unrelated reload reset the API's weight: %v", b)
	}
	if got := mxGreetings(t, addr, 40); got["a"] != 30 || got["b"] != 10 {
		t.Fatalf("after the reload, weights 3:1 gave %v", got)
	}
}

// TestAdminAuth: with a token every /api/ call needs it; the probes and the
// page do not; a non-loopback admin bind without a token is refused.
func TestAdminAuth(t *testing.T) {
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, mxTwoBackends(port, "round_robin", ea, eb, `
[admin]
bind = "127.0.0.1:0"
token = "e2e-secret"`)))
	good := mxAdminOf(t, p, "e2e-secret")
	for _, tok := range []string{"", "wrong", "e2e-secret2"} {
		bad := mxAdminOf(t, p, tok)
		for _, c := range []struct{ method, path, body string }{
			{"GET", "/api/v1/status", ""},
			{"POST", "/api/v1/rules/web/backends/a/drain", ""},
			{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 5}`},
			{"POST", "/api/v1/reload", ""},
		} {
			if code, body := bad.call(c.method, c.path, c.body); code != 401 || body["error"] == nil {
				t.Errorf("%s %s with token %q: %d %v, want 401", c.method, c.path, tok, code, body)
			}
		}
	}
	if b := good.backend("web", "a"); b["draining"] != false || b["weight"] != float64(1) {
		t.Errorf("unauthorised calls changed the backend: %v", b)
	}
	anon := mxAdminOf(t, p, "")
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := anon.call("GET", path, ""); code != 200 {
			t.Errorf("GET %s: %d %v", path, code, body)
		}
	}
	res, err := http.Get(good.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(page), "dynamic-proxy") {
		t.Errorf("status page: %d", res.StatusCode)
	}

	// Refused at start-up: non-loopback without a token.
	cfg := harness.WriteConfig(t, mxTwoBackends(harness.FreePort(t), "round_robin", ea, eb, fmt.Sprintf(`
[admin]
bind = "0.0.0.0:%d"`, harness.FreePort(t))))
	_, stderr, code := Run(t, "-c", cfg)
	if code != 1 || !strings.Contains(stderr, "admin.bind") || !strings.Contains(stderr, "not a loopback address") || !strings.Contains(stderr, "admin.token") {
		t.Errorf("non-loopback admin without a token: exit %d, stderr:\n%s", code, stderr)
	}
	if _, stderr, code := Run(t, "--validate", "-c", cfg); code != 1 || !strings.Contains(stderr, "admin.bind") {
		t.Errorf("--validate of a non-loopback admin without a token: exit %d\n%s", code, stderr)
	}
}

// TestAdminReload: a broken file comes back as 422 with every problem; a
// good one applies.
func TestAdminReload(t *testing.T) {
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, mxTwoBackends(port, "round_robin", ea, eb, ""))
	p := Start(t, cfg)
	adm := mxAdminOf(t, p, "")
	content, _ := os.ReadFile(cfg)
	broken := strings.Replace(string(content), `id = "b"`, "id = \"b\"\nweight = 0", 1) + "\n[[rules]]\nname = \"web\"\nprotocol = \"sctp\"\n"
	writeAtomic(t, cfg, broken)
	code, body := adm.call("POST", "/api/v1/reload", "")
	if code != 422 {
		t.Fatalf("reload of a broken file: %d %v", code, body)
	}
	problems, _ := body["problems"].([]any)
	paths := map[string]bool{}
	for _, pr := range problems {
		pm := pr.(map[string]any)
		paths[pm["path"].(string)] = true
		if pm["file"] != cfg || pm["line"] == nil || pm["message"] == "" {
			t.Errorf("problem without file, line or message: %v", pm)
		}
	}
	for _, want := range []string{"rules[0].backends[1].weight", "rules[1].name", "rules[1].protocol"} {
		if !paths[want] {
			t.Errorf("no problem reported at %s: %v", want, body)
		}
	}
	p.WaitLog("reload failed", "trigger=api")
	if got := mxGreetings(t, fmt.Sprintf("127.0.0.1:%d", port), 4); got["a"] != 2 || got["b"] != 2 {
		t.Errorf("after a failed reload the old config should serve: %v", got)
	}
	writeAtomic(t, cfg, mxTwoBackends(port, "round_robin", ea, ea, ""))
	code, body = adm.call("POST", "/api/v1/reload", "")
	if code != 200 || body["config_version"] != float64(2) || body["status"] != "reloaded" {
		t.Fatalf("good reload: %d %v", code, body)
	}
	p.WaitLog("config reloaded", "trigger=api")
	if got := mxGreetings(t, fmt.Sprintf("127.0.0.1:%d", port), 4); got["a"] != 4 {
		t.Errorf("after the reload: %v", got)
	}
	if code, body := adm.call("POST", "/api/v1/rules/nope/backends/a/drain", ""); code != 404 {
		t.Errorf("unknown rule: %d %v", code, body)
	}
	if code, body := adm.call("PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": "heavy"}`); code != 400 {
		t.Errorf("malformed weight: %d %v", code, body)
	}
}

// TestAdminReadiness: /readyz is ready once the listeners are bound and
// stops being ready while the proxy drains for shutdown.
func TestAdminReadiness(t *testing.T) {
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, mxTwoBackends(port, "round_robin", ea, eb, "")))
	adm := mxAdminOf(t, p, "")
	if code, body := adm.call("GET", "/readyz", ""); code != 200 || body["status"] != "ready" {
		t.Fatalf("readyz: %d %v", code, body)
	}
	st := adm.must("GET", "/api/v1/status", "")
	if st["ready"] != true || st["config"].(map[string]any)["version"] != float64(1) {
		t.Errorf("status: %v", st)
	}
	ls := st["listeners"].([]any)
	if len(ls) != 1 || ls[0].(map[string]any)["address"] != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Errorf("listeners: %v", ls)
	}
	// Keep a connection open so the drain lasts, then ask to stop.
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bufio.NewReader(c).ReadString('\n')
	p.Signal(syscall.SIGTERM)
	p.WaitLog("shutting down")
	if code, body := adm.call("GET", "/readyz", ""); code != 503 || body["status"] != "not ready" {
		t.Errorf("readyz while draining: %d %v", code, body)
	}
	c.Close()
	if code := p.Wait(); code != 0 {
		t.Errorf("exit code %d", code)
	}
}
