package acme

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

func newTestManager(t *testing.T) *Manager {
	t.Helper()
	m, err := NewManager(Options{Directory: "https://127.0.0.1:1/dir", Challenges: []string{ChallengeTLSALPN},
		Storage: &certmagic.FileStorage{Path: t.TempDir()}, RenewCheckInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// TestRuleKeptWhileUnchanged: the plan gets the running Rule back while
// its names (case and trailing dot aside) and listener are the same, a
// new one otherwise; a Rule not committed is not running.
func TestRuleKeptWhileUnchanged(t *testing.T) {
	m := newTestManager(t)
	r := m.Rule("web", []string{"A.example.com.", "b.example.com"}, "127.0.0.1:443")
	if got := r.Names(); strings.Join(got, " ") != "a.example.com b.example.com" {
		t.Errorf("names = %v", got)
	}
	m.mu.Lock()
	m.rules["web"] = r // committed, without ordering anything
	m.mu.Unlock()
	if m.Rule("web", []string{"a.example.com", "b.example.com"}, "127.0.0.1:443") != r {
		t.Error("the same names and listener gave a new Rule")
	}
	if m.Rule("web", []string{"a.example.com"}, "127.0.0.1:443") == r || m.Rule("web", []string{"a.example.com", "b.example.com"}, "127.0.0.1:8443") == r {
		t.Error("other names or another listener kept the Rule")
	}
}

// TestCertificateBeforeOrder: a handshake before the first certificate
// fails with a message that says so; a validation for a name the rule
// does not manage is refused.
func TestCertificateBeforeOrder(t *testing.T) {
	m := newTestManager(t)
	r := m.Rule("web", []string{"a.example.com"}, "127.0.0.1:443")
	if _, err := r.Certificate(&tls.ClientHelloInfo{ServerName: "other.example.com"}); err == nil || !strings.Contains(err.Error(), "no certificate for a.example.com yet") {
		t.Errorf("before the order: %v (want the default name's message)", err)
	}
	if _, err := r.Challenge(&tls.ClientHelloInfo{ServerName: "evil.example.com", SupportedProtos: []string{"acme-tls/1"}}); err == nil {
		t.Error("a validation for an unmanaged name was answered")
	}
	if len(r.Certificates()) != 0 {
		t.Error("certificates listed before any was obtained")
	}
}

// TestNextRenewal: a third of the lifetime left, or five check intervals
// before expiry when that is sooner.
func TestNextRenewal(t *testing.T) {
	m := newTestManager(t) // check interval 1m
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(90 * 24 * time.Hour)}
	if got, want := m.nextRenewal(leaf), nb.Add(60*24*time.Hour); !got.Equal(want) {
		t.Errorf("90 days: %v, want %v", got, want)
	}
	leaf = &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(6 * time.Minute)}
	if got, want := m.nextRenewal(leaf), nb.Add(time.Minute); !got.Equal(want) {
		t.Errorf("6 minutes: %v, want %v (5 check intervals before expiry)", got, want)
	}
}
