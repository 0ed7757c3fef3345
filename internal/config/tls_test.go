package config

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// tlsFixture makes certificates in a temporary directory beside a config
// file that names them relatively.
type tlsFixture struct {
	dir                        string
	ca                         *tlstest.CA
	site, other, soon, expired *tlstest.Leaf
	client                     *tlstest.Leaf
}

func newTLSFixture(t *testing.T) *tlsFixture {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "cfg")
	return &tlsFixture{dir: dir, ca: ca,
		site:    ca.Issue(dir, "site", tlstest.Options{DNSNames: []string{"site.test", "*.site.test"}, NotAfter: time.Now().Add(90 * 24 * time.Hour)}),
		other:   ca.Issue(dir, "other", tlstest.Options{DNSNames: []string{"other.test"}, NotAfter: time.Now().Add(90 * 24 * time.Hour)}),
		soon:    ca.Issue(dir, "soon", tlstest.Options{DNSNames: []string{"soon.test"}, NotAfter: time.Now().Add(5 * 24 * time.Hour)}),
		expired: ca.Issue(dir, "expired", tlstest.Options{DNSNames: []string{"old.test"}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}),
		client:  ca.Issue(dir, "client", tlstest.Options{CommonName: "proxy", Client: true, NotAfter: time.Now().Add(90 * 24 * time.Hour)}),
	}
}

func (f *tlsFixture) parse(t *testing.T, toml string) (*Config, error) {
	t.Helper()
	path := filepath.Join(f.dir, "tls.toml")
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(path)
}

const tlsRuleHead = `[[rules]]
name = "web"
`
const tlsBackend = `[[rules.backends]]
id = "b1"
address = "127.0.0.1:9001"
`

// TestTLSDefaultsAndOptions: a [rules.tls] with only a certificate gets
// the documented defaults, and ServerTLS/BackendTLSFor give tlsconf what
// the file says, with files relative to the config's directory.
func TestTLSDefaultsAndOptions(t *testing.T) {
	f := newTLSFixture(t)
	cfg, err := f.parse(t, tlsRuleHead+`[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }, { cert = "other.pem", key = "other-key.pem" }]
[rules.backend_tls]
ca = "cfg-ca.pem"
`+tlsBackend+`[[rules.backends]]
id = "b2"
address = "127.0.0.1:9002"
tls = { server_name = "b2.test", cert = "client.pem", key = "client-key.pem" }
[[rules.backends]]
id = "b3"
address = "127.0.0.1:9003"
tls = { enabled = false }
`)
	if err != nil {
		t.Fatal(err)
	}
	r := &cfg.Rules[0]
	tt := r.TLS
	checks := []struct {
		key       string
		got, want any
	}{
		{"min_version", tt.MinVersion, "1.2"},
		{"max_version", tt.MaxVersion, "1.3"},
		{"alpn", len(tt.ALPN), 0},
		{"client_auth", tt.ClientAuth, "none"},
		{"client_ca", tt.ClientCA, ""},
		{"session_tickets", tt.SessionTickets, true},
		{"session_ticket_rotation", tt.SessionTicketRotation.D(), 12 * time.Hour},
		{"session_ticket_keys", tt.SessionTicketKeys, 3},
		{"handshake_timeout", tt.HandshakeTimeout.D(), 10 * time.Second},
		{"backend_tls.enabled", r.BackendTLS.Enabled, true},
		{"backend_tls.min_version", r.BackendTLS.MinVersion, "1.2"},
		{"backend_tls.server_name", r.BackendTLS.ServerName, ""},
		{"backend_tls.insecure_skip_verify", r.BackendTLS.InsecureSkipVerify, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: default %v, want %v", c.key, c.got, c.want)
		}
	}
	if len(tt.Certs) != 2 || !tt.Certs[0].Default || tt.Certs[0].Names[1] != "*.site.test" || tt.Certs[1].Serial != tlsconf.Serial(f.other.Cert) {
		t.Errorf("Certs = %+v", tt.Certs)
	}
	o, ok := cfg.ServerTLS(r)
	if !ok || o.Name != "web" || o.MinVersion != tls.VersionTLS12 || o.MaxVersion != tls.VersionTLS13 ||
		len(o.Certificates) != 2 || o.Certificates[0].Cert != f.site.CertFile || o.Certificates[1].Key != f.other.KeyFile ||
		!o.SessionTickets || o.TicketRotation != 12*time.Hour || o.TicketKeys != 3 {
		t.Errorf("ServerTLS = %+v, %v", o, ok)
	}
	s, err := tlsconf.NewServer(o, nil, nil)
	if err != nil {
		t.Fatalf("tlsconf refuses what the config validated: %v", err)
	}
	s.Close()
	if b1, ok := cfg.BackendTLSFor(r, &r.Backends[0]); !ok || b1.CA != f.ca.CAFile || b1.MinVersion != tls.VersionTLS12 {
		t.Errorf("backend b1: %+v, %v", b1, ok)
	}
	if b2, ok := cfg.BackendTLSFor(r, &r.Backends[1]); !ok || b2.CA != "" || b2.ServerName != "b2.test" || b2.Cert != f.client.CertFile {
		t.Errorf("backend b2 (its own tls replaces the rule's): %+v, %v", b2, ok)
	}
	if _, ok := cfg.BackendTLSFor(r, &r.Backends[2]); ok {
		t.Error("backend b3 (enabled = false) is dialled with TLS")
	}
	files := cfg.TLSFiles()
	want := []string{f.site.CertFile, f.site.KeyFile, f.other.CertFile, f.other.KeyFile, f.ca.CAFile, f.client.CertFile, f.client.KeyFile}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Errorf("TLSFiles = %v, want %v", files, want)
	}
	if _, ok := cfg.ServerTLS(&Rule{}); ok {
		t.Error("a rule without [rules.tls] terminates")
	}
}

// TestTLSValidation: every mistake is reported with file:line and key.
func TestTLSValidation(t *testing.T) {
	f := newTLSFixture(t)
	cases := []struct {
		name string
		toml string
		want []string // each a substring of one problem
	}{
		{"no certificate", tlsRuleHead + "[rules.tls]\nmin_version = \"1.2\"\n" + tlsBackend,
			[]string{"tls.toml:3: rules[0].tls.certificates: missing"}},
		{"unknown version", tlsRuleHead + `[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }]
min_version = "1.4"
max_version = "tls1.3"
` + tlsBackend, []string{`tls.toml:5: rules[0].tls.min_version: unknown TLS version "1.4"`, `tls.toml:6: rules[0].tls.max_version: unknown TLS version "tls1.3"`}},
		{"min above max", tlsRuleHead + `[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }]
min_version = "1.3"
max_version = "1.2"
` + tlsBackend, []string{`tls.toml:5: rules[0].tls.min_version: "1.3" is above max_version "1.2"`}},
		{"client_auth without CA", tlsRuleHead + `[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }]
client_auth = "require"
` + tlsBackend, []string{`tls.toml:5: rules[0].tls.client_auth: "require" needs client_ca`}},
		{"client_ca without client_auth", tlsRuleHead + `[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }]
client_ca = "cfg-ca.pem"
` + tlsBackend, []string{`tls.toml:5: rules[0].tls.client_ca: is set but client_auth is "none"`}},
		{"bad client_auth and CA", tlsRuleHead + `[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }]
client_auth = "optional"
` + tlsBackend, []string{`rules[0].tls.client_auth: must be "none", "request" or "require"; got "optional"`}},
		{"missing files and mismatch", tlsRuleHead + `[rules.tls]

[[rules.tls.certificates]]
cert = "nope.pem"
key = "site-key.pem"

[[rules.tls.certificates]]
cert = "site.pem"
key = "other-key.pem"

[[rules.tls.certificates]]
cert = "expired.pem"
key = "expired-key.pem"

[[rules.tls.certificates]]
cert = "site.pem"
` + tlsBackend, []string{
			"tls.toml:6: rules[0].tls.certificates[0].cert: " + filepath.Join(f.dir, "nope.pem") + ": no such file or directory",
			"tls.toml:11: rules[0].tls.certificates[1].key: " + filepath.Join(f.dir, "other-key.pem") + ": private key does not match the certificate",
			"tls.toml:14: rules[0].tls.certificates[2].cert: " + filepath.Join(f.dir, "expired.pem") + ": certificate has expired",
			"tls.toml:17: rules[0].tls.certificates[3].key: missing",
		}},
		{"tls on a udp rule", tlsRuleHead + `protocol = "udp"
[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }]
[rules.backend_tls]
ca = "cfg-ca.pem"
` + tlsBackend + "tls = { ca = \"cfg-ca.pem\" }\n", []string{
			"tls.toml:4: rules[0].tls: TLS termination needs a TCP rule",
			"tls.toml:6: rules[0].backend_tls: TLS to backends needs a TCP rule",
			"rules[0].backends[0].tls: TLS to backends needs a TCP rule",
		}},
		{"backend tls files", tlsRuleHead + `[rules.backend_tls]
ca = "site-key.pem"
cert = "client.pem"
min_version = "1.9"
` + tlsBackend, []string{
			"tls.toml:4: rules[0].backend_tls.ca: " + filepath.Join(f.dir, "site-key.pem") + ": no PEM certificate in it",
			"tls.toml:3: rules[0].backend_tls.key: missing",
			`tls.toml:6: rules[0].backend_tls.min_version: unknown TLS version "1.9"`,
		}},
		{"ranges and unknown keys", tlsRuleHead + `[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }]
session_ticket_rotation = "10s"
session_ticket_keys = 0
alpn = [""]
sni = true
` + tlsBackend, []string{
			"tls.toml:5: rules[0].tls.session_ticket_rotation: must be from 1m0s to 168h0m0s",
			"tls.toml:6: rules[0].tls.session_ticket_keys: must be from 1 to 16",
			"rules[0].tls.alpn[0]: an ALPN protocol id is 1 to 255 bytes",
			`tls.toml:8: rules[0].tls.sni: unknown key "sni"`,
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.parse(t, c.toml)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("no problem %q in:\n%v", w, err)
				}
			}
		})
	}
}

// TestTLSWarnings: a certificate expiring within 14 days and
// insecure_skip_verify load, with a warning each.
func TestTLSWarnings(t *testing.T) {
	f := newTLSFixture(t)
	cfg, err := f.parse(t, tlsRuleHead+`[rules.tls]
certificates = [{ cert = "site.pem", key = "site-key.pem" }, { cert = "soon.pem", key = "soon-key.pem" }]
[rules.backend_tls]
insecure_skip_verify = true
`+tlsBackend)
	if err != nil {
		t.Fatal(err)
	}
	var ws []string
	for _, w := range cfg.Warnings {
		ws = append(ws, w.String())
	}
	all := strings.Join(ws, "\n")
	for _, w := range []string{"tls.toml:4: rules[0].tls.certificates[1].cert: certificate soon.pem ([soon.test]) expires in 4d23h",
		"tls.toml:6: rules[0].backend_tls.insecure_skip_verify: insecure_skip_verify = true"} {
		if !strings.Contains(all, w) {
			t.Errorf("no warning %q in:\n%s", w, all)
		}
	}
	if strings.Contains(all, "site.pem") {
		t.Errorf("a certificate valid for 90 days is warned about:\n%s", all)
	}
}
