package proxy

import (
	"net/netip"
	"testing"
)

func TestAccessAllowDeny(t *testing.T) {
	a := &Access{
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/24"), netip.MustParsePrefix("::1/128")},
		Deny:  []netip.Prefix{netip.MustParsePrefix("127.0.0.66/32")},
	}
	for ip, want := range map[string]Reason{
		"127.0.0.1":         ReasonNone,
		"127.0.0.66":        ReasonDenied,
		"127.0.1.1":         ReasonDenied,
		"::1":               ReasonNone,
		"::ffff:127.0.0.5":  ReasonNone,
		"::ffff:127.0.0.66": ReasonDenied,
		"2001:db8::1":       ReasonDenied,
	} {
		release, reason := a.Admit(netip.MustParseAddr(ip))
		if reason != want {
			t.Errorf("%s: reason %v, want %v", ip, reason, want)
		}
		if release != nil {
			release()
		}
	}
	var nilAccess *Access
	if _, reason := nilAccess.Admit(netip.MustParseAddr("10.0.0.1")); reason != ReasonNone {
		t.Fatal("nil access refused")
	}
}

func TestAccessPerIPLimits(t *testing.T) {
	a := &Access{MaxPerIP: 2}
	ip, other := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	r1, _ := a.Admit(ip)
	r2, _ := a.Admit(ip)
	if _, reason := a.Admit(ip); reason != ReasonPerIPLimit {
		t.Fatalf("third concurrent: %q", reason)
	}
	if r, reason := a.Admit(other); reason != ReasonNone {
		t.Fatalf("other address refused: %q", reason)
	} else {
		r()
	}
	r1()
	if r, reason := a.Admit(ip); reason != ReasonNone {
		t.Fatalf("after a release: %q", reason)
	} else {
		r()
	}
	r2()

	b := &Access{Rate: 0.001, Burst: 3}
	for i := 0; i < 3; i++ {
		r, reason := b.Admit(ip)
		if reason != ReasonNone {
			t.Fatalf("burst %d refused: %q", i, reason)
		}
		r()
	}
	if _, reason := b.Admit(ip); reason != ReasonRateLimited {
		t.Fatalf("beyond the burst: %q", reason)
	}
}

func TestAccessSweepBoundsState(t *testing.T) {
	a := &Access{MaxPerIP: 1}
	for i := 0; i < 10000; i++ {
		ip := netip.AddrFrom4([4]byte{127, byte(i >> 16), byte(i >> 8), byte(i)})
		r, _ := a.Admit(ip)
		r()
	}
	if n := len(a.clients); n > 2048 {
		t.Fatalf("%d idle clients kept", n)
	}
}

func TestMatchers(t *testing.T) {
	ci := &ConnInfo{Client: netip.MustParseAddrPort("127.0.0.9:5000"), SNI: "api.example.com", ALPN: []string{"h2"}, Host: ""}
	sni := MatchSNI{NewNameSet([]string{"*.Example.com"})}
	cases := []struct {
		m    Matcher
		want bool
	}{
		{MatchAny{}, true},
		{sni, true},
		{MatchSNI{NewNameSet([]string{"example.com"})}, false},
		{MatchSNI{NewNameSet([]string{"*.example.com"})}, true},
		{MatchSNI{NewNameSet([]string{"*.api.example.com"})}, false},
		{MatchALPN{[]string{"http/1.1", "h2"}}, true},
		{MatchALPN{[]string{"http/1.1"}}, false},
		{MatchHost{NewNameSet([]string{"api.example.com"})}, false},
		{MatchSource{[]netip.Prefix{netip.MustParsePrefix("127.0.0.0/29")}}, false},
		{MatchSource{[]netip.Prefix{netip.MustParsePrefix("127.0.0.8/29")}}, true},
		{MatchAll{sni, MatchALPN{[]string{"h2"}}}, true},
		{MatchAll{sni, MatchALPN{[]string{"x"}}}, false},
		{MatchOneOf{MatchALPN{[]string{"x"}}, sni}, true},
		{MatchOneOf{}, false},
	}
	for i, c := range cases {
		if got := c.m.Match(ci); got != c.want {
			t.Errorf("case %d (%T): %v, want %v", i, c.m, got, c.want)
		}
	}
	if (MatchAll{sni, MatchHost{}}).Needs() != NeedTLS|NeedHTTP {
		t.Fatal("needs not combined")
	}
}
