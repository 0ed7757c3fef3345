// Package discovery turns DNS names into backends: A and AAAA records
// (every address a backend on a configured port) and SRV records (every
// target's addresses, with the record's port, weight and priority). Each
// name has a Watcher goroutine that asks its DNS server again when the
// answer's TTL, bounded by the configured minimum and maximum, runs out,
// keeps the last good answer through failures, and applies an empty answer
// only after a grace time. Nothing here runs on the proxy's event loops:
// an answer that changes is handed to the engine, which applies it by
// difference like a reload.
package discovery

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Endpoint is one backend an answer gives.
type Endpoint struct {
	Addr     netip.AddrPort
	Weight   int    // SRV weight (1 for type a; 0 in a record counts as 1)
	Priority int    // SRV priority (0 for type a)
	Target   string // the SRV target host ("" for type a)
}

// Answer is one successful refresh: the endpoints, sorted, and the
// smallest TTL of the records that gave them. Empty is an answer with no
// endpoint (NXDOMAIN, or no record of the type).
type Answer struct {
	Endpoints []Endpoint
	TTL       time.Duration
	Rcode     string // "NOERROR", "NXDOMAIN"
}

// Empty reports whether the answer has no endpoint.
func (a Answer) Empty() bool { return len(a.Endpoints) == 0 }

// ErrFailed wraps every failed refresh (SERVFAIL, REFUSED, a timeout, an
// unreachable server, a malformed reply): the last good answer is kept.
var ErrFailed = errors.New("dns lookup failed")

// Query is what to ask: a host (type a) or an SRV name, and where.
type Query struct {
	Type    string // "a" or "srv"
	Host    string // type a: the host; srv: the SRV name
	Port    int    // type a: the backends' port
	Server  string // "ip:port"
	Timeout time.Duration
}

// Lookup asks q's server once. An error means the answer is unknown (keep
// the last); an empty Answer means the name has no such records now.
func Lookup(ctx context.Context, q Query) (Answer, error) {
	c := &dns.Client{Net: "udp", Timeout: q.Timeout}
	if q.Type == "srv" {
		return lookupSRV(ctx, c, q)
	}
	eps, ttl, rcode, err := lookupAddrs(ctx, c, q.Server, q.Host)
	if err != nil {
		return Answer{}, err
	}
	a := Answer{TTL: ttl, Rcode: rcode}
	for _, ip := range eps {
		a.Endpoints = append(a.Endpoints, Endpoint{Addr: netip.AddrPortFrom(ip, uint16(q.Port)), Weight: 1})
	}
	sortEndpoints(a.Endpoints)
	return a, nil
}

// lookupAddrs asks for host's A and AAAA records at once and returns every
// address, the smallest TTL and the rcode (NXDOMAIN only when both say so).
func lookupAddrs(ctx context.Context, c *dns.Client, server, host string) ([]netip.Addr, time.Duration, string, error) {
	type res struct {
		m   *dns.Msg
		err error
	}
	var out [2]res
	var wg sync.WaitGroup
	for i, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		wg.Go(func() { out[i].m, out[i].err = exchange(ctx, c, server, host, t) })
	}
	wg.Wait()
	var ips []netip.Addr
	var ttl time.Duration = -1
	nx := 0
	for _, r := range out {
		if r.err != nil {
			return nil, 0, "", r.err
		}
		if r.m.Rcode == dns.RcodeNameError {
			nx++
		}
		for _, rr := range r.m.Answer {
			if ip, ok := rrAddr(rr); ok {
				ips = append(ips, ip)
				ttl = minTTL(ttl, rr)
			}
		}
	}
	rcode := "NOERROR"
	if nx == 2 {
		rcode = "NXDOMAIN"
	}
	return ips, max(ttl, 0), rcode, nil
}

func lookupSRV(ctx context.Context, c *dns.Client, q Query) (Answer, error) {
	m, err := exchange(ctx, c, q.Server, q.Host, dns.TypeSRV)
	if err != nil {
		return Answer{}, err
	}
	a := Answer{Rcode: dns.RcodeToString[m.Rcode]}
	var ttl time.Duration = -1
	// Addresses the server sent along (the additional section), by host.
	extra := map[string][]netip.Addr{}
	extraTTL := map[string]time.Duration{}
	for _, rr := range m.Extra {
		if ip, ok := rrAddr(rr); ok {
			h := strings.ToLower(rr.Header().Name)
			extra[h] = append(extra[h], ip)
			cur, seen := extraTTL[h]
			if !seen {
				cur = -1
			}
			extraTTL[h] = minTTL(cur, rr)
		}
	}
	for _, rr := range m.Answer {
		srv, ok := rr.(*dns.SRV)
		if !ok || srv.Target == "." {
			continue // "." : the service is decidedly not available (RFC 2782)
		}
		ttl = minTTL(ttl, rr)
		target := strings.ToLower(srv.Target)
		ips, ok := extra[target]
		if ok {
			ttl = min(ttl, extraTTL[target])
		} else {
			var t time.Duration
			ips, t, _, err = lookupAddrs(ctx, c, q.Server, srv.Target)
			if err != nil {
				return Answer{}, fmt.Errorf("SRV target %s: %w", srv.Target, err)
			}
			if len(ips) > 0 {
				ttl = min(ttl, t)
			}
		}
		for _, ip := range ips {
			a.Endpoints = append(a.Endpoints, Endpoint{Addr: netip.AddrPortFrom(ip, srv.Port),
				Weight: max(int(srv.Weight), 1), Priority: int(srv.Priority), Target: strings.TrimSuffix(srv.Target, ".")})
		}
	}
	a.TTL = max(ttl, 0)
	sortEndpoints(a.Endpoints)
	a.Endpoints = slices.CompactFunc(a.Endpoints, func(x, y Endpoint) bool { return x.Addr == y.Addr })
	return a, nil
}

// exchange sends one query and sorts out the replies that are failures.
func exchange(ctx context.Context, c *dns.Client, server, name string, t uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), t)
	q.RecursionDesired = true
	q.SetEdns0(4096, false)
	m, _, err := c.ExchangeContext(ctx, q, server)
	if err == nil && m.Truncated {
		tc := *c
		tc.Net = "tcp"
		m, _, err = tc.ExchangeContext(ctx, q, server)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s at %s: %v", ErrFailed, dns.TypeToString[t], name, server, err)
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("%w: %s %s at %s: %s", ErrFailed, dns.TypeToString[t], name, server, dns.RcodeToString[m.Rcode])
	}
	return m, nil
}

func rrAddr(rr dns.RR) (netip.Addr, bool) {
	switch r := rr.(type) {
	case *dns.A:
		ip, ok := netip.AddrFromSlice(r.A.To4())
		return ip, ok
	case *dns.AAAA:
		ip, ok := netip.AddrFromSlice(r.AAAA.To16())
		return ip, ok
	}
	return netip.Addr{}, false
}

// minTTL is the smaller of cur (-1: none yet) and rr's TTL.
func minTTL(cur time.Duration, rr dns.RR) time.Duration {
	t := time.Duration(rr.Header().Ttl) * time.Second
	if cur < 0 || t < cur {
		return t
	}
	return cur
}

func sortEndpoints(eps []Endpoint) {
	slices.SortFunc(eps, func(x, y Endpoint) int {
		return cmp.Or(cmp.Compare(x.Priority, y.Priority), x.Addr.Compare(y.Addr))
	})
}

// SystemResolver is the first nameserver of /etc/resolv.conf as ip:port
// (127.0.0.1:53 when there is none, as the C library does).
func SystemResolver() string {
	return resolvConfServer("/etc/resolv.conf")
}

func resolvConfServer(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "127.0.0.1:53"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if ip, err := netip.ParseAddr(fields[1]); err == nil {
				return netip.AddrPortFrom(ip, 53).String()
			}
		}
	}
	return "127.0.0.1:53"
}
