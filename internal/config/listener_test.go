package config

import (
	"fmt"
	"math/rand"
	"reflect"
	"testing"
)

// TestListenerAgreementMatchesPairwise checks the one-pass check of rules
// sharing a listener against the definition, every earlier rule compared
// with every later one, on random rule sets.
func TestListenerAgreementMatchesPairwise(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	trusted := [][]string{nil, {"127.0.0.1"}, {"127.0.0.2"}}
	reported := 0
	for round := 0; round < 2000; round++ {
		c := &Config{Server: Server{TCPBind: "127.0.0.1:1", UDPBind: "127.0.0.1:2"}}
		for i := 0; i < 1+rnd.Intn(8); i++ {
			r := Rule{Name: fmt.Sprintf("r%d", i), Protocol: []string{"tcp", "udp"}[rnd.Intn(2)], Enabled: rnd.Intn(4) > 0,
				AcceptProxyProtocol: rnd.Intn(2) == 0, TrustedProxies: trusted[rnd.Intn(len(trusted))]}
			if p := rnd.Intn(3); p > 0 {
				r.Matcher = &Matcher{Type: "port", Port: p}
			}
			c.Rules = append(c.Rules, r)
		}
		var want []string
		for i := range c.Rules {
			r := &c.Rules[i]
			for j := 0; j < i; j++ {
				o := &c.Rules[j]
				if !o.Enabled || !r.Enabled || o.Protocol != r.Protocol || c.Listener(o) != c.Listener(r) {
					continue
				}
				if o.AcceptProxyProtocol != r.AcceptProxyProtocol || !reflect.DeepEqual(o.TrustedProxies, r.TrustedProxies) {
					want = append(want, fmt.Sprintf("rules[%d] %s %s", i, o.Name, r.Name))
					break
				}
			}
		}
		e := &Errors{}
		a := listenerAgreement{}
		for i := range c.Rules {
			a.check(e, c, i, fmt.Sprintf("rules[%d]", i))
		}
		var got []string
		for _, p := range e.Problems {
			var i int
			var o, r string
			if _, err := fmt.Sscanf(p.Path+" "+p.Msg, "rules[%d].accept_proxy_protocol rules %q and %q", &i, &o, &r); err != nil {
				t.Fatalf("unexpected problem %q: %v", p, err)
			}
			got = append(got, fmt.Sprintf("rules[%d] %s %s", i, o, r))
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("rules %+v:\ngot  %q\nwant %q", c.Rules, got, want)
		}
		reported += len(want)
	}
	if reported < 500 {
		t.Fatalf("only %d disagreements in all rounds: the rule sets do not exercise the check", reported)
	}
}
