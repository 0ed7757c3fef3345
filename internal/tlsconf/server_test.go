package tlsconf

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startServer(t *testing.T, o ServerOptions, obs Observer) *Server {
	t.Helper()
	s, err := NewServer(o, nil, obs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// TestSNIChoosesAmongThreeAndTheDefault: openssl s_client gets the
// certificate of the name it asks for: exact, wildcard, CN-only; and the
// default (the first) without SNI or with an unknown name.
func TestSNIChoosesAmongThreeAndTheDefault(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "sni")
	def := ca.Issue(dir, "default", tlstest.Options{DNSNames: []string{"default.test"}})
	a := ca.Issue(dir, "a", tlstest.Options{DNSNames: []string{"a.example.com"}})
	wild := ca.Issue(dir, "wild", tlstest.Options{DNSNames: []string{"*.b.example.com"}, RSA: true})
	cn := ca.Issue(dir, "cn", tlstest.Options{CommonName: "c.example.com"})
	s := startServer(t, ServerOptions{Name: "sni", Certificates: []Pair{
		{def.CertFile, def.KeyFile}, {a.CertFile, a.KeyFile}, {wild.CertFile, wild.KeyFile}, {cn.CertFile, cn.KeyFile},
	}}, nil)
	addr := serve(t, s)
	for _, c := range []struct {
		sni  string
		want *tlstest.Leaf
	}{
		{"a.example.com", a},
		{"A.Example.COM", a},
		{"x.b.example.com", wild},
		{"b.example.com", def}, // a wildcard does not cover its own domain
		{"y.x.b.example.com", def},
		{"c.example.com", cn},
		{"unknown.example.org", def},
		{"", def},
	} {
		args := []string{"-servername", c.sni}
		if c.sni == "" {
			args = []string{"-noservername"}
		}
		out, err := sClient(t, addr, args...)
		if err != nil {
			t.Fatalf("sni %q: %v\n%s", c.sni, err, out)
		}
		if got, want := servedSerial(t, out), Serial(c.want.Cert); got != want {
			t.Errorf("sni %q: served serial %s, want %s", c.sni, got, want)
		}
		if !strings.Contains(out, "hello") {
			t.Errorf("sni %q: no greeting through the TLS connection:\n%s", c.sni, out)
		}
	}
	info := s.Certificates()
	if len(info) != 4 || !info[0].Default || info[1].Default || info[2].Names[0] != "*.b.example.com" || info[3].Names[0] != "c.example.com" {
		t.Errorf("Certificates() = %+v", info)
	}
	if info[1].Serial != Serial(a.Cert) || !info[1].NotAfter.Equal(a.Cert.NotAfter) {
		t.Errorf("Certificates()[1] = %+v, want serial %s not after %v", info[1], Serial(a.Cert), a.Cert.NotAfter)
	}
}

// TestClientAuth: with client_auth = "require", s_client with a
// certificate from the CA is served and one without is refused; "request"
// serves both but verifies a certificate given.
func TestClientAuth(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "srv")
	clients := tlstest.NewCA(t, dir, "clients")
	other := tlstest.NewCA(t, dir, "other")
	srv := ca.Issue(dir, "srv", tlstest.Options{DNSNames: []string{"mtls.test"}})
	good := clients.Issue(dir, "good", tlstest.Options{CommonName: "good client", Client: true})
	bad := other.Issue(dir, "bad", tlstest.Options{CommonName: "stranger", Client: true})

	for _, mode := range []ClientAuth{ClientAuthRequire, ClientAuthRequest} {
		rec := newRecorder()
		s := startServer(t, ServerOptions{Name: "mtls", Certificates: []Pair{{srv.CertFile, srv.KeyFile}},
			ClientAuth: mode, ClientCA: clients.CAFile}, rec)
		addr := serve(t, s)
		for _, c := range []struct {
			name   string
			args   []string
			accept bool
		}{
			{"trusted certificate", []string{"-cert", good.CertFile, "-key", good.KeyFile}, true},
			{"no certificate", nil, mode == ClientAuthRequest},
			{"untrusted certificate", []string{"-cert", bad.CertFile, "-key", bad.KeyFile}, false},
		} {
			out, _ := sClient(t, addr, append([]string{"-servername", "mtls.test"}, c.args...)...)
			h := rec.next(t)
			if c.accept != (h.err == nil) {
				t.Errorf("%s, %s: server handshake error %v, want accepted %v\n%s", mode, c.name, h.err, c.accept, out)
			}
			if c.accept != strings.Contains(out, "hello") {
				t.Errorf("%s, %s: client saw the greeting %v, want %v\n%s", mode, c.name, !c.accept, c.accept, out)
			}
		}
	}
}

// TestTLS11RefusedByDefault: s_client -tls1_1 is refused with the default
// min_version, and served once min_version = 1.1 (so the client can speak it).
func TestTLS11RefusedByDefault(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "v")
	leaf := ca.Issue(dir, "v", tlstest.Options{DNSNames: []string{"v.test"}})
	args := []string{"-servername", "v.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"}

	rec := newRecorder()
	addr := serve(t, startServer(t, ServerOptions{Name: "v", Certificates: []Pair{{leaf.CertFile, leaf.KeyFile}}}, rec))
	out, err := sClient(t, addr, args...)
	if h := rec.next(t); err == nil || h.err == nil || !strings.Contains(h.err.Error(), "version") {
		t.Errorf("TLS 1.1 client: s_client error %v, server error %v; want both refused for the version\n%s", err, h.err, out)
	}
	out, err = sClient(t, addr, "-servername", "v.test", "-tls1_2")
	if h := rec.next(t); err != nil || h.err != nil || h.version != tls.VersionTLS12 {
		t.Errorf("TLS 1.2 client: s_client %v, server %+v\n%s", err, h, out)
	}

	rec11 := newRecorder()
	addr11 := serve(t, startServer(t, ServerOptions{Name: "v11", Certificates: []Pair{{leaf.CertFile, leaf.KeyFile}},
		MinVersion: tls.VersionTLS11}, rec11))
	out, err = sClient(t, addr11, args...)
	if h := rec11.next(t); err != nil || h.err != nil || h.version != tls.VersionTLS11 {
		t.Errorf("min_version 1.1: s_client %v, server %+v\n%s", err, h, out)
	}
	if !strings.Contains(out, "Protocol  : TLSv1.1") && !strings.Contains(out, "TLSv1.1") {
		t.Errorf("min_version 1.1: s_client did not report TLSv1.1:\n%s", out)
	}
}

// TestALPNNegotiated: the protocol the server offers that the client
// prefers is the one s_client reports.
func TestALPNNegotiated(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "alpn")
	leaf := ca.Issue(dir, "alpn", tlstest.Options{DNSNames: []string{"alpn.test"}})
	addr := serve(t, startServer(t, ServerOptions{Name: "alpn", Certificates: []Pair{{leaf.CertFile, leaf.KeyFile}},
		ALPN: []string{"h2", "http/1.1"}}, nil))
	for alpn, want := range map[string]string{"h2,http/1.1": "h2", "http/1.1": "http/1.1", "x-unknown": ""} {
		out, err := sClient(t, addr, "-servername", "alpn.test", "-alpn", alpn)
		switch {
		case want != "" && (err != nil || !strings.Contains(out, "ALPN protocol: "+want)):
			t.Errorf("client offers %s: want ALPN %s, s_client %v:\n%s", alpn, want, err, out)
		case want == "" && err == nil && strings.Contains(out, "ALPN protocol:"):
			t.Errorf("client offers %s: want no protocol (or a refusal):\n%s", alpn, out)
		}
	}
}

// swapDir lays out files as a Kubernetes secret does: name -> ..data/name,
// ..data -> ..VERSION, and returns a function that atomically points
// ..data at a new version directory holding the given files.
func k8sSecret(t *testing.T, dir string, names ...string) func(files map[string]string) {
	t.Helper()
	version := 0
	swap := func(files map[string]string) {
		version++
		vdir := filepath.Join(dir, "..v"+string(rune('0'+version)))
		if err := os.Mkdir(vdir, 0o700); err != nil {
			t.Fatal(err)
		}
		for name, src := range files {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(vdir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(vdir), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	return swap
}

// TestSymlinkSwapReload: certificates read through a Kubernetes-style
// ..data link; after the link is swapped and Reload runs, a new connection
// sees the new serial while a connection opened before goes on byte-exact.
// Watched lists the links and the directories to watch.
func TestSymlinkSwapReload(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	gen := t.TempDir()
	ca := tlstest.NewCA(t, gen, "swap")
	v1 := ca.Issue(gen, "v1", tlstest.Options{DNSNames: []string{"swap.test"}})
	v2 := ca.Issue(gen, "v2", tlstest.Options{DNSNames: []string{"swap.test"}})
	secret := filepath.Join(dir, "secret")
	if err := os.Mkdir(secret, 0o700); err != nil {
		t.Fatal(err)
	}
	swap := k8sSecret(t, secret, "tls.crt", "tls.key")
	swap(map[string]string{"tls.crt": v1.CertFile, "tls.key": v1.KeyFile})
	pair := Pair{filepath.Join(secret, "tls.crt"), filepath.Join(secret, "tls.key")}
	s := startServer(t, ServerOptions{Name: "swap", Certificates: []Pair{pair}}, nil)
	addr := serve(t, s)

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	open, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "swap.test", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	r := bufio.NewReader(open)
	if line, err := r.ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	if got := Serial(open.ConnectionState().PeerCertificates[0]); got != Serial(v1.Cert) {
		t.Fatalf("first serial %s, want %s", got, Serial(v1.Cert))
	}

	swap(map[string]string{"tls.crt": v2.CertFile, "tls.key": v2.KeyFile})
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	out, err := sClient(t, addr, "-servername", "swap.test")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := servedSerial(t, out); got != Serial(v2.Cert) {
		t.Errorf("after the swap a new connection got serial %s, want %s", got, Serial(v2.Cert))
	}

	// The connection opened before the swap still works, byte-exact.
	payload := strings.Repeat("0123456789abcdef", 4096) + "\n"
	go func() { _, _ = open.Write([]byte(payload)) }()
	got, err := r.ReadString('\n')
	if err != nil || got != payload {
		t.Fatalf("open stream after the reload: %d bytes back of %d, %v", len(got), len(payload), err)
	}
}

// TestBadReloadKeepsTheOldCertificate: a key that does not match, an
// unreadable file, an expired certificate and a broken default each fail
// the reload with the file and the reason, and the old certificate is
// still what openssl gets.
func TestBadReloadKeepsTheOldCertificate(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "bad")
	good := ca.Issue(dir, "good", tlstest.Options{DNSNames: []string{"bad.test"}})
	other := ca.Issue(dir, "other", tlstest.Options{DNSNames: []string{"bad.test"}})
	expired := ca.Issue(dir, "expired", tlstest.Options{DNSNames: []string{"bad.test"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	second := ca.Issue(dir, "second", tlstest.Options{DNSNames: []string{"second.test"}})

	live := Pair{filepath.Join(dir, "live.pem"), filepath.Join(dir, "live-key.pem")}
	livesecond := Pair{filepath.Join(dir, "live2.pem"), filepath.Join(dir, "live2-key.pem")}
	put := func(dst, src string) {
		t.Helper()
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	put(live.Cert, good.CertFile)
	put(live.Key, good.KeyFile)
	put(livesecond.Cert, second.CertFile)
	put(livesecond.Key, second.KeyFile)
	s := startServer(t, ServerOptions{Name: "bad", Certificates: []Pair{live, livesecond}}, nil)
	addr := serve(t, s)

	for _, c := range []struct {
		name    string
		break_  func()
		file    string
		reason  string
		errIs   error
		restore func()
	}{
		{"key does not match", func() { put(live.Key, other.KeyFile) }, live.Key, "does not match", ErrKeyMismatch,
			func() { put(live.Key, good.KeyFile) }},
		{"expired certificate", func() { put(live.Cert, expired.CertFile); put(live.Key, expired.KeyFile) }, live.Cert, "expired", ErrExpired,
			func() { put(live.Cert, good.CertFile); put(live.Key, good.KeyFile) }},
		{"unreadable file", func() { os.Remove(livesecond.Key) }, livesecond.Key, "no such file", nil,
			func() { put(livesecond.Key, second.KeyFile) }},
		{"garbage certificate", func() { os.WriteFile(live.Cert, []byte("not a PEM\n"), 0o600) }, live.Cert, "certificate", nil,
			func() { put(live.Cert, good.CertFile) }},
	} {
		c.break_()
		err := s.Reload()
		if err == nil {
			t.Fatalf("%s: reload accepted", c.name)
		}
		if !strings.Contains(err.Error(), c.file) || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: error %q, want the file %s and %q", c.name, err, c.file, c.reason)
		}
		if c.errIs != nil && !errors.Is(err, c.errIs) {
			t.Errorf("%s: error %v is not %v", c.name, err, c.errIs)
		}
		if c.file == live.Cert || c.file == live.Key {
			if !strings.Contains(err.Error(), "default certificate") {
				t.Errorf("%s: error %q does not say the default certificate is at fault", c.name, err)
			}
		}
		out, err := sClient(t, addr, "-servername", "bad.test")
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, out)
		}
		if got := servedSerial(t, out); got != Serial(good.Cert) {
			t.Errorf("%s: after the refused reload serial %s is served, want the old %s", c.name, got, Serial(good.Cert))
		}
		c.restore()
	}
	// Fixed, the reload goes through.
	put(live.Cert, other.CertFile)
	put(live.Key, other.KeyFile)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	out, _ := sClient(t, addr, "-servername", "bad.test")
	if got := servedSerial(t, out); got != Serial(other.Cert) {
		t.Errorf("after a good reload serial %s, want %s", got, Serial(other.Cert))
	}
}

// TestNewServerRefusesBadOptions: errors name what is wrong.
func TestNewServerRefusesBadOptions(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "opt")
	leaf := ca.Issue(dir, "opt", tlstest.Options{DNSNames: []string{"opt.test"}})
	p := []Pair{{leaf.CertFile, leaf.KeyFile}}
	for _, c := range []struct {
		o    ServerOptions
		want string
	}{
		{ServerOptions{Name: "x"}, "no certificate"},
		{ServerOptions{Name: "x", Certificates: p, ClientAuth: ClientAuthRequire}, "needs a client_ca"},
		{ServerOptions{Name: "x", Certificates: p, ClientAuth: "maybe", ClientCA: ca.CAFile}, "unknown client_auth"},
		{ServerOptions{Name: "x", Certificates: p, ClientAuth: ClientAuthRequest, ClientCA: leaf.KeyFile}, "no PEM certificate"},
		{ServerOptions{Name: "x", Certificates: p, MinVersion: tls.VersionTLS13, MaxVersion: tls.VersionTLS12}, "above max_version"},
	} {
		_, err := NewServer(c.o, nil, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `rule "x"`) {
			t.Errorf("%+v: error %v, want %q", c.o, err, c.want)
		}
	}
}

// TestHandshakeFailureReported: a client that is not TLS fails the
// handshake, which the observer is told of; nothing else happens.
func TestHandshakeFailureReported(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "f")
	leaf := ca.Issue(dir, "f", tlstest.Options{DNSNames: []string{"f.test"}})
	rec := newRecorder()
	addr := serve(t, startServer(t, ServerOptions{Name: "f", Certificates: []Pair{{leaf.CertFile, leaf.KeyFile}}}, rec))
	c, err := (&netDialer{}).dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	h := rec.next(t)
	c.Close()
	if h.err == nil || h.version != 0 {
		t.Errorf("plain HTTP client: handshake %+v, want a failure", h)
	}
}

// TestPrepareThenCommit: a prepared server starts nothing and a refused
// Prepare of a running one changes nothing; Commit publishes.
func TestPrepareThenCommit(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "pc")
	one := ca.Issue(dir, "one", tlstest.Options{DNSNames: []string{"pc.test"}})
	two := ca.Issue(dir, "two", tlstest.Options{DNSNames: []string{"pc.test"}})
	st, err := PrepareServer(ServerOptions{Name: "pc", Certificates: []Pair{{one.CertFile, one.KeyFile}}, SessionTickets: true}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Server()
	if s.tickets != nil {
		t.Fatal("an uncommitted server runs its ticket rotation")
	}
	st.Commit()
	defer s.Close()
	if s.tickets == nil {
		t.Fatal("a committed server with tickets has no rotation")
	}
	next, err := s.Prepare(ServerOptions{Name: "pc", Certificates: []Pair{{two.CertFile, two.KeyFile}}, SessionTickets: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Certificates()[0].Serial; got != Serial(one.Cert) {
		t.Errorf("before Commit the server serves %s, want the old %s", got, Serial(one.Cert))
	}
	next.Commit()
	if got := s.Certificates()[0].Serial; got != Serial(two.Cert) {
		t.Errorf("after Commit the server serves %s, want %s", got, Serial(two.Cert))
	}
	if _, err := s.Prepare(ServerOptions{Name: "pc", Certificates: []Pair{{two.CertFile, one.KeyFile}}}); err == nil {
		t.Error("a mismatched pair was prepared")
	}
	if got := s.Certificates()[0].Serial; got != Serial(two.Cert) {
		t.Errorf("a refused Prepare changed the served certificate to %s", got)
	}
}
