package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// The status page test drives the real page in Debian's headless Chromium.
//
// Its screenshot is written to $DP_TEST_ARTIFACTS (default: a
// dynamic-proxy-test-artifacts directory in the system temp dir); with
// DP_DOCS_SCREENSHOT=1 it also replaces docs/status-page.png, the README's
// picture:
//
//	DP_DOCS_SCREENSHOT=1 go test ./test/e2e -run TestStatusPage -count=1

// mxTraffic keeps a few connections busy through addrs until stop is
// closed (or a minute has passed), so that the page has rates to show.
func mxTraffic(addrs []string, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	limit := time.After(time.Minute)
	done := make(chan struct{})
	go func() {
		select {
		case <-stop:
		case <-limit:
		}
		close(done)
	}()
	for i, addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chunk := make([]byte, (i+1)*48<<10)
			buf := make([]byte, len(chunk)+64)
			for {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					select {
					case <-done:
						return
					case <-time.After(50 * time.Millisecond):
						continue
					}
				}
				for j := 0; j < 20; j++ {
					c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Write(chunk); err != nil {
						break
					}
					if _, err := io.ReadAtLeast(c, buf, len(chunk)); err != nil {
						break
					}
					select {
					case <-done:
						c.Close()
						return
					case <-time.After(40 * time.Millisecond):
					}
				}
				c.Close()
			}
		}()
	}
	return &wg
}

func mxChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: apt-get install chromium (scripts/test.sh installs it)")
	return ""
}

// browser is a headless Chromium tab, closed when the test ends, and what
// its pages log to the console.
type browser struct {
	ctx     context.Context
	mu      sync.Mutex
	console []string
}

// startBrowser starts chrome (mxChromium) headless in a 1400x900 window,
// with the options extra added, and a tab that gives up after 2 minutes;
// it collects what the tab's pages log (Console).
func startBrowser(t *testing.T, chrome string, extra ...chromedp.ExecAllocatorOption) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chrome), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
	}
	opts = append(opts, extra...)
	opts = append(opts, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 900))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelTab)
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(cancelTimeout)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	b := &browser{ctx: ctx}
	cctx, stopConsole := context.WithCancel(ctx)
	messages := chromedp.Console(cctx)
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		for m, err := range messages {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, fmt.Sprintf("%s: %s", m.Type, m.Text))
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() { stopConsole(); <-consoleDone })
	return b
}

// Console is what the pages logged so far, "type: text" a message.
func (b *browser) Console() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}

func TestStatusPageInChromium(t *testing.T) {
	chrome := mxChromium(t)
	ea, eb, ec := StartEcho(t, "web-1"), StartEcho(t, "web-2"), StartEcho(t, "api-1")
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	port, port2 := harness.FreePort(t), harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[admin]
bind = "127.0.0.1:0"
token = "browser-token"
[health_check]
interval = "200ms"
timeout = "150ms"
retries = 1
[[rules]]
name = "web"
router = "weighted"
[[rules.backends]]
id = "web-1"
address = %q
weight = 3
[[rules.backends]]
id = "web-2"
address = %q
weight = 2
[[rules]]
name = "api"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "api-1"
address = %q
[[rules.backends]]
id = "api-2"
address = %q
`, port, ea.Addr, eb.Addr, port2, ec.Addr, deadAddr)))
	base := p.AdminURL()
	web := fmt.Sprintf("127.0.0.1:%d", port)
	api := fmt.Sprintf("127.0.0.1:%d", port2)

	stop := make(chan struct{})
	wg := mxTraffic([]string{web, web, web, api}, stop)
	defer wg.Wait()
	defer close(stop)

	// Start the browser and collect what the page logs.
	br := startBrowser(t, chrome, chromedp.Flag("force-color-profile", "srgb"), chromedp.Flag("hide-scrollbars", true))
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
	waitEval := func(what, expr string) {
		t.Helper()
		harness.Eventually(t, fmt.Sprintf("the page showing %s (%s)", what, expr), func() bool { return eval(expr) == "true" })
	}

	// The API answers 401: the page asks for the token.
	run("open the page and give the token",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token-input")),
		chromedp.SendKeys(chromedp.CSS("#token-input"), "browser-token"),
		chromedp.Click(chromedp.CSS("#token-save")),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-rule="web"][data-backend="web-1"]`)),
	)
	if got := eval(`Array.from(document.querySelectorAll("article.rule")).map(e => e.dataset.rule).join(",")`); got != "web,api" {
		t.Errorf("rules rendered: %q, want web,api", got)
	}
	if got := eval(`Array.from(document.querySelectorAll("tr[data-backend]")).map(e => e.dataset.rule + "/" + e.dataset.backend).join(",")`); got != "web/web-1,web/web-2,api/api-1,api/api-2" {
		t.Errorf("backends rendered: %q", got)
	}
	waitEval("api-2 down (red) and the others serving",
		`document.querySelector('tr[data-backend="api-2"]').dataset.state === "down" && `+
			`["web-1","web-2","api-1"].every(b => document.querySelector('tr[data-backend="'+b+'"]').dataset.state === "serving") ? "true" : "false"`)
	if got := eval(`document.querySelector('tr[data-backend="web-1"] [data-field="weight"]').textContent`); got != "3" {
		t.Errorf("weight of web-1 shown as %q", got)
	}
	waitEval("traffic rates", `document.querySelector('tr[data-backend="web-1"] [data-field="rate-in"]').textContent !== "0 B/s" ? "true" : "false"`)

	// Drain web-1 with its button: new connections all go to web-2.
	run("click drain",
		chromedp.Click(chromedp.CSS(`button[data-rule="web"][data-backend="web-1"][data-action="drain"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-rule="web"][data-backend="web-1"][data-state="draining"]`)),
	)
	p.WaitLog("admin API: backend changed", "backend=web-1", "action=drain")
	if got := mxGreetings(t, web, 10); got["web-2"] != 10 {
		t.Fatalf("after the drain click, new connections went to %v, want all to web-2", got)
	}
	// Let the rates settle on the new split before the picture.
	waitEval("web-1's rate falling to zero", `document.querySelector('tr[data-backend="web-1"] [data-field="rate-in"]').textContent === "0 B/s" ? "true" : "false"`)
	docs := os.Getenv("DP_DOCS_SCREENSHOT") == "1"
	if docs {
		// For the README: refresh every second and let the sparklines fill.
		n := eval(`(() => { const s = document.getElementById("interval"); s.value = "1000"; s.dispatchEvent(new Event("change")); return document.body.dataset.polls; })()`)
		waitEval("12 more refreshes", `Number(document.body.dataset.polls) >= `+n+` + 12 ? "true" : "false"`)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("DP_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "dynamic-proxy-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "status-page.png")
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(shot))
	if docs {
		if err := os.WriteFile("../../docs/status-page.png", shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("docs/status-page.png updated")
	}
	if len(shot) < 20000 || string(shot[1:4]) != "PNG" {
		t.Errorf("the screenshot is not a real PNG of the page (%d bytes)", len(shot))
	}

	// Enable brings it back.
	run("click enable",
		chromedp.Click(chromedp.CSS(`button[data-rule="web"][data-backend="web-1"][data-action="enable"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-rule="web"][data-backend="web-1"][data-state="serving"]`)),
	)
	if got := mxGreetings(t, web, 10); got["web-1"] == 0 {
		t.Errorf("after enable, web-1 got no new connection: %v", got)
	}

	// No script error and no CSP violation (the 401 that asked for the
	// token is expected).
	for _, m := range br.Console() {
		if strings.Contains(m, "401") {
			continue
		}
		if strings.HasPrefix(m, "error") || strings.HasPrefix(m, "exception") || strings.Contains(m, "Content Security Policy") {
			t.Errorf("page console: %s", m)
		}
	}
}
