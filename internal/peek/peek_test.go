package peek

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// captureHello returns the bytes a real crypto/tls client sends first.
func captureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		c := tls.Client(client, cfg)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Handshake()
		client.Close()
	}()
	buf := make([]byte, 0, 4096)
	tmp := make([]byte, 4096)
	server.SetDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := server.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if _, perr := ClientHello(buf); !errors.Is(perr, ErrNeedMore) || err != nil {
			return buf
		}
	}
}

func TestClientHelloFromRealClient(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "API.Example.com", NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true})
	h, err := ClientHello(hello)
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "api.example.com" || len(h.ALPN) != 2 || h.ALPN[0] != "h2" {
		t.Fatalf("got %+v", h)
	}
	// Every strict prefix asks for more; never a wrong answer.
	for i := 0; i < len(hello); i++ {
		if _, err := ClientHello(hello[:i]); !errors.Is(err, ErrNeedMore) {
			t.Fatalf("prefix %d/%d: %v", i, len(hello), err)
		}
	}
	// Bytes after the hello (a pipelined client) do not matter.
	if h2, err := ClientHello(append(append([]byte{}, hello...), 1, 2, 3)); err != nil || h2.ServerName != "api.example.com" {
		t.Fatalf("with trailing bytes: %+v %v", h2, err)
	}
	writeSeed(t, "FuzzClientHello", hello)
}

func TestClientHelloNoSNI(t *testing.T) {
	h, err := ClientHello(captureHello(t, &tls.Config{InsecureSkipVerify: true}))
	if err != nil || h.ServerName != "" {
		t.Fatalf("got %+v %v", h, err)
	}
}

func TestClientHelloRejects(t *testing.T) {
	for name, data := range map[string][]byte{
		"http":        []byte("GET / HTTP/1.1\r\n"),
		"ssh":         []byte("SSH-2.0-OpenSSH\r\n"),
		"alert":       {0x15, 3, 1, 0, 2, 1, 0},
		"zero length": {0x16, 3, 1, 0, 0},
		"not hello":   {0x16, 3, 1, 0, 4, 2, 0, 0, 0},
	} {
		if _, err := ClientHello(data); err == nil || errors.Is(err, ErrNeedMore) {
			t.Errorf("%s: got %v, want a definite error", name, err)
		}
	}
}

func TestHTTPHost(t *testing.T) {
	cases := []struct {
		in   string
		host string
		err  error
	}{
		{"GET / HTTP/1.1\r\nHost: Example.COM:8080\r\nUser-Agent: x\r\n\r\n", "example.com", nil},
		{"POST /x HTTP/1.0\r\nHost: a.b\r\n\r\nbody", "a.b", nil},
		{"GET / HTTP/1.1\r\nHost: a", "", ErrNeedMore},
		{"GE", "", ErrNeedMore},
		{"\x16\x03\x01", "", ErrNotHTTP},
		{"HELLO\r\n\r\n", "", ErrNotHTTP},
	}
	for _, c := range cases {
		got, err := HTTPHost([]byte(c.in))
		if got != c.host || !errors.Is(err, c.err) && !(c.err == nil && err == nil) {
			t.Errorf("HTTPHost(%q) = %q, %v; want %q, %v", c.in, got, err, c.host, c.err)
		}
	}
	writeSeed(t, "FuzzHTTPHost", []byte(cases[0].in))
}

func TestHTTPHeadTooLarge(t *testing.T) {
	big := append([]byte("GET / HTTP/1.1\r\nX: "), make([]byte, MaxHTTPHead)...)
	if _, err := HTTPHost(big); err == nil || errors.Is(err, ErrNeedMore) {
		t.Fatalf("got %v", err)
	}
}

// writeSeed keeps a real message in the fuzz seed corpus (testdata/fuzz),
// refreshed when the test runs with -update-seeds.
func writeSeed(t testing.TB, fuzz string, data []byte) {
	if os.Getenv("UPDATE_SEEDS") == "" {
		return
	}
	dir := filepath.Join("testdata", "fuzz", fuzz)
	os.MkdirAll(dir, 0o755)
	content := "go test fuzz v1\n[]byte(" + quote(data) + ")\n"
	if err := os.WriteFile(filepath.Join(dir, "real"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func quote(b []byte) string {
	s := "\""
	for _, c := range b {
		s += "\\x" + string("0123456789abcdef"[c>>4]) + string("0123456789abcdef"[c&15])
	}
	return s + "\""
}

func FuzzClientHello(f *testing.F) {
	f.Add([]byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ClientHello(data)
		if err == nil && h == nil {
			t.Fatal("nil hello without error")
		}
		// A complete answer stays the same with more bytes appended.
		if err == nil {
			h2, err2 := ClientHello(append(append([]byte{}, data...), 0xff))
			if err2 != nil || h2.ServerName != h.ServerName {
				t.Fatalf("answer changed with a trailing byte: %v", err2)
			}
		}
	})
}

func FuzzHTTPHost(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		host, err := HTTPHost(data)
		if err != nil && host != "" {
			t.Fatal("host with error")
		}
	})
}
