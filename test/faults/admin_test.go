package faults

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// adminCall makes one request and returns the status and body.
func adminCall(t *testing.T, method, url, token string, body io.Reader, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	c := &http.Client{Timeout: harness.Deadline, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	return res.StatusCode, string(b)
}

// backendState is what the admin API can change about a backend.
type backendState struct {
	Weight   int
	Enabled  bool
	Draining bool
}

func statusOf(t *testing.T, base, token string) map[string]backendState {
	t.Helper()
	code, body := adminCall(t, "GET", base+"/api/v1/status", token, nil)
	if code != 200 {
		t.Fatalf("status: %d %s", code, body)
	}
	var doc struct {
		Rules []struct {
			Name     string
			Backends []struct {
				ID       string
				Weight   int
				Enabled  bool
				Draining bool
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("status: %v", err)
	}
	out := map[string]backendState{}
	for _, r := range doc.Rules {
		for _, b := range r.Backends {
			out[r.Name+"/"+b.ID] = backendState{b.Weight, b.Enabled, b.Draining}
		}
	}
	return out
}

// TestAdminSurface
//
// Fault: hostile calls to the admin API and the metrics endpoint: every
// /api/ endpoint without a token, with a wrong one or another scheme;
// malformed JSON (truncated, wrong types, unknown fields, two objects, not
// JSON at all, out-of-range weights); bodies over the 1 MiB limit (2 MiB,
// and 64 MiB streamed); a 1 MiB header; 200 connections opened to the
// admin port and left idle; and POST, PUT, DELETE, PATCH to the metrics
// endpoint.
// Load: proxied connections keep being served throughout.
// Must hold: every call is refused with the right status (401, 400, 413,
// 431, 405), none changes anything (backends' weight, enabled and draining
// state, config_reloads_total), the huge bodies are cut at the limit
// without the proxy's RSS growing by more than 8 MiB, and the proxy keeps
// proxying and answering /healthz.
func TestAdminSurface(t *testing.T) {
	const token = "s3cret-token"
	be := StartBackend(t, Greet("b"))
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := Start(t, harness.WriteConfig(t, server("")+noHealth+
		fmt.Sprintf("\n[admin]\nbind = \"127.0.0.1:0\"\ntoken = %q\n", token)+
		tcpRule("web", port, "a="+be.Addr, "b="+be.Addr)))
	base, murl := p.AdminURL(), p.MetricsURL()
	auth := "Bearer " + token
	before := statusOf(t, base, auth)
	reloads := harness.Scrape(t, murl).Value("dynamic_proxy_config_reloads_total", nil)
	rss0 := RSS(t, p.PID())
	served := func(when string) {
		t.Helper()
		if name, err := harness.Greeting(addr); err != nil || name != "b" {
			t.Fatalf("proxying %s: %q, %v", when, name, err)
		}
	}

	// Unauthenticated and wrongly authenticated calls.
	endpoints := []struct{ method, path, body string }{
		{"GET", "/api/v1/status", ""},
		{"POST", "/api/v1/reload", ""},
		{"POST", "/api/v1/rules/web/backends/a/drain", ""},
		{"POST", "/api/v1/rules/web/backends/a/disable", ""},
		{"POST", "/api/v1/rules/web/backends/a/enable", ""},
		{"PUT", "/api/v1/rules/web/backends/a/weight", `{"weight": 7}`},
	}
	refused := 0
	for _, e := range endpoints {
		for _, bad := range []string{"", "Bearer", "Bearer wrong", "Bearer " + token + "x", "Basic " + token, token, "Bearer  " + strings.ToUpper(token)} {
			code, body := adminCall(t, e.method, base+e.path, bad, strings.NewReader(e.body))
			if code != http.StatusUnauthorized {
				t.Errorf("%s %s with Authorization %q: %d %s; want 401", e.method, e.path, bad, code, body)
			}
			refused++
		}
	}
	served("after unauthenticated calls")

	// Malformed bodies, with the right token.
	malformed := []string{``, `{`, `{"weight":`, `{"weight": "5"}`, `{"weight": 5.5}`, `{"weight": null}`,
		`{"weight": 0}`, `{"weight": -1}`, `{"weight": 10001}`, `{"weight": 99999999999999999999}`,
		`{"wieght": 5}`, `{"weight": 5, "extra": 1}`, `{"weight": 5}{"weight": 6}`, `{"weight": 5} trailing`,
		`[5]`, `5`, `"five"`, `<weight>5</weight>`, "\x00\x01\x02", `{"weight": 5` + strings.Repeat(" ", 1000)}
	for _, body := range malformed {
		code, resp := adminCall(t, "PUT", base+"/api/v1/rules/web/backends/a/weight", auth, strings.NewReader(body))
		if code != http.StatusBadRequest {
			t.Errorf("weight body %q: %d %s; want 400", body, code, resp)
		}
		refused++
	}
	for _, path := range []string{"/api/v1/rules/nope/backends/a/drain", "/api/v1/rules/web/backends/nope/drain", "/api/v1/rules/web/backends/a/explode", "/api/v2/status"} {
		if code, resp := adminCall(t, "POST", base+path, auth, nil); code != http.StatusNotFound {
			t.Errorf("POST %s: %d %s; want 404", path, code, resp)
		}
		refused++
	}

	// Huge bodies: cut at the 1 MiB limit, never buffered whole.
	// The body is a JSON string that never ends, so the decoder reads on
	// until the limit stops it.
	for _, size := range []int64{2 << 20, 64 << 20} {
		start := time.Now()
		body := io.MultiReader(strings.NewReader(`{"weight": 5, "pad": "`), io.LimitReader(xs{}, size))
		code, resp := adminCall(t, "PUT", base+"/api/v1/rules/web/backends/a/weight", auth, body)
		if code != http.StatusRequestEntityTooLarge {
			t.Errorf("%s body: %d %s; want 413", MiB(size), code, resp)
		}
		t.Logf("a %s body was refused with %d in %v", MiB(size), code, time.Since(start).Round(time.Millisecond))
		refused++
	}
	// A 1 MiB header.
	if code, _ := adminCall(t, "GET", base+"/api/v1/status", auth, nil, "X-Junk", strings.Repeat("j", 1<<20)); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 1 MiB header: %d; want 431", code)
	}
	refused++

	// 200 idle connections on the admin port: the proxy and the API go on.
	host := strings.TrimPrefix(base, "http://")
	var idle []net.Conn
	for i := 0; i < 200; i++ {
		c, err := net.DialTimeout("tcp", host, harness.Deadline)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /api/v1/status HTTP/1.1\r\nHost: x\r\n") // and never the end of the head
		idle = append(idle, c)
	}
	served("with 200 idle admin connections")
	if code, _ := adminCall(t, "GET", base+"/healthz", "", nil); code != 200 {
		t.Errorf("/healthz with 200 idle admin connections: %d", code)
	}
	for _, c := range idle {
		c.Close()
	}

	// The metrics endpoint is read-only.
	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
		for _, path := range []string{murl, strings.TrimSuffix(murl, "/metrics") + "/"} {
			code, body := adminCall(t, m, path, "", strings.NewReader(`{"weight": 1}`))
			if code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d %s; want 405", m, path, code, body)
			}
			refused++
		}
	}
	if code, _ := adminCall(t, "HEAD", murl, "", nil); code != 200 {
		t.Errorf("HEAD %s: %d; want 200", murl, code)
	}

	// Nothing changed.
	after := statusOf(t, base, auth)
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("backends changed by refused calls:\nbefore %v\nafter  %v", before, after)
	}
	if r := harness.Scrape(t, murl).Value("dynamic_proxy_config_reloads_total", nil); r != reloads {
		t.Errorf("config_reloads_total went from %v to %v: an unauthenticated reload ran", reloads, r)
	}
	if n := p.Count("admin API: backend changed"); n != 0 {
		t.Errorf("%d backend changes logged", n)
	}
	rss := RSS(t, p.PID())
	if rss-rss0 > 8<<20 {
		t.Errorf("RSS grew from %s to %s", MiB(rss0), MiB(rss))
	}
	served("at the end")
	// And an authenticated call still works.
	if code, resp := adminCall(t, "PUT", base+"/api/v1/rules/web/backends/a/weight", auth, strings.NewReader(`{"weight": 7}`)); code != 200 {
		t.Fatalf("a good call after all that: %d %s", code, resp)
	}
	if w := statusOf(t, base, auth)["web/a"].Weight; w != 7 {
		t.Fatalf("weight %d after a good call, want 7", w)
	}
	t.Logf("%d hostile admin and metrics calls refused, nothing changed; proxy RSS %s → %s", refused, MiB(rss0), MiB(rss))
}

// xs reads as an endless run of 'x'.
type xs struct{}

func (xs) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}
