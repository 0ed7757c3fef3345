//go:build linux

package eventloop

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPktinfoRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		family int
		addr   string
	}{{2, "127.0.0.5"}, {10, "::ffff:127.0.0.5"}, {10, "fe80::1"}, {10, "2001:db8::1"}} {
		local := netip.MustParseAddr(tc.addr)
		var oob [64]byte
		n := PutPktinfo(oob[:], tc.family, local, 7)
		got, ifindex, ok := ParsePktinfo(oob[:n])
		want := local
		if tc.family == 2 {
			want = local.Unmap()
		}
		if !ok || got != want {
			t.Errorf("%s: parsed %v ok=%v, want %v", tc.addr, got, ok, want)
		}
		if wantIf := uint32(0); local.IsLinkLocalUnicast() && ifindex != 7 || !local.IsLinkLocalUnicast() && ifindex != wantIf {
			t.Errorf("%s: ifindex %d", tc.addr, ifindex)
		}
	}
}

func TestSockaddrRoundTrip(t *testing.T) {
	for _, s := range []string{"127.0.0.1:53", "[::1]:8080", "[::ffff:127.0.0.2]:9"} {
		ap := netip.MustParseAddrPort(s)
		var sa unix.RawSockaddrInet6
		PutSockaddr(&sa, AddrFamily(ap), ap)
		want := ap
		if AddrFamily(ap) == unix.AF_INET {
			want = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		if got := SockaddrAddrPort(&sa); got != want {
			t.Errorf("%s: decoded %v, want %v", s, got, want)
		}
	}
}
