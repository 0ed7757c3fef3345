package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// "Why this backend?": what the data path would do with a hypothetical
// connection, worked out from the listener's published routes exactly as a
// connection is routed (firstMatch, Access.Admit, Router.Pick), but reading
// only: no access slot or token is taken and no router moves on
// (router.Explainer). The admin API serves it (internal/admin/explain.go).

// ExplainQuery is the hypothetical connection.
type ExplainQuery struct {
	Client netip.AddrPort // the client (after a PROXY header, if the listener takes one)
	Local  netip.AddrPort // the address it connects to (the listener's, for a wildcard one)
	SNI    string         // TLS server name; "" when none
	ALPN   []string       // TLS ALPN protocols offered
	Host   string         // HTTP/1.x Host header
}

// Explanation is the decision record of a hypothetical connection.
type Explanation struct {
	Listener string            `json:"listener"` // the listener's address
	Rules    []RuleExplanation `json:"rules"`    // every rule on it, in order
	Rule     string            `json:"rule"`     // the rule that takes the connection ("": none)
	Access   *AccessDecision   `json:"access,omitempty"`
	Router   *RouterDecision   `json:"router,omitempty"`
	// Outcome is the end of the story in a few words: routed to a backend,
	// or why not.
	Outcome string `json:"outcome"`
}

// RuleExplanation is one rule as matching sees it.
type RuleExplanation struct {
	Name    string `json:"name"`
	Matched bool   `json:"matched"`
	// Why says which matcher failed (not matched), or what matched.
	Why string `json:"why"`
	// Shadowed: it matches too, but an earlier rule takes the connection.
	Shadowed bool `json:"shadowed,omitempty"`
}

// AccessDecision is the access control's answer.
type AccessDecision struct {
	Decision string `json:"decision"` // "allow", "deny" or "limit"
	By       string `json:"by"`       // what decided
	// Open is the connections open now from the client's address, and
	// Tokens the rate bucket's tokens (when those limits are set).
	Open   *int     `json:"open,omitempty"`
	Tokens *float64 `json:"tokens,omitempty"`
}

// RouterDecision is the router's choice and its reasoning.
type RouterDecision struct {
	Router string `json:"router"` // the rule's router key
	Plugin string `json:"plugin"`
	Tiers  []int  `json:"tiers,omitempty"` // the router's priority tiers, best first
	router.Explanation
}

// Explain works out what the routes (a listener's, in order) would do
// with q, changing nothing. listener names the listener in the answer.
func Explain(listener string, routes []*Route, q ExplainQuery) Explanation {
	x := Explanation{Listener: listener}
	ci := ConnInfo{Client: q.Client, SNI: strings.ToLower(q.SNI), ALPN: q.ALPN, Host: strings.ToLower(q.Host)}
	var rt *Route
	for _, r := range routes {
		ok, why := explainMatch(r.Match, &ci)
		re := RuleExplanation{Name: r.Name, Matched: ok, Why: why}
		if ok && rt != nil {
			re.Shadowed = true
			re.Why += fmt.Sprintf("; but rule %q comes first", rt.Name)
		}
		if ok && rt == nil {
			rt = r
		}
		x.Rules = append(x.Rules, re)
	}
	if rt == nil {
		x.Outcome = "no rule matches: the connection is closed"
		if len(routes) == 0 {
			x.Outcome = "the listener has no rule: the connection is closed"
		}
		return x
	}
	x.Rule = rt.Name
	ad := rt.Access.explain(q.Client.Addr(), time.Now())
	x.Access = &ad
	if ad.Decision != "allow" {
		x.Outcome = fmt.Sprintf("refused by rule %q's access control (%s: %s)", rt.Name, ad.Decision, ad.By)
		return x
	}
	req := router.Request{Client: ci.Client, Local: q.Local, SNI: ci.SNI, ALPN: ci.ALPN, Host: ci.Host}
	rd := &RouterDecision{Router: rt.RouterName, Plugin: rt.Plugin, Tiers: router.Tiers(rt.Router)}
	rd.Explanation = router.Explain(rt.Router, &req)
	if rd.Candidates == nil {
		rd.Candidates = []router.Candidate{}
	}
	x.Router = rd
	if b := rd.Backend; b != nil {
		x.Outcome = fmt.Sprintf("rule %q, backend %s (%s)", rt.Name, b.ID, b.Address)
	} else {
		x.Outcome = fmt.Sprintf("rule %q, but no backend: the connection is closed", rt.Name)
	}
	return x
}

// explainMatch is m.Match(ci), with which matcher failed (or matched).
func explainMatch(m Matcher, ci *ConnInfo) (bool, string) {
	switch m := m.(type) {
	case nil, MatchAny:
		return true, "no matcher: every connection of the listener"
	case MatchSNI:
		if ci.SNI == "" {
			return false, fmt.Sprintf("sni %s: the connection sends no server name", m.Names)
		}
		if m.Match(ci) {
			return true, fmt.Sprintf("sni %q in %s", ci.SNI, m.Names)
		}
		return false, fmt.Sprintf("sni %q not in %s", ci.SNI, m.Names)
	case MatchHost:
		if ci.Host == "" {
			return false, fmt.Sprintf("http_host %s: the connection sends no Host header", m.Names)
		}
		if m.Match(ci) {
			return true, fmt.Sprintf("http_host %q in %s", ci.Host, m.Names)
		}
		return false, fmt.Sprintf("http_host %q not in %s", ci.Host, m.Names)
	case MatchALPN:
		if m.Match(ci) {
			return true, fmt.Sprintf("alpn %q offers one of %q", ci.ALPN, m.Protocols)
		}
		return false, fmt.Sprintf("alpn %q offers none of %q", ci.ALPN, m.Protocols)
	case MatchSource:
		ps := make([]string, len(m.Prefixes))
		for i, p := range m.Prefixes {
			ps[i] = p.String()
		}
		if m.Match(ci) {
			return true, fmt.Sprintf("source %s in [%s]", ci.Client.Addr(), strings.Join(ps, " "))
		}
		return false, fmt.Sprintf("source %s not in [%s]", ci.Client.Addr(), strings.Join(ps, " "))
	case MatchAll:
		var whys []string
		for _, sub := range m {
			ok, why := explainMatch(sub, ci)
			if !ok {
				return false, "all: " + why
			}
			whys = append(whys, why)
		}
		return true, "all: " + strings.Join(whys, "; ")
	case MatchOneOf:
		var whys []string
		for _, sub := range m {
			ok, why := explainMatch(sub, ci)
			if ok {
				return true, "any: " + why
			}
			whys = append(whys, why)
		}
		return false, "any: none of " + strings.Join(whys, "; ")
	}
	if m.Match(ci) {
		return true, fmt.Sprintf("%T matches", m)
	}
	return false, fmt.Sprintf("%T does not match", m)
}

// String lists the set's names, "*." wildcards included, sorted.
func (s NameSet) String() string {
	names := make([]string, 0, len(s.exact)+len(s.suffixes))
	for n := range s.exact {
		names = append(names, n)
	}
	for _, suf := range s.suffixes {
		names = append(names, "*"+suf)
	}
	sort.Strings(names)
	return "[" + strings.Join(names, " ") + "]"
}

// explain is Admit's decision for ip at now, taking nothing: the same
// checks in the same order, on the state as it is.
func (a *Access) explain(ip netip.Addr, now time.Time) AccessDecision {
	if a == nil {
		return AccessDecision{Decision: "allow", By: "no access control on the rule"}
	}
	ip = ip.Unmap()
	for _, p := range a.Deny {
		if p.Contains(ip) {
			return AccessDecision{Decision: "deny", By: "deny " + p.String()}
		}
	}
	by := "no allow or deny list matches"
	if len(a.Allow) > 0 {
		in := ""
		for _, p := range a.Allow {
			if p.Contains(ip) {
				in = p.String()
				break
			}
		}
		if in == "" {
			return AccessDecision{Decision: "deny", By: fmt.Sprintf("not in the allow list (%d prefixes)", len(a.Allow))}
		}
		by = "allow " + in
	}
	if !a.limited() {
		return AccessDecision{Decision: "allow", By: by}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	d := AccessDecision{Decision: "allow", By: by}
	open := 0
	tokens := float64(max(a.Burst, 1)) // a new address starts with a full bucket
	if st := a.clients[ip]; st != nil {
		open = st.conns
		if st.lim != nil {
			tokens = st.lim.TokensAt(now)
		}
	}
	if a.MaxPerIP > 0 {
		d.Open = &open
		if open >= a.MaxPerIP {
			d.Decision, d.By = "limit", fmt.Sprintf("max_connections_per_ip %d reached (%d open)", a.MaxPerIP, open)
			return d
		}
	}
	if a.Rate > 0 {
		d.Tokens = &tokens
		if tokens < 1 {
			d.Decision, d.By = "limit", fmt.Sprintf("connection_rate_per_ip %g/s: the bucket is empty (%.2f tokens)", a.Rate, tokens)
			return d
		}
	}
	d.By += "; within the per-address limits"
	return d
}

// SetExplainSample sets the share (0 to 1) of routed TCP connections whose
// decision record is logged at debug level before the pick ([logging]
// explain_sample); 0 turns it off.
func (s *Server) SetExplainSample(rate float64) {
	var th uint64
	switch {
	case rate >= 1:
		th = math.MaxUint64
	case rate > 0:
		th = uint64(rate * (1 << 63) * 2)
	}
	s.explainSample.Store(th)
}

// sampleDecision logs the decision record of a routed, admitted TCP
// connection when it is sampled and the log is at debug level: the rule
// that took it and the router's explanation of the pick about to be made
// (router.Explain changes nothing, so the pick that follows is the one
// explained, unless another connection's pick comes between). Off, it
// costs one atomic load.
func (s *Server) sampleDecision(id uint64, rt *Route, req *router.Request) {
	if th := s.explainSample.Load(); th != 0 {
		// A copy: router.Explain keeps its *Request, and req itself must
		// not escape to the heap on every connection for the sake of this.
		s.logDecision(id, rt, *req, th)
	}
}

// logDecision is sampleDecision with sampling on (th the threshold).
func (s *Server) logDecision(id uint64, rt *Route, req router.Request, th uint64) {
	if (th != math.MaxUint64 && rand.Uint64() >= th) || !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	x := Explanation{Listener: req.Local.String(), Rule: rt.Name,
		Rules:  []RuleExplanation{{Name: rt.Name, Matched: true, Why: "the first rule of the listener that matches"}},
		Access: &AccessDecision{Decision: "allow", By: "admitted"}}
	rd := &RouterDecision{Router: rt.RouterName, Plugin: rt.Plugin, Tiers: router.Tiers(rt.Router), Explanation: router.Explain(rt.Router, &req)}
	x.Router = rd
	x.Outcome = fmt.Sprintf("rule %q, backend %s", rt.Name, rd.Chosen)
	s.log.Debug("connection decision", "conn", id, "rule", rt.Name, "client", req.Client.String(), "chosen", rd.Chosen,
		"reason", rd.Reason, "decision", decisionRecord{&x})
}

// decisionRecord logs an Explanation as its JSON: nested in a JSON log,
// one quoted value in a text log.
type decisionRecord struct{ x *Explanation }

func (d decisionRecord) MarshalJSON() ([]byte, error) { return json.Marshal(d.x) }
func (d decisionRecord) MarshalText() ([]byte, error) { return json.Marshal(d.x) }
