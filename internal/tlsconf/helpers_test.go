package tlsconf

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// deadline bounds every wait of these tests; generous for a busy 2-core machine.
const deadline = 30 * time.Second

// handshake is one result an observer was told.
type handshake struct {
	version uint16
	resumed bool
	err     error
}

type recorder struct{ ch chan handshake }

func newRecorder() *recorder { return &recorder{ch: make(chan handshake, 64)} }

func (r *recorder) Handshake(version uint16, resumed bool, _ time.Duration, err error) {
	r.ch <- handshake{version, resumed, err}
}

// next waits for the next handshake the server ran.
func (r *recorder) next(t *testing.T) handshake {
	t.Helper()
	select {
	case h := <-r.ch:
		return h
	case <-time.After(deadline):
		t.Fatal("no handshake reported")
		return handshake{}
	}
}

// serve terminates TLS with s on a loopback listener: each connection is
// handshaken, greeted with "hello\n", then echoes what it reads until the
// client says "bye". It returns the address.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc, err := s.Handshake(context.Background(), c)
				if err != nil {
					return
				}
				defer tc.Close() // close_notify first, so s_client sees a clean end
				if _, err := tc.Write([]byte("hello\n")); err != nil {
					return
				}
				r := bufio.NewReader(tc)
				for {
					line, err := r.ReadString('\n')
					if err != nil || line == "bye\n" {
						return
					}
					if _, err := tc.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// sClient runs openssl s_client against addr with args, saying "bye"
// once connected; with -ign_eof it reads until the server closes. It returns what
// s_client printed and its error.
func sClient(t *testing.T, addr string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	argv := append([]string{"s_client", "-connect", addr, "-ign_eof"}, args...)
	cmd := exec.CommandContext(ctx, "openssl", argv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Stdin = strings.NewReader("bye\n")
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("openssl %s: timed out\n%s", strings.Join(argv, " "), out.String())
	}
	return out.String(), err
}

// servedSerial is the serial of the server certificate s_client printed.
func servedSerial(t *testing.T, out string) string {
	t.Helper()
	i := strings.Index(out, "-----BEGIN CERTIFICATE-----")
	if i < 0 {
		t.Fatalf("s_client printed no certificate:\n%s", out)
	}
	block, _ := pem.Decode([]byte(out[i:]))
	if block == nil {
		t.Fatalf("bad PEM in s_client output:\n%s", out)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return Serial(c)
}

var errNoOpenSSL = errors.New("openssl not installed")

func needOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal(errNoOpenSSL, "(the Debian package openssl; scripts/test.sh installs it)")
	}
}

type netDialer struct{}

func (netDialer) dial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, deadline) }
