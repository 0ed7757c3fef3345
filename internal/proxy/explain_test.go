package proxy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

func explainRoute(t *testing.T, name string, m Matcher, a *Access, ids ...string) *Route {
	t.Helper()
	var bs []*backend.Backend
	for i, id := range ids {
		bs = append(bs, backend.New(name, id, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(20000+i)).String(), 1, nil))
	}
	r, err := router.New("round_robin", nil, bs)
	if err != nil {
		t.Fatal(err)
	}
	return &Route{Name: name, Protocol: "tcp", RouterName: "rr", Plugin: "round_robin", Router: r, Backends: bs, Match: m, Access: a}
}

// TestExplainRules: every rule in order with why it did not match, the
// first that matches takes the connection, a later match is shadowed.
func TestExplainRules(t *testing.T) {
	routes := []*Route{
		explainRoute(t, "api", MatchSNI{Names: NewNameSet([]string{"api.example.com"})}, nil, "a1"),
		explainRoute(t, "web", MatchAll{MatchSNI{Names: NewNameSet([]string{"*.example.com"})}, MatchALPN{Protocols: []string{"h2"}}}, nil, "w1", "w2"),
		explainRoute(t, "rest", nil, nil, "r1"),
	}
	x := Explain("127.0.0.1:443", routes, ExplainQuery{Client: netip.MustParseAddrPort("10.1.2.3:5555"), SNI: "WWW.example.com", ALPN: []string{"h2"}})
	if x.Rule != "web" || x.Router == nil || x.Router.Chosen != "w1" || x.Access.Decision != "allow" {
		t.Fatalf("%+v", x)
	}
	want := []struct {
		matched, shadowed bool
		why               string
	}{
		{false, false, `sni "www.example.com" not in [api.example.com]`},
		{true, false, `all: sni "www.example.com" in [*.example.com]; alpn ["h2"] offers one of ["h2"]`},
		{true, true, `no matcher: every connection of the listener; but rule "web" comes first`},
	}
	for i, w := range want {
		r := x.Rules[i]
		if r.Matched != w.matched || r.Shadowed != w.shadowed || r.Why != w.why {
			t.Errorf("rule %s: %+v, want %+v", r.Name, r, w)
		}
	}
	x = Explain("l", routes[1:2], ExplainQuery{Client: netip.MustParseAddrPort("10.1.2.3:5555"), SNI: "www.example.com", ALPN: []string{"http/1.1"}})
	if x.Rule != "" || x.Rules[0].Why != `all: alpn ["http/1.1"] offers none of ["h2"]` || !strings.HasPrefix(x.Outcome, "no rule matches") {
		t.Fatalf("%+v", x)
	}
}

// TestExplainAccess: deny, allow lists and the per-address limits, read
// without taking a slot or a token.
func TestExplainAccess(t *testing.T) {
	a := &Access{Deny: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, MaxPerIP: 1, Rate: 0.001, Burst: 2}
	rt := explainRoute(t, "r", nil, a, "b")
	q := func(ip string) Explanation {
		return Explain("l", []*Route{rt}, ExplainQuery{Client: netip.AddrPortFrom(netip.MustParseAddr(ip), 1)})
	}
	if x := q("10.9.1.1"); x.Access.Decision != "deny" || x.Access.By != "deny 10.9.0.0/16" || x.Router != nil {
		t.Fatalf("denied: %+v", x.Access)
	}
	for range 5 { // dry runs take no token
		if x := q("10.1.1.1"); x.Access.Decision != "allow" || *x.Access.Tokens != 2 || *x.Access.Open != 0 {
			t.Fatalf("fresh address: %+v", x.Access)
		}
	}
	release, reason := a.Admit(netip.MustParseAddr("10.1.1.1"))
	if reason != ReasonNone {
		t.Fatal(reason)
	}
	if x := q("10.1.1.1"); x.Access.Decision != "limit" || !strings.Contains(x.Access.By, "max_connections_per_ip 1 reached (1 open)") {
		t.Fatalf("at the cap: %+v", x.Access)
	}
	release()
	a.Admit(netip.MustParseAddr("10.1.1.1")) // the second token (released at once below)
	a.mu.Lock()
	a.clients[netip.MustParseAddr("10.1.1.1")].conns = 0
	a.mu.Unlock()
	if x := q("10.1.1.1"); x.Access.Decision != "limit" || !strings.Contains(x.Access.By, "bucket is empty") {
		t.Fatalf("no tokens: %+v", x.Access)
	}
	allow := explainRoute(t, "r", nil, &Access{Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}, "b")
	x := Explain("l", []*Route{allow}, ExplainQuery{Client: netip.MustParseAddrPort("10.0.0.1:1")})
	if x.Access.Decision != "deny" || x.Access.By != "not in the allow list (1 prefixes)" {
		t.Fatalf("allow list: %+v", x.Access)
	}
}
