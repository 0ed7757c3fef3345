package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestStatusPageShowsDiscovery: the status page, in headless Chromium,
// shows a discovered name's state, endpoints and next refresh, each
// backend's source name, and the name turning stale when its DNS server
// dies.
func TestStatusPageShowsDiscovery(t *testing.T) {
	chrome := mxChromium(t)
	p, dns, _, port := startWeb3(t, webHosts3, "a", "b", "c")
	name := fmt.Sprintf("web.test:%d", port)

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()))
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelTimeout()
	if err := chromedp.Do(ctx, chromedp.Navigate(p.AdminURL()+"/"),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`.discovery[data-name=%q][data-state="ok"]`, name)))); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	eval := func(expr string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return s
	}
	line := eval(fmt.Sprintf(`document.querySelector('.discovery[data-name=%q]').textContent`, name))
	for _, want := range []string{"DNS a " + name + " @" + dns.Addr, "ok", "3 endpoints", "next refresh in"} {
		if !strings.Contains(line, want) {
			t.Errorf("discovery line %q lacks %q", line, want)
		}
	}
	origin := eval(fmt.Sprintf(`document.querySelector('tr[data-backend="web.test:127.0.0.3:%d"] .origin').textContent`, port))
	if origin != "from DNS "+name {
		t.Errorf("backend origin shown as %q", origin)
	}
	dns.Kill()
	p.WaitLog("discovery: lookup failed; keeping the last good answer")
	harness.Eventually(t, "the page showing the name stale", func() bool {
		got := eval(fmt.Sprintf(`(() => { const e = document.querySelector('.discovery[data-name=%q]'); return e ? e.dataset.state + "|" + e.textContent : ""; })()`, name))
		return strings.HasPrefix(got, "stale|") && strings.Contains(got, "lookup failing: last good answer serves · 3 endpoints")
	})
}
