package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestValidatePrintsACME: --validate says which ACME directory is used
// (and that Let's Encrypt production is the default), the challenges,
// the storage and each rule's names; with [redis] and no encryption key
// it warns.
func TestValidatePrintsACME(t *testing.T) {
	p := writeConfig(t, `[server]
tcp_bind = "127.0.0.1:0"
[redis]
url = "redis://127.0.0.1:1"
[[rules]]
name = "web"
[rules.matcher]
type = "port"
port = 8443
[rules.tls]
acme = ["a.example.com", "b.example.com"]
[[rules.backends]]
id = "b1"
address = "127.0.0.1:9001"
`)
	code, out, errOut := run("--validate", "-c", p)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"acme: directory https://acme-v02.api.letsencrypt.org/directory (Let's Encrypt production, the default)\n",
		"  challenges: [tls-alpn-01]\n",
		"  storage: redis, local copy " + filepath.Join(filepath.Dir(p), "acme") + "; private keys unencrypted (no encryption_key_file)\n",
		"  web: [a.example.com b.example.com] (tls-alpn-01 on 127.0.0.1:8443)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "private keys are stored in Redis unencrypted") {
		t.Errorf("no warning about unencrypted keys:\n%s", errOut)
	}
}
