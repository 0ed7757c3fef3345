package e2e

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/dynamic-proxy/dynamic-proxy/internal/acme"
	"github.com/dynamic-proxy/dynamic-proxy/internal/admin"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestStatusPageCertificatesInChromium: the status page, served by the
// admin handler in-process, shows a terminating rule's certificates with
// their names and expiry: green, amber under 14 days, red under 3.
func TestStatusPageCertificatesInChromium(t *testing.T) {
	chrome := mxChromium(t)
	cfg, err := config.Parse("status.toml", []byte(`
[server]
tcp_bind = "127.0.0.1:0"
[health_check]
enabled = false
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = "127.0.0.1:1"
`))
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(slog.New(slog.DiscardHandler))
	if _, err := eng.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), harness.Deadline)
		defer cancel()
		eng.Shutdown(ctx)
	}()
	now := time.Now()
	certs := []tlsconf.Info{
		{Cert: "/c/site.pem", Names: []string{"site.test", "*.site.test"}, Serial: "0A", NotAfter: now.Add(60 * 24 * time.Hour), Default: true},
		{Cert: "/c/soon.pem", Names: []string{"soon.test"}, Serial: "0B", NotAfter: now.Add(10 * 24 * time.Hour)},
		{Cert: "/c/urgent.pem", Names: []string{"urgent.test"}, Serial: "0C", NotAfter: now.Add(2 * 24 * time.Hour)},
	}
	names := []acme.NameState{
		{Rule: "web", Name: "a.acme.test", Serial: "1A", NotAfter: now.Add(80 * 24 * time.Hour), NextRenewal: now.Add(50 * 24 * time.Hour)},
		{Rule: "web", Name: "b.acme.test", Obtaining: true, LastError: "order refused: rate limited", LastErrorAt: now.Add(-time.Minute)},
	}
	srv := httptest.NewServer(admin.New(admin.Options{Engine: eng,
		Certificates: func() map[string][]tlsconf.Info { return map[string][]tlsconf.Info{"web": certs} },
		ACME:         func() []acme.NameState { return names }}))
	defer srv.Close()

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("force-color-profile", "srgb"),
		chromedp.UserDataDir(t.TempDir()))
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS(`li.cert[data-serial="0C"]`))); err != nil {
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
	color := func(serial string) string {
		return eval(`getComputedStyle(document.querySelector('li.cert[data-serial="` + serial + `"]')).color`)
	}
	if got := eval(`Array.from(document.querySelectorAll('article[data-rule="web"] li.cert[data-serial]')).map(e => e.dataset.level).join(",")`); got != "ok,warning,critical" {
		t.Errorf("levels shown: %q", got)
	}
	if got := eval(`document.querySelector('li.cert[data-serial="0A"] .cert-names').textContent`); got != "site.test, *.site.test (default)" {
		t.Errorf("names shown: %q", got)
	}
	if got := eval(`document.querySelector('li.cert[data-serial="0C"] .cert-expiry').textContent`); got == "" || !containsAll(got, "expires", "1 day left") {
		t.Errorf("expiry shown: %q", got)
	}
	// The names managed by ACME: valid until and next renewal, or being
	// obtained with the last error.
	if got := eval(`Array.from(document.querySelectorAll('article[data-rule="web"] li.cert[data-acme]')).map(e => e.dataset.acme + "=" + e.dataset.level).join(",")`); got != "a.acme.test=ok,b.acme.test=critical" {
		t.Errorf("ACME names shown: %q", got)
	}
	if got := eval(`document.querySelector('li.cert[data-acme="a.acme.test"] .cert-expiry').textContent`); !containsAll(got, "valid until", "renews about") {
		t.Errorf("ACME state shown for a.acme.test: %q", got)
	}
	if got := eval(`document.querySelector('li.cert[data-acme="b.acme.test"] .cert-expiry').textContent`); !containsAll(got, "being obtained", "last error", "rate limited") {
		t.Errorf("ACME state shown for b.acme.test: %q", got)
	}
	ok, warn, bad := color("0A"), color("0B"), color("0C")
	if warn != "rgb(217, 119, 6)" || bad != "rgb(220, 38, 38)" || ok == warn || ok == bad {
		t.Errorf("colours: ok %s, warning %s (want amber rgb(217, 119, 6)), critical %s (want red rgb(220, 38, 38))", ok, warn, bad)
	}
}

func containsAll(s string, subs ...string) bool { return harness.ContainsAll(s, subs) }
