package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestStatusPageConnections drives the status page's connections view in
// headless Chromium: it lists the open TCP connections and UDP sessions,
// filters them, closes one with its button (the client sees the end) and
// every one the filter selects with "Close all shown", leaving the others
// open.
func TestStatusPageConnections(t *testing.T) {
	chrome := mxChromium(t)
	ea, eb := StartEcho(t, "a"), StartEcho(t, "b")
	u1 := StartUDPEcho(t, "u1")
	tcpPort, udpPort := harness.FreePort(t), harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
udp_bind = "127.0.0.1:%d"
[admin]
bind = "127.0.0.1:0"
[[rules]]
name = "web"
router = "round_robin"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
[[rules]]
name = "game"
protocol = "udp"
[[rules.backends]]
id = "u1"
address = %q
`, tcpPort, udpPort, ea.Addr, eb.Addr, u1.Addr)))
	p.WaitLog("listening", "protocol=udp")
	addr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	var cs []*cnClient
	for range 3 {
		c := cnDial(t, addr, nil)
		c.echo(t, "hi")
		cs = append(cs, c)
	}
	if cs[0].backend != "a" || cs[1].backend != "b" || cs[2].backend != "a" {
		t.Fatalf("round robin: %s %s %s", cs[0].backend, cs[1].backend, cs[2].backend)
	}
	u := dialUDP(t, udpPort)
	mustExchange(t, u, "ping", "u1:ping")

	br := startBrowser(t, chrome)
	ctx := br.ctx

	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return s
	}
	rows := func() string {
		return eval(`Array.from(document.querySelectorAll("#conns-body tr[data-conn]")).map(r => r.dataset.connProtocol + "/" + r.dataset.connRule + "/" + r.dataset.connBackend).sort().join(",")`)
	}
	waitRows := func(what, want string) {
		t.Helper()
		harness.Eventually(t, "the connections view showing "+what, func() error {
			if got := rows(); got != want {
				return fmt.Errorf("rows %q, want %q", got, want)
			}
			return nil
		})
	}

	run("open the page", chromedp.Navigate(p.AdminURL()+"/"), chromedp.WaitVisible(chromedp.CSS(`#conns-body tr[data-conn]`)))
	waitRows("every connection", "tcp/web/a,tcp/web/a,tcp/web/b,udp/game/u1")
	client := cs[1].c.LocalAddr().String()
	if got := eval(`document.querySelector('#conns-body tr[data-conn-backend="b"] [data-field="client"]').textContent`); got != client {
		t.Errorf("b's row shows client %q, want %q", got, client)
	}
	if got := eval(`document.querySelector('#conns-body tr[data-conn-backend="b"] [data-field="in"]').textContent`); got != "3 B" {
		t.Errorf("b's row shows %q in, want 3 B", got)
	}
	if got := eval(`document.getElementById("conns").dataset.total`); got != "4" {
		t.Errorf("total %q, want 4", got)
	}

	// Filter on backend a, then close one of its two with its button.
	run("filter on backend a",
		chromedp.SendKeys(chromedp.CSS("#cf-backend"), "a"),
		chromedp.Click(chromedp.CSS("#cf-apply")))
	waitRows("backend a's connections", "tcp/web/a,tcp/web/a")
	id := eval(`document.querySelector('#conns-body tr[data-conn-backend="a"]').dataset.conn`)
	var victim, other *cnClient
	page := adminConns(t, p, "backend=a")
	for _, c := range []*cnClient{cs[0], cs[2]} {
		if page[c.c.LocalAddr().String()] == id {
			victim = c
		} else {
			other = c
		}
	}
	if victim == nil || other == nil {
		t.Fatalf("row %s is neither of a's clients: %v", id, page)
	}
	run("click close", chromedp.Click(chromedp.CSS(`button[data-action="close-conn"][data-conn="`+id+`"]`)))
	victim.closed(t)
	waitRows("the other connection of a", "tcp/web/a")
	other.echo(t, "a lives")
	p.WaitLog("admin API: connection closed", "conn="+id)

	// Filter on backend b and close every one shown.
	run("filter on backend b",
		chromedp.Evaluate[chromedp.Void](`document.getElementById("cf-backend").value = ""`),
		chromedp.SendKeys(chromedp.CSS("#cf-backend"), "b"),
		chromedp.Click(chromedp.CSS("#cf-apply")))
	waitRows("backend b's connection", "tcp/web/b")
	run("close all shown", chromedp.Click(chromedp.CSS("#cf-close")))
	cs[1].closed(t)
	waitRows("none of b", "")
	other.echo(t, "a still lives")
	mustExchange(t, u, "pong", "u1:pong")

	// Without a filter, the rest is there.
	run("clear the filter",
		chromedp.Evaluate[chromedp.Void](`document.getElementById("cf-backend").value = ""`),
		chromedp.Click(chromedp.CSS("#cf-apply")))
	waitRows("what is left", "tcp/web/a,udp/game/u1")

	for _, m := range br.Console() {
		if strings.HasPrefix(m, "error") || strings.HasPrefix(m, "exception") || strings.Contains(m, "Content Security Policy") {
			t.Errorf("page console: %s", m)
		}
	}
}

// adminConns maps the client of each connection a query lists to its id.
func adminConns(t *testing.T, p *harness.Proxy, query string) map[string]string {
	_, conns, _ := cnList(mxAdminOf(t, p, ""), query)
	out := map[string]string{}
	for _, c := range conns {
		out[c["client"].(string)] = cnID(c)
	}
	return out
}
