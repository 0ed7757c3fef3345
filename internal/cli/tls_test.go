package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// TestValidatePrintsCertificates: --validate lists every certificate of
// a terminating rule with names, serial and expiry, warns about one
// expiring within 14 days and about insecure_skip_verify, and refuses a
// key that does not match with the file and the key's line.
func TestValidatePrintsCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "v")
	site := ca.Issue(dir, "site", tlstest.Options{DNSNames: []string{"site.test", "*.site.test"}, NotAfter: time.Now().Add(60 * 24 * time.Hour)})
	soon := ca.Issue(dir, "soon", tlstest.Options{CommonName: "soon.test", NotAfter: time.Now().Add(3*24*time.Hour + time.Hour)})
	conf := `[[rules]]
name = "web"
[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }, { cert = "soon.pem", key = "soon-key.pem" }]
[rules.backend_tls]
insecure_skip_verify = true
[[rules.backends]]
id = "b1"
address = "127.0.0.1:9001"
[metrics]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
`
	p := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run("--validate", "-c", p)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"certificates: 2\n",
		"  web: " + site.CertFile + " (default): site.test, *.site.test; serial " + tlsconf.Serial(site.Cert) + "; expires " + site.Cert.NotAfter.UTC().Format(time.RFC3339) + " (in 59d)\n",
		"  web: " + soon.CertFile + ": soon.test; serial " + tlsconf.Serial(soon.Cert) + "; expires " + soon.Cert.NotAfter.UTC().Format(time.RFC3339) + " (in 3d) WARNING: expires soon\n",
		"  web: TLS to backends b1 (NOT VERIFIED)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{"warning: " + p + ":4: rules[0].tls.certificates[1].cert: certificate soon.pem ([soon.test]) expires in 3d",
		"warning: " + p + ":6: rules[0].backend_tls.insecure_skip_verify: insecure_skip_verify = true"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}

	bad := strings.Replace(conf, `key = "soon-key.pem"`, `key = "site-key.pem"`, 1)
	if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = run("--validate", "-c", p)
	if want := p + ":4: rules[0].tls.certificates[1].key: " + filepath.Join(dir, "site-key.pem") + ": private key does not match the certificate in " + filepath.Join(dir, "soon.pem"); code != 1 || !strings.Contains(errOut, want) {
		t.Errorf("mismatched key: exit %d, stderr lacks %q:\n%s", code, want, errOut)
	}
}
