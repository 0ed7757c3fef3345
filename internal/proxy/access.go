package proxy

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Access is a rule's access control: allow/deny lists evaluated before any
// backend is dialled, a cap on concurrent connections per client address,
// and a token bucket of new connections per client address. A nil *Access
// admits everything.
type Access struct {
	Allow    []netip.Prefix // when non-empty, only these may connect
	Deny     []netip.Prefix // never these (checked first)
	MaxPerIP int            // concurrent connections per address; 0: no limit
	Rate     float64        // new connections per second per address; 0: no limit
	Burst    int            // bucket size for Rate (≥ 1)

	// The fleet-wide limits (fleetlimit.go), held across the instances
	// sharing Fleet; 0: none. With a nil Fleet they hold on this instance.
	FleetMaxPerIP  int     // concurrent connections per address
	FleetRate      float64 // new connections per second per address
	FleetBurst     int     // bucket size for FleetRate (≥ 1)
	FleetRuleRate  float64 // new connections per second to the rule
	FleetRuleBurst int     // bucket size for FleetRuleRate (≥ 1)
	Fleet          *FleetLimits

	mu      sync.Mutex
	clients map[netip.Addr]*clientState
	sweepAt int
	fl      fleetRule
}

type clientState struct {
	conns int
	lim   *rate.Limiter
	fleet *fleetClient // nil without a per-address fleet limit
}

// Limited reports whether Admit needs per-address state.
func (a *Access) limited() bool { return a.MaxPerIP > 0 || a.Rate > 0 || a.perClientFleet() }

// Admit decides on a new connection from ip. When admitted (ReasonNone),
// release must be called when the connection ends; otherwise reason says
// why not.
func (a *Access) Admit(ip netip.Addr) (release func(), reason Reason) {
	if a == nil {
		return noop, ReasonNone
	}
	ip = ip.Unmap()
	if ContainsAddr(a.Deny, ip) || (len(a.Allow) > 0 && !ContainsAddr(a.Allow, ip)) {
		return nil, ReasonDenied
	}
	if !a.limited() {
		if a.FleetRuleRate > 0 {
			return a.admitRule()
		}
		return noop, ReasonNone
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.clients == nil {
		a.clients = map[netip.Addr]*clientState{}
	}
	st := a.clients[ip]
	if st == nil {
		st = &clientState{}
		if a.Rate > 0 {
			st.lim = rate.NewLimiter(rate.Limit(a.Rate), max(a.Burst, 1))
		}
		if a.perClientFleet() {
			st.fleet = &fleetClient{ip: ip}
			a.fl.all = append(a.fl.all, st) // what a sync walks (fleetlimit.go)
		}
		a.sweep() // before the new state is in the map: it would be swept (it has no connection yet)
		a.clients[ip] = st
	}
	if a.MaxPerIP > 0 && st.conns >= a.MaxPerIP {
		return nil, ReasonPerIPLimit
	}
	fleet := a.hasFleet()
	var now time.Time // read only when a rate or fleet limit needs it
	if fleet || st.lim != nil {
		now = time.Now()
	}
	if fleet {
		if r := a.fleetAdmit(st, now); r != ReasonNone {
			return nil, r
		}
	}
	if st.lim != nil && !st.lim.AllowN(now, 1) {
		return nil, ReasonRateLimited
	}
	if fleet {
		a.fleetTake(st)
	}
	st.conns++
	fleetConns := a.FleetMaxPerIP > 0
	return func() {
		a.mu.Lock()
		st.conns--
		if fleetConns {
			a.fl.localConns--
		}
		a.mu.Unlock()
	}, ReasonNone
}

// admitRule decides for a rule whose only limit is fleet_connection_rate.
func (a *Access) admitRule() (release func(), reason Reason) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.fleetAdmit(nil, time.Now()); r != ReasonNone {
		return nil, r
	}
	a.fleetTake(nil)
	return noop, ReasonNone
}

// sweep forgets addresses with no connection and a full bucket, so the map
// stays proportional to the clients that matter. It runs when the map has
// doubled since the last sweep (amortised O(1) per new client).
func (a *Access) sweep() {
	if len(a.clients) < 1024 || len(a.clients) < 2*a.sweepAt {
		return
	}
	now := time.Now()
	t := now.Sub(fleetEpoch)
	for ip, st := range a.clients {
		if st.conns == 0 && (st.lim == nil || st.lim.TokensAt(now) >= float64(st.lim.Burst())) &&
			(st.fleet == nil || st.fleet.idle(0, a.FleetRate, a.FleetBurst, t)) {
			delete(a.clients, ip)
			if st.fleet != nil {
				st.fleet.gone = true // the next sync drops it from fl.all
			}
		}
	}
	a.sweepAt = len(a.clients)
	if !a.fl.walking { // a sync walking fl.all drops the forgotten itself
		a.fl.all = slices.DeleteFunc(a.fl.all, func(st *clientState) bool { return st.fleet.gone })
	}
}

func noop() {}

// ReasonNone is Admit's answer for an admitted connection.
const ReasonNone = NumReasons
