package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// TestTLSValidateBinary: the built binary's --validate lists the
// certificates of a terminating rule and warns under 14 days; a key that
// does not match its certificate fails with file:line and the key file.
func TestTLSValidateBinary(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "e2e")
	site := ca.Issue(dir, "site", tlstest.Options{DNSNames: []string{"site.test"}, NotAfter: time.Now().Add(40 * 24 * time.Hour)})
	soon := ca.Issue(dir, "soon", tlstest.Options{DNSNames: []string{"soon.test"}, NotAfter: time.Now().Add(7 * 24 * time.Hour)})
	conf := `[[rules]]
name = "tls-web"
[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }, { cert = "soon.pem", key = "soon-key.pem" }]
[[rules.backends]]
id = "b1"
address = "127.0.0.1:9001"
`
	p := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := Run(t, "--validate", "-c", p)
	if code != 0 {
		t.Fatalf("exit %d:\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"certificates: 2", site.CertFile + " (default): site.test; serial " + tlsconf.Serial(site.Cert),
		soon.CertFile + ": soon.test; serial " + tlsconf.Serial(soon.Cert), "WARNING: expires soon"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if want := p + ":4: rules[0].tls.certificates[1].cert: certificate soon.pem ([soon.test]) expires in 6d"; !strings.Contains(errOut, want) {
		t.Errorf("stderr lacks %q:\n%s", want, errOut)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(conf, `key = "soon-key.pem"`, `key = "site-key.pem"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = Run(t, "--validate", "-c", p)
	if want := p + ":4: rules[0].tls.certificates[1].key: " + site.KeyFile + ": private key does not match"; code != 1 || !strings.Contains(errOut, want) {
		t.Errorf("exit %d, stderr lacks %q:\n%s", code, want, errOut)
	}
}
