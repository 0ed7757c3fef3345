package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/reload"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is a running engine with two rules, its admin handler on an
// httptest server, and the config file a reload reads.
type fixture struct {
	t      *testing.T
	eng    *engine.Engine
	srv    *httptest.Server
	path   string
	ready  atomic.Bool
	client *http.Client
}

func configText(token string, extra string) string {
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
[health_check]
enabled = false
[admin]
token = %q
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = "127.0.0.1:1"
weight = 3
[[rules.backends]]
id = "b"
address = "127.0.0.1:2"
[[rules]]
name = "off"
enabled = false
[[rules.backends]]
id = "x"
address = "127.0.0.1:3"
%s`, token, extra)
}

func newFixture(t *testing.T, token string, pprof bool) *fixture {
	t.Helper()
	return newFleetFixture(t, token, pprof, nil)
}

// newFleetFixture is newFixture with fleet as the handler's Fleet.
func newFleetFixture(t *testing.T, token string, pprof bool, fleet Fleet) *fixture {
	t.Helper()
	f := &fixture{t: t, path: filepath.Join(t.TempDir(), "config.toml"), client: &http.Client{Timeout: 20 * time.Second}}
	if err := os.WriteFile(f.path, []byte(configText(token, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(f.path)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	f.eng = engine.New(log)
	if _, err := f.eng.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	rl := &reload.Reloader{Engine: f.eng, Path: f.path, Log: log}
	rl.Seed(cfg.Raw)
	h := New(Options{Engine: f.eng, Ready: f.ready.Load, Pprof: pprof, Log: log, Fleet: fleet,
		Reload: func() (engine.Change, error) { return rl.Reload("api", false) }})
	f.srv = httptest.NewServer(h)
	t.Cleanup(func() {
		f.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		f.eng.Shutdown(ctx)
	})
	return f
}

// do sends a request and decodes the JSON answer into a map.
func (f *fixture) do(method, path, body string, hdr ...string) (int, map[string]any, http.Header) {
	f.t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := f.client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var m map[string]any
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &m); err != nil {
			f.t.Fatalf("%s %s: bad JSON %q: %v", method, path, raw, err)
		}
	}
	return res.StatusCode, m, res.Header
}

func (f *fixture) status() StatusJSON {
	f.t.Helper()
	res, err := f.client.Get(f.srv.URL + "/api/v1/status")
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	var st StatusJSON
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		f.t.Fatal(err)
	}
	return st
}

func TestStatus(t *testing.T) {
	f := newFixture(t, "", false)
	f.ready.Store(true)
	st := f.status()
	if st.Config.Version != 1 || st.Config.File != f.path || !st.Ready || st.Version == "" || st.UptimeSeconds < 0 {
		t.Errorf("header fields wrong: %+v", st)
	}
	if len(st.Rules) != 2 || st.Rules[0].Name != "web" || st.Rules[1].Name != "off" {
		t.Fatalf("rules: %+v", st.Rules)
	}
	web, off := st.Rules[0], st.Rules[1]
	if !web.Enabled || web.Protocol != "tcp" || web.Router != "round_robin" || web.Plugin != "round_robin" || web.Listener == "" {
		t.Errorf("web rule: %+v", web)
	}
	if off.Enabled || len(off.Backends) != 0 || off.Listener != "" {
		t.Errorf("disabled rule: %+v", off)
	}
	a := web.Backends[0]
	if a.ID != "a" || a.Address != "127.0.0.1:1" || a.Weight != 3 || !a.Enabled || !a.Healthy || a.Draining || !a.Available {
		t.Errorf("backend a: %+v", a)
	}
	if len(st.Listeners) != 1 || st.Listeners[0].Address != web.Listener || st.Listeners[0].Rules[0] != "web" {
		t.Errorf("listeners: %+v", st.Listeners)
	}
}

func TestBackendActions(t *testing.T) {
	f := newFixture(t, "", false)
	backendA := func() BackendJSON { return f.status().Rules[0].Backends[0] }

	code, body, _ := f.do("POST", "/api/v1/rules/web/backends/a/drain", "")
	if code != 200 || body["draining"] != true || body["available"] != false {
		t.Fatalf("drain: %d %v", code, body)
	}
	if b := backendA(); !b.Draining || b.Available {
		t.Errorf("after drain: %+v", b)
	}
	code, body, _ = f.do("POST", "/api/v1/rules/web/backends/a/enable", "")
	if code != 200 || body["draining"] != false || body["enabled"] != true {
		t.Fatalf("enable: %d %v", code, body)
	}
	code, body, _ = f.do("POST", "/api/v1/rules/web/backends/a/disable", "")
	if code != 200 || body["enabled"] != false {
		t.Fatalf("disable: %d %v", code, body)
	}
	if b := backendA(); b.Enabled || b.Available {
		t.Errorf("after disable: %+v", b)
	}
	f.do("POST", "/api/v1/rules/web/backends/a/enable", "")
	code, body, _ = f.do("PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 42}`)
	if code != 200 || body["weight"] != float64(42) {
		t.Fatalf("weight: %d %v", code, body)
	}
	if b := backendA(); b.Weight != 42 || !b.Available {
		t.Errorf("after weight: %+v", b)
	}
}

func TestErrors(t *testing.T) {
	f := newFixture(t, "", false)
	big := `{"weight": 1, "pad": "` + strings.Repeat("x", MaxBodyBytes) + `"}`
	for _, c := range []struct {
		method, path, body string
		code               int
		msg                string
	}{
		{"POST", "/api/v1/rules/nope/backends/a/drain", "", 404, `no such rule "nope"`},
		{"POST", "/api/v1/rules/web/backends/zz/drain", "", 404, `rule "web" has no backend "zz"`},
		{"POST", "/api/v1/rules/off/backends/x/drain", "", 404, `rule "off" is disabled`},
		{"PUT", "/api/v1/rules/nope/backends/a/weight", `{"weight": 2}`, 404, "no such rule"},
		{"POST", "/api/v1/rules/web/backends/a/explode", "", 404, "unknown action"},
		{"GET", "/api/v1/rules/web/backends/a/drain", "", 405, "use POST"},
		{"POST", "/api/v1/rules/web/backends/a/weight", `{"weight": 2}`, 405, "use PUT"},
		{"DELETE", "/api/v1/status", "", 405, "method not allowed"},
		{"GET", "/api/v1/reload", "", 405, "use POST"},
		{"GET", "/api/v2/whatever", "", 404, "no such endpoint"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": `, 400, "malformed body"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", ``, 400, "empty body"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{}`, 400, `missing "weight"`},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": "3"}`, 400, "malformed body"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 1.5}`, 400, "malformed body"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 0}`, 400, "from 1 to 10000, got 0"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 10001}`, 400, "from 1 to 10000"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 2, "extra": 1}`, 400, "unknown field"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 2} {"weight": 3}`, 400, "more than one"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 2} x`, 400, ""},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `[2]`, 400, "malformed body"},
		{"PUT", "/api/v1/rules/web/backends/a/weight", big, 413, "over 1048576 bytes"},
	} {
		t.Run(c.method+" "+c.path+" "+c.body[:min(len(c.body), 20)], func(t *testing.T) {
			code, body, _ := f.do(c.method, c.path, c.body)
			if code != c.code {
				t.Fatalf("got %d %v, want %d", code, body, c.code)
			}
			msg, _ := body["error"].(string)
			if msg == "" || !strings.Contains(msg, c.msg) {
				t.Errorf("error %q does not say %q", msg, c.msg)
			}
		})
	}
	// None of that changed the backend.
	if b := f.status().Rules[0].Backends[0]; b.Weight != 3 || b.Draining || !b.Enabled {
		t.Errorf("a bad request changed the backend: %+v", b)
	}
}

func TestAuth(t *testing.T) {
	f := newFixture(t, "s3cret-token", true)
	for _, p := range []struct{ method, path string }{
		{"GET", "/api/v1/status"}, {"POST", "/api/v1/rules/web/backends/a/drain"}, {"POST", "/api/v1/reload"},
		{"PUT", "/api/v1/rules/web/backends/a/weight"}, {"GET", "/debug/pprof/"}, {"GET", "/api/v1/nothing"},
	} {
		for _, auth := range []string{"", "Bearer wrong", "Bearer s3cret-token-and-more", "Basic s3cret-token", "s3cret-token"} {
			code, body, hdr := f.do(p.method, p.path, `{"weight": 1}`, "Authorization", auth)
			if code != 401 || !strings.Contains(hdr.Get("WWW-Authenticate"), "Bearer") || body["error"] == nil {
				t.Errorf("%s %s with %q: %d %v, want 401", p.method, p.path, auth, code, body)
			}
		}
	}
	code, _, _ := f.do("GET", "/api/v1/status", "", "Authorization", "Bearer s3cret-token")
	if code != 200 {
		t.Errorf("status with the token: %d", code)
	}
	code, _, _ = f.do("POST", "/api/v1/rules/web/backends/a/drain", "", "Authorization", "Bearer s3cret-token")
	if code != 200 {
		t.Errorf("drain with the token: %d", code)
	}
	code, _, _ = f.do("GET", "/debug/pprof/cmdline", "", "Authorization", "Bearer s3cret-token")
	if code != 200 {
		t.Errorf("pprof with the token: %d", code)
	}
	// The page itself and the probes need no token.
	for _, p := range []string{"/", "/assets/app.js", "/healthz"} {
		if code, _, _ := f.do("GET", p, ""); code != 200 {
			t.Errorf("GET %s without a token: %d", p, code)
		}
	}
	// A reload that changes the token applies at once.
	if err := os.WriteFile(f.path, []byte(configText("rotated", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	code, body, _ := f.do("POST", "/api/v1/reload", "", "Authorization", "Bearer s3cret-token")
	if code != 200 {
		t.Fatalf("reload: %d %v", code, body)
	}
	if code, _, _ := f.do("GET", "/api/v1/status", "", "Authorization", "Bearer s3cret-token"); code != 401 {
		t.Errorf("old token after rotation: %d, want 401", code)
	}
	if code, _, _ := f.do("GET", "/api/v1/status", "", "Authorization", "Bearer rotated"); code != 200 {
		t.Errorf("new token after rotation: %d, want 200", code)
	}
}

func TestPprofOffByDefault(t *testing.T) {
	f := newFixture(t, "", false)
	if code, _, _ := f.do("GET", "/debug/pprof/", ""); code != 404 {
		t.Errorf("pprof without [admin] pprof: %d, want 404", code)
	}
}

func TestCrossSiteRefused(t *testing.T) {
	f := newFixture(t, "", false)
	for _, h := range [][]string{
		{"Sec-Fetch-Site", "cross-site"},
		{"Origin", "http://evil.example"},
		{"Origin", "null"},
		{"Host", "evil.example:8071"}, // DNS rebinding onto 127.0.0.1
	} {
		code, body, _ := f.do("POST", "/api/v1/rules/web/backends/a/drain", "", h...)
		if code != 403 {
			t.Errorf("%v: %d %v, want 403", h, code, body)
		}
	}
	if b := f.status().Rules[0].Backends[0]; b.Draining {
		t.Fatal("a cross-site request drained the backend")
	}
	// Same origin (what the status page sends) and localhost are fine.
	u := strings.TrimPrefix(f.srv.URL, "http://")
	if code, body, _ := f.do("POST", "/api/v1/rules/web/backends/a/drain", "", "Origin", f.srv.URL, "Sec-Fetch-Site", "same-origin"); code != 200 {
		t.Errorf("same origin: %d %v", code, body)
	}
	_, port, _ := net.SplitHostPort(u)
	if code, body, _ := f.do("GET", "/api/v1/status", "", "Host", "localhost:"+port); code != 200 {
		t.Errorf("Host localhost: %d %v", code, body)
	}
}

func TestReload(t *testing.T) {
	f := newFixture(t, "", false)
	// Invalid: every problem comes back with file, line and key path.
	bad := configText("", "") + `
[[rules]]
name = "web"
[[rules.backends]]
id = "q"
address = "nowhere"
weight = 0
`
	if err := os.WriteFile(f.path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	code, body, _ := f.do("POST", "/api/v1/reload", "")
	if code != 422 {
		t.Fatalf("invalid reload: %d %v", code, body)
	}
	ps, _ := body["problems"].([]any)
	if len(ps) != 3 {
		t.Fatalf("problems: %v", body)
	}
	want := map[string]bool{"rules[2].name": false, "rules[2].backends[0].address": false, "rules[2].backends[0].weight": false}
	for _, p := range ps {
		pm := p.(map[string]any)
		path, _ := pm["path"].(string)
		if _, ok := want[path]; !ok || pm["file"] != f.path || pm["line"].(float64) < 20 || pm["message"] == "" {
			t.Errorf("problem %v", pm)
		}
		want[path] = true
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("no problem for %s", k)
		}
	}
	if st := f.status(); st.Config.Version != 1 {
		t.Errorf("a failed reload changed the config version to %d", st.Config.Version)
	}
	// Valid: 200 and the new version; the weight comes from the file again
	// only for the backend whose entry changed.
	f.do("PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 7}`)
	f.do("POST", "/api/v1/rules/web/backends/b/drain", "")
	good := strings.Replace(configText("", ""), "address = \"127.0.0.1:2\"", "address = \"127.0.0.1:2\"\nweight = 5", 1)
	if err := os.WriteFile(f.path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	code, body, _ = f.do("POST", "/api/v1/reload", "")
	if code != 200 || body["config_version"] != float64(2) {
		t.Fatalf("valid reload: %d %v", code, body)
	}
	// The answer says what the reload changed: b's entry, so its weight.
	if ch, _ := body["change"].(map[string]any); fmt.Sprint(ch) != "map[backends_reweighted:[web/b] rules_changed:[web]]" ||
		body["changes"] != "rules +0 -0 ~1; backends +0 -0; listeners +0 -0" {
		t.Errorf("valid reload: change %v, changes %q", body["change"], body["changes"])
	}
	st := f.status()
	a, b := st.Rules[0].Backends[0], st.Rules[0].Backends[1]
	if a.Weight != 7 {
		t.Errorf("runtime weight of an unchanged backend was lost: %+v", a)
	}
	if b.Weight != 5 || b.Draining {
		t.Errorf("a changed backend should take the config's values: %+v", b)
	}
	// Unreadable file: 500.
	os.Remove(f.path)
	if code, body, _ := f.do("POST", "/api/v1/reload", ""); code != 500 || !strings.Contains(body["error"].(string), "cannot read") {
		t.Errorf("reload of a missing file: %d %v", code, body)
	}
}

func TestProbesAndPage(t *testing.T) {
	f := newFixture(t, "", false)
	if code, body, _ := f.do("GET", "/healthz", ""); code != 200 || body["status"] != "ok" {
		t.Errorf("healthz: %d %v", code, body)
	}
	if code, body, _ := f.do("GET", "/readyz", ""); code != 503 || body["status"] != "not ready" {
		t.Errorf("readyz before ready: %d %v", code, body)
	}
	f.ready.Store(true)
	if code, body, _ := f.do("GET", "/readyz", ""); code != 200 || body["status"] != "ready" {
		t.Errorf("readyz when ready: %d %v", code, body)
	}
	res, err := f.client.Get(f.srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(page), `<script src="assets/app.js"`) || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Errorf("page: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || res.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("security headers missing: %v", res.Header)
	}
	if ext := regexp.MustCompile(`(src|href)=["']?(https?:)?//`).FindString(string(page)); ext != "" {
		t.Errorf("the page loads something from another site: %s", ext)
	}
	for _, a := range []string{"/assets/app.js", "/assets/style.css"} {
		res, err := f.client.Get(f.srv.URL + a)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || len(body) < 1000 {
			t.Errorf("%s: %d, %d bytes", a, res.StatusCode, len(body))
		}
		if strings.Contains(string(body), "https://") || strings.Contains(string(body), "//cdn") {
			t.Errorf("%s refers to an external resource", a)
		}
	}
	if code, _, _ := f.do("GET", "/nothing-here", ""); code != 404 {
		t.Errorf("unknown page: %d", code)
	}
}

// TestStatusCertificates: a rule that terminates TLS lists its
// certificates with names, serial, expiry and a level: ok, warning under
// 14 days, critical under 3 or expired.
func TestStatusCertificates(t *testing.T) {
	f := newFixture(t, "", false)
	now := time.Now()
	infos := []tlsconf.Info{
		{Cert: "/c/site.pem", Names: []string{"site.test"}, Serial: "0A", NotAfter: now.Add(60 * 24 * time.Hour), Default: true},
		{Cert: "/c/soon.pem", Names: []string{"soon.test"}, Serial: "0B", NotAfter: now.Add(10 * 24 * time.Hour)},
		{Cert: "/c/urgent.pem", Names: []string{"*.urgent.test"}, Serial: "0C", NotAfter: now.Add(2 * 24 * time.Hour)},
		{Cert: "/c/gone.pem", Names: []string{"gone.test"}, Serial: "0D", NotAfter: now.Add(-time.Hour)},
	}
	f.srv.Config.Handler = New(Options{Engine: f.eng, Certificates: func() map[string][]tlsconf.Info { return map[string][]tlsconf.Info{"web": infos} }})
	st := f.status()
	web := st.Rules[0]
	if len(web.Certificates) != 4 {
		t.Fatalf("web certificates: %+v", web.Certificates)
	}
	for i, want := range []string{"ok", "warning", "critical", "critical"} {
		c := web.Certificates[i]
		if c.Level != want || c.Serial != infos[i].Serial || c.File != infos[i].Cert || !c.NotAfter.Equal(infos[i].NotAfter.Truncate(time.Nanosecond)) {
			t.Errorf("certificate %d: %+v, want level %s", i, c, want)
		}
	}
	if !web.Certificates[0].Default || web.Certificates[1].Default || web.Certificates[0].DaysLeft < 59 || web.Certificates[3].DaysLeft >= 0 {
		t.Errorf("default or days left wrong: %+v", web.Certificates)
	}
	if len(st.Rules[1].Certificates) != 0 {
		t.Errorf("a rule without TLS lists certificates: %+v", st.Rules[1].Certificates)
	}
}
