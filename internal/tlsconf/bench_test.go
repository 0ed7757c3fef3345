package tlsconf

import (
	"crypto/tls"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// BenchmarkCertificatePick is the SNI choice among 50 certificates, run
// once per full handshake.
func BenchmarkCertificatePick(b *testing.B) {
	dir := b.TempDir()
	ca := tlstest.NewCA(b, dir, "bench")
	var pairs []Pair
	for i := range 50 {
		l := ca.Issue(dir, "c"+string(rune('a'+i%26))+string(rune('a'+i/26)), tlstest.Options{
			DNSNames: []string{"host" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".example.com", "*.w" + string(rune('a'+i%26)) + ".example.com"}})
		pairs = append(pairs, Pair{l.CertFile, l.KeyFile})
	}
	s, err := NewServer(ServerOptions{Name: "bench", Certificates: pairs}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	cfg, _ := s.Config().GetConfigForClient(&tls.ClientHelloInfo{})
	for _, c := range []struct{ name, sni string }{
		{"exact", "hostqa.example.com"},
		{"wildcard", "x.wz.example.com"}, // one certificate holds *.wz
		// *.wq is in two certificates: the first the client supports wins
		{"shared-wildcard", "x.wq.example.com"},
		{"default", "unknown.example.org"},
	} {
		hello := &tls.ClientHelloInfo{ServerName: c.sni, SupportedVersions: []uint16{tls.VersionTLS13},
			SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}, SupportedCurves: []tls.CurveID{tls.CurveP256}}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cfg.GetCertificate(hello); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
