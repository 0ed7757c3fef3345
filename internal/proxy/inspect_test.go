package proxy

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/pires/go-proxyproto"
)

func header(t testing.TB, version byte, src string) []byte {
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443})
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadProxyHeader(t *testing.T) {
	for _, v := range []byte{1, 2} {
		data := append(header(t, v, "127.9.8.7:4242"), "hello"...)
		client, rest, err := readProxyHeader(bytes.NewReader(data))
		if err != nil || client.String() != "127.9.8.7:4242" || string(rest) != "hello" {
			t.Errorf("v%d: %v %q %v", v, client, rest, err)
		}
	}
	for _, bad := range []string{"PROXY GARBAGE\r\n", "GET / HTTP/1.1\r\n\r\n", "\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"} {
		if _, _, err := readProxyHeader(bytes.NewReader([]byte(bad))); !errors.Is(err, ErrBadProxyHeader) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// FuzzReadProxyHeader: any input gives a header or ErrBadProxyHeader, never a
// panic, and the bytes after a header are never lost.
func FuzzReadProxyHeader(f *testing.F) {
	f.Add(append(header(f, 1, "127.0.0.2:1"), "x"...))
	f.Add(append(header(f, 2, "[::1]:2"), "yz"...))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		_, rest, err := readProxyHeader(r)
		if err != nil {
			if !errors.Is(err, ErrBadProxyHeader) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		// What follows the header is rest, then what is still unread: no
		// byte of the stream may be lost.
		unread := data[len(data)-r.Len():]
		if !bytes.HasSuffix(data, append(append([]byte{}, rest...), unread...)) {
			t.Fatalf("bytes after the header lost: rest %q, unread %q", rest, unread)
		}
	})
}
