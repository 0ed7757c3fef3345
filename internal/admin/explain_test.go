package admin

import (
	"fmt"
	"net"
	"strings"
	"testing"
)

// TestExplainEndpoint: the answer for the fixture's listener, and the
// errors for a malformed or unanswerable question.
func TestExplainEndpoint(t *testing.T) {
	f := newFixture(t, "", false)
	var port int
	for _, l := range f.eng.Listeners() {
		port = l.Addr().(*net.TCPAddr).Port
	}
	code, body, _ := f.do("GET", fmt.Sprintf("/api/v1/explain?client=192.0.2.1:999&port=%d", port), "")
	router, _ := body["router"].(map[string]any)
	if code != 200 || body["rule"] != "web" || body["protocol"] != "tcp" || router["plugin"] != "round_robin" || router["chosen"] != "a" {
		t.Fatalf("%d %v", code, body)
	}
	if n := len(router["candidates"].([]any)); n != 2 {
		t.Fatalf("%d candidates, want 2: %v", n, router)
	}
	for _, c := range []struct {
		query string
		code  int
		err   string
	}{
		{"port=1", 400, "client: want IP:PORT"},
		{"client=192.0.2.1:1", 400, "port: want the listener's port"},
		{"client=192.0.2.1:1&port=99999", 400, "port: want the listener's port"},
		{fmt.Sprintf("client=192.0.2.1:1&port=%d&protocol=sctp", port), 400, "protocol: want tcp or udp"},
		{fmt.Sprintf("client=192.0.2.1:1&port=%d&protocol=udp", port), 404, fmt.Sprintf("no udp listener on port %d", port)},
		{fmt.Sprintf("client=192.0.2.1:1&port=%d&local=nonsense", port), 400, "local: want the IP address"},
		{fmt.Sprintf("client=192.0.2.1:1&port=%d&local=127.0.0.2", port), 404, fmt.Sprintf("no tcp listener on 127.0.0.2:%d", port)},
		{"client=192.0.2.1:1&port=1", 404, "no tcp listener on port 1"},
	} {
		code, body, _ := f.do("GET", "/api/v1/explain?"+c.query, "")
		if code != c.code || !strings.Contains(fmt.Sprint(body["error"]), c.err) {
			t.Errorf("%s: %d %v, want %d %q", c.query, code, body, c.code, c.err)
		}
	}
	if code, _, _ := f.do("POST", fmt.Sprintf("/api/v1/explain?client=192.0.2.1:1&port=%d", port), ""); code != 405 {
		t.Errorf("POST: %d, want 405", code)
	}
}
