package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestACMEDefaults: a rule with acme and no [acme] gets Let's Encrypt
// production, TLS-ALPN-01 and a storage directory beside the config.
func TestACMEDefaults(t *testing.T) {
	f := newTLSFixture(t)
	cfg, err := f.parse(t, tlsRuleHead+`[rules.tls]
acme = ["a.example.com", "b.example.com"]
`+tlsBackend)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.ACMESettings()
	if a.Directory != LetsEncryptDirectory || len(a.Challenges) != 1 || a.Challenges[0] != ChallengeTLSALPN || a.HTTPPort != 0 {
		t.Errorf("defaults: %+v", a)
	}
	if got := cfg.ACMEStorageDir(); got != filepath.Join(f.dir, "acme") {
		t.Errorf("storage = %q, want beside the config", got)
	}
	if n := cfg.ACMENames()["web"]; len(n) != 2 {
		t.Errorf("ACMENames = %v", cfg.ACMENames())
	}
}

// TestACMEBadInput: each mistake is reported at its key's line.
func TestACMEBadInput(t *testing.T) {
	f := newTLSFixture(t)
	os.WriteFile(filepath.Join(f.dir, "short.key"), []byte("abc\n"), 0o600)
	_, err := f.parse(t, `[acme]
email = "not an address"
directory = "http://acme.test/dir"
challenges = ["dns-01", "http-01"]
encryption_key_file = "short.key"
renew_check_interval = "0s"
`+tlsRuleHead+`[rules.tls]
acme = ["*.example.com", "10.0.0.1", "ok.example.com", "bad_name.example.com"]
certificates = [{ cert = "site.pem", key = "site-key.pem" }]
`+tlsBackend+`[[rules]]
name = "two"
[rules.matcher]
type = "port"
port = 8443
[rules.tls]
acme = ["OK.example.com"]
`+tlsBackend)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		`tls.toml:2: acme.email: "not an address" is not an email address`,
		`tls.toml:3: acme.directory: must be an https://`,
		`tls.toml:4: acme.challenges[0]: must be "tls-alpn-01" or "http-01", got "dns-01"`,
		`acme.challenges: "http-01" needs http_port`,
		`tls.toml:5: acme.encryption_key_file: short.key: the key must be at least 16 bytes`,
		`tls.toml:6: acme.renew_check_interval: must be from 1s to 24h`,
		`rules[0].tls.acme: is set with certificates`,
		`rules[0].tls.acme[0]: "*.example.com": a wildcard certificate needs the DNS-01 challenge`,
		`rules[0].tls.acme[1]: "10.0.0.1": an IP address`,
		`rules[0].tls.acme[3]: "bad_name.example.com" is not a DNS name`,
		`rules[1].tls.acme[0]: "OK.example.com" is also managed by rule "web"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

// TestACMEHTTPPort: http_port is the HTTP-01 listener on tcp_bind's host,
// and needs http-01 among the challenges.
func TestACMEHTTPPort(t *testing.T) {
	f := newTLSFixture(t)
	cfg, err := f.parse(t, `[server]
tcp_bind = "127.0.0.1:0"
[acme]
challenges = ["tls-alpn-01", "http-01"]
http_port = 8080
`+tlsRuleHead+`[rules.tls]
acme = ["a.example.com"]
`+tlsBackend)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.ACMEHTTPListen(); got != "127.0.0.1:8080" {
		t.Errorf("ACMEHTTPListen = %q", got)
	}
	_, err = f.parse(t, "[server]\ntcp_bind = \"127.0.0.1:0\"\n[acme]\nchallenges = [\"http-01\"]\nhttp_port = 9443\n"+tlsRuleHead+"[rules.matcher]\ntype = \"port\"\nport = 9443\n[rules.tls]\nacme = [\"a.example.com\"]\n"+tlsBackend)
	if err == nil || !strings.Contains(err.Error(), `acme.http_port: 9443 is rule "web"'s listener`) {
		t.Errorf("http_port on a rule's listener: %v", err)
	}
	_, err = f.parse(t, "[acme]\nhttp_port = 8080\n"+tlsRuleHead+"[rules.tls]\nacme = [\"a.example.com\"]\n"+tlsBackend)
	if err == nil || !strings.Contains(err.Error(), `tls.toml:2: acme.http_port: is set but challenges has no "http-01"`) {
		t.Errorf("http_port without http-01: %v", err)
	}
}

// TestACMERedisWithoutEncryptionKey: with [redis] and no
// encryption_key_file, --validate warns that private keys are stored in
// Redis unencrypted; with one, it does not.
func TestACMERedisWithoutEncryptionKey(t *testing.T) {
	f := newTLSFixture(t)
	body := tlsRuleHead + "[rules.tls]\nacme = [\"a.example.com\"]\n" + tlsBackend
	cfg, err := f.parse(t, "[redis]\n[acme]\n"+body)
	if err != nil {
		t.Fatal(err)
	}
	warned := false
	for _, w := range cfg.Warnings {
		warned = warned || strings.Contains(w.String(), "tls.toml:2: acme: no encryption_key_file: the certificates' private keys are stored in Redis unencrypted")
	}
	if !warned {
		t.Errorf("no warning: %v", cfg.Warnings)
	}
	os.WriteFile(filepath.Join(f.dir, "fleet.key"), []byte("0123456789abcdef0123\n"), 0o600)
	cfg, err = f.parse(t, "[redis]\n[acme]\nencryption_key_file = \"fleet.key\"\n"+body)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := cfg.ACMEEncryptionKey(); err != nil || string(k) != "0123456789abcdef0123" || len(cfg.Warnings) != 0 {
		t.Errorf("key %q, %v; warnings %v", k, err, cfg.Warnings)
	}
}
