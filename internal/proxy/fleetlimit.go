package proxy

import (
	"math"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Fleet-wide access limits (fleet_max_connections_per_ip,
// fleet_connection_rate_per_ip, fleet_connection_rate): Admit decides from
// local state only, never waiting for Redis. Each rate limit is a token
// bucket on every instance that all of the fleet's admissions drain: this
// instance's at once, the others' when a sync reports them. Each
// concurrency limit adds to this instance's open connections the others'
// as last synced. A sync (internal/fleet, every FleetSyncPeriod) reports
// this instance's changes and learns the others'. While the last good sync
// is older than FleetStaleAfter (Redis down or stuck), and for a client not
// synced yet, each limit falls back to this instance's share: the limit
// divided by the number of instances last seen. docs/fleet.md gives the
// tolerance this leaves.

// FleetSyncPeriod is how often an instance syncs its counts.
const FleetSyncPeriod = 150 * time.Millisecond

// FleetStaleAfter is how old the last good sync may be before the limits
// fall back to the local share; also how long an instance that stopped
// syncing (died) keeps counting in Redis.
const FleetStaleAfter = 3 * FleetSyncPeriod

// FleetLimits is one instance's side of the fleet-wide limits: the Access
// values with fleet limits (SetRules), the instance count and whether the
// counts are synced. Nil acts as a fleet of one that is always synced.
type FleetLimits struct {
	base      time.Time    // monotonic origin of lastOK
	lastOK    atomic.Int64 // ns since base of the last good sync; 0: none yet
	instances atomic.Int32 // instances last seen, this one included (≥ 1)
	syncs     atomic.Uint64
	failures  atomic.Uint64

	mu    sync.Mutex
	rules map[string]*Access
}

// NewFleetLimits returns the limits of an instance that has not synced yet.
func NewFleetLimits() *FleetLimits {
	f := &FleetLimits{base: time.Now(), rules: map[string]*Access{}}
	f.instances.Store(1)
	return f
}

// SetRules makes rules (by rule name, each with fleet limits) the ones
// synced; the engine calls it on each commit.
func (f *FleetLimits) SetRules(rules map[string]*Access) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.rules = rules
	f.mu.Unlock()
}

// Active reports whether any rule has fleet limits (nothing to sync otherwise).
func (f *FleetLimits) Active() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.rules) > 0
}

// Synced reports whether the last good sync is recent enough for the fleet
// view to be used (else each limit is this instance's share).
func (f *FleetLimits) Synced() bool { return f.synced(time.Now()) }

func (f *FleetLimits) synced(now time.Time) bool {
	if f == nil {
		return true
	}
	ok := f.lastOK.Load()
	return ok != 0 && now.Sub(f.base)-time.Duration(ok) < FleetStaleAfter
}

// Instances is the number of instances last seen (1 before any sync).
func (f *FleetLimits) Instances() int {
	if f == nil {
		return 1
	}
	return int(f.instances.Load())
}

// Syncs returns the number of good and failed syncs.
func (f *FleetLimits) Syncs() (ok, failed uint64) { return f.syncs.Load(), f.failures.Load() }

// FleetItem is one counter of a sync. Key is "RULE" (the rule's total
// rate) or "RULE/IP" (a client). Conns < 0: no concurrency limit; else
// this instance's open connections of the client, to store when
// ConnsChanged. Delta < 0: no rate counter; else the admissions since the
// last sync, to add to the fleet's counter. The sync fills Others (the
// other instances' open connections) and Total (the fleet's counter after
// Delta).
type FleetItem struct {
	Key          string
	Conns        int
	ConnsChanged bool
	Delta        int64
	Others       int
	Total        int64

	acc *Access
	st  *clientState // nil: the rule's total
}

// FleetRound is one sync: Collect fills Items, the sync Instances.
type FleetRound struct {
	Items     []FleetItem
	Instances int
}

// Collect starts a sync: this instance's changes since the last one, and
// the clients whose fleet counts it needs. A client left out (idle here,
// none of its connections open anywhere) is given the local share until a
// sync includes it again.
func (f *FleetLimits) Collect() *FleetRound {
	f.mu.Lock()
	rules := make([]*Access, 0, len(f.rules))
	names := make([]string, 0, len(f.rules))
	for name := range f.rules {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		rules = append(rules, f.rules[name])
	}
	f.mu.Unlock()
	r := &FleetRound{}
	now := time.Now()
	for i, a := range rules {
		a.collect(names[i], r, now)
	}
	return r
}

// Apply ends a sync: err nil, what it learned; else the sync failed, the
// changes it carried are reported again next time and every client is on
// the local share until a sync includes it again.
func (f *FleetLimits) Apply(r *FleetRound, err error) {
	if err == nil {
		f.syncs.Add(1)
		f.instances.Store(int32(max(1, r.Instances)))
		f.lastOK.Store(int64(max(1, time.Since(f.base))))
	} else {
		f.failures.Add(1)
	}
	i := 0
	for i < len(r.Items) {
		a := r.Items[i].acc
		j := i
		for j < len(r.Items) && r.Items[j].acc == a {
			j++
		}
		a.apply(r.Items[i:j], err == nil, f.Instances())
		i = j
	}
}

// FleetRuleStats are one rule's fleet counts, as this instance sees them.
type FleetRuleStats struct {
	Rule                     string
	LocalConns, FleetConns   int    // open connections of clients under fleet_max_connections_per_ip
	LocalAdmits, FleetAdmits uint64 // new connections counted by the fleet rate limits
	ConnLimited, RateLimited bool   // which kinds of limit the rule has
}

// Stats returns every rule's counts, by rule name.
func (f *FleetLimits) Stats() []FleetRuleStats {
	f.mu.Lock()
	out := make([]FleetRuleStats, 0, len(f.rules))
	for name, a := range f.rules {
		a.mu.Lock()
		out = append(out, FleetRuleStats{Rule: name, LocalConns: a.fl.localConns, FleetConns: a.fl.localConns + a.fl.othersConns,
			LocalAdmits: a.fl.localAdmits, FleetAdmits: a.fl.fleetAdmits,
			ConnLimited: a.FleetMaxPerIP > 0, RateLimited: a.FleetRate > 0 || a.FleetRuleRate > 0})
		a.mu.Unlock()
	}
	f.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Rule < out[j].Rule })
	return out
}

// fleetBucket is a token bucket drained by the whole fleet's admissions.
type fleetBucket struct {
	tokens   float64
	last     time.Duration // since fleetEpoch; 0: new
	pending  int64         // admitted here since the last Collect
	inflight int64         // admitted here, in the sync under way
	seen     int64         // the fleet's counter at the last sync
	known    bool          // seen is valid: synced since this state was made (or since a failed sync)
}

// refill adds the tokens earned since the last call, up to cap; a new
// bucket starts full.
func (b *fleetBucket) refill(now time.Duration, rate, cap float64) {
	if b.last == 0 {
		b.tokens = cap
	} else {
		b.tokens += rate * (now - b.last).Seconds()
	}
	b.tokens = math.Min(b.tokens, cap)
	b.last = now
}

// learn drains what the other instances admitted since the last sync,
// from the fleet's counter total (which includes our inflight). A counter
// smaller than expected lost data (a failover to a replica that lagged, a
// flushed Redis): it is the new baseline, charged nothing. The debt is
// bounded by a second of refill per instance (what n instances can admit
// between two syncs is far less), so that a counter gone wrong never locks
// a client out for long.
func (b *fleetBucket) learn(total int64, rate float64, n int) (others int64) {
	if b.known {
		others = max(total-b.seen-b.inflight, 0)
		b.tokens = math.Max(b.tokens-float64(others), -math.Max(rate, 1)*float64(n))
	}
	b.seen, b.known, b.inflight = total, true, 0
	return others
}

// fleetClient is a client's part of the fleet limits.
type fleetClient struct {
	bucket    fleetBucket
	others    int    // connections open at the other instances, as last synced
	sent      int    // conns as last stored in Redis
	connKnown bool   // others is valid (synced since made)
	key, rule string // its FleetItem key, made once
	ip        netip.Addr
	gone      bool // forgotten by the sweep: out of fl.all at the next sync
}

// fleetRule is a rule's part of the fleet limits.
type fleetRule struct {
	bucket      fleetBucket // fleet_connection_rate (and the admissions count)
	localConns  int         // open connections of fleet-limited clients here
	othersConns int         // and at the other instances, as last synced
	localAdmits uint64
	fleetAdmits uint64

	// Every client with fleet state, in the order they came: what a sync
	// walks, a chunk per hold of the lock (a map cannot be walked in
	// pieces). Admit appends; the sync drops the ones the sweep forgot.
	all     []*clientState
	walking bool // a sync is walking all (the sweep leaves it alone then)
}

// fleetChunk is how many clients a sync handles per hold of the rule's
// lock: a round over many clients never keeps the rule's new connections
// waiting for more than one chunk.
const fleetChunk = 1024

// fleetShare is limit's share for this instance: limit / instances when
// the fleet view cannot be used, else limit.
func fleetShare(limit float64, share bool, n int) float64 {
	if share {
		return limit / float64(n)
	}
	return limit
}

// fleetAdmit checks the fleet limits for st (nil when the rule has no
// per-client state) under a.mu, and takes their tokens when it admits.
func (a *Access) fleetAdmit(st *clientState, now time.Time) Reason {
	fresh := a.Fleet.synced(now)
	n := a.Fleet.Instances()
	t := now.Sub(fleetEpoch)
	var fc *fleetClient
	if st != nil {
		fc = st.fleet
	}
	if a.FleetMaxPerIP > 0 {
		share := !fresh || !fc.connKnown
		max := int(math.Max(1, math.Floor(fleetShare(float64(a.FleetMaxPerIP), share, n))))
		used := st.conns
		if !share {
			used += fc.others
		}
		if used >= max {
			return ReasonFleetConnLimited
		}
	}
	if a.FleetRate > 0 {
		share := !fresh || !fc.bucket.known
		fc.bucket.refill(t, fleetShare(a.FleetRate, share, n), math.Max(1, fleetShare(float64(a.FleetBurst), share, n)))
		if fc.bucket.tokens < 1 {
			return ReasonFleetRateLimited
		}
	}
	if a.FleetRuleRate > 0 {
		b := &a.fl.bucket
		share := !fresh || !b.known
		b.refill(t, fleetShare(a.FleetRuleRate, share, n), math.Max(1, fleetShare(float64(a.FleetRuleBurst), share, n)))
		if b.tokens < 1 {
			return ReasonFleetRuleRateLimited
		}
	}
	return ReasonNone
}

// fleetTake takes the fleet rate tokens of an admitted connection.
func (a *Access) fleetTake(st *clientState) {
	if a.FleetRate > 0 {
		st.fleet.bucket.tokens--
		st.fleet.bucket.pending++
	}
	if a.FleetRate > 0 || a.FleetRuleRate > 0 {
		a.fl.bucket.tokens--
		a.fl.bucket.pending++
		a.fl.localAdmits++
	}
	if a.FleetMaxPerIP > 0 {
		a.fl.localConns++
	}
}

// fleetEpoch is the monotonic origin of the buckets' times.
var fleetEpoch = time.Now()

// hasFleet reports whether a has any fleet-wide limit.
func (a *Access) hasFleet() bool {
	return a.FleetMaxPerIP > 0 || a.FleetRate > 0 || a.FleetRuleRate > 0
}

// perClientFleet reports whether a keeps fleet state per client.
func (a *Access) perClientFleet() bool { return a.FleetMaxPerIP > 0 || a.FleetRate > 0 }

// collect adds a's items to r, holding a.mu for one fleetChunk of clients
// at a time: a sync never keeps the rule's new connections waiting for
// long, whatever the number of clients. It walks fl.all in place, dropping
// the clients the sweep forgot; clients that arrive meanwhile are appended
// to it and walked too.
func (a *Access) collect(rule string, r *FleetRound, now time.Time) {
	a.mu.Lock()
	t := now.Sub(fleetEpoch)
	if a.FleetRate > 0 || a.FleetRuleRate > 0 {
		b := &a.fl.bucket
		b.inflight += b.pending
		r.Items = append(r.Items, FleetItem{Key: rule, Conns: -1, Delta: b.pending, acc: a})
		b.pending = 0
	}
	if !a.perClientFleet() {
		a.mu.Unlock()
		return
	}
	n := len(a.fl.all)
	a.fl.walking = true
	a.mu.Unlock()
	r.Items = slices.Grow(r.Items, n) // megabytes at 100,000 clients: not under the lock
	a.mu.Lock()
	w := 0 // fl.all[:w] is kept
	for k := 0; ; {
		all := a.fl.all
		end := min(k+fleetChunk, len(all))
		for ; k < end; k++ {
			st := all[k]
			fc := st.fleet
			if fc.gone {
				continue
			}
			all[w] = st
			w++
			b := &fc.bucket
			if fc.idle(st.conns, a.FleetRate, a.FleetBurst, t) {
				b.known, fc.connKnown = false, false // not followed: the local share until it is again
				continue
			}
			if fc.key == "" || fc.rule != rule {
				fc.key, fc.rule = rule+"/"+fc.ip.String(), rule
			}
			it := FleetItem{Key: fc.key, Conns: -1, Delta: -1, acc: a, st: st}
			if a.FleetMaxPerIP > 0 {
				it.Conns, it.ConnsChanged = st.conns, st.conns != fc.sent
			}
			if a.FleetRate > 0 {
				it.Delta = b.pending
				b.inflight += b.pending
				b.pending = 0
			}
			r.Items = append(r.Items, it)
		}
		if k == len(all) {
			clear(all[w:]) // hold no forgotten client
			a.fl.all, a.fl.walking = all[:w], false
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		a.mu.Lock()
	}
}

// apply takes in a's items of a sync, fleetChunk of them per hold of a.mu
// (see collect); ok false: it failed.
func (a *Access) apply(items []FleetItem, ok bool, n int) {
	others := 0
	for k := 0; k < len(items); k += fleetChunk {
		a.mu.Lock()
		others += a.applyChunk(items[k:min(k+fleetChunk, len(items))], ok, n)
		a.mu.Unlock()
	}
	if ok {
		a.mu.Lock()
		a.fl.othersConns = others
		a.mu.Unlock()
	}
}

// applyChunk takes in items under a.mu and returns the other instances'
// connections of its clients.
func (a *Access) applyChunk(items []FleetItem, ok bool, n int) (others int) {
	if !ok {
		for i := range items {
			it := &items[i]
			var b *fleetBucket
			if it.st == nil {
				b = &a.fl.bucket
			} else {
				b = &it.st.fleet.bucket
				it.st.fleet.connKnown = false
			}
			b.pending += b.inflight
			b.inflight, b.known = 0, false
		}
		return 0
	}
	for i := range items {
		it := &items[i]
		if it.st == nil {
			o := a.fl.bucket.learn(it.Total, a.FleetRuleRate, n)
			a.fl.fleetAdmits += uint64(o) + uint64(max(it.Delta, 0))
			continue
		}
		fc := it.st.fleet
		if it.Conns >= 0 {
			fc.others, fc.connKnown = it.Others, true
			if it.ConnsChanged {
				fc.sent = it.Conns
			}
			others += it.Others
		}
		if it.Delta >= 0 {
			fc.bucket.learn(it.Total, a.FleetRate, n)
		}
	}
	return others
}

// idle reports whether the client's fleet state holds nothing the fleet
// needs: no connection here or elsewhere, nothing unsynced, a full bucket.
func (fc *fleetClient) idle(conns int, rate float64, burst int, now time.Duration) bool {
	b := &fc.bucket
	full := rate == 0 || b.last == 0 || b.tokens+rate*(now-b.last).Seconds() >= float64(burst)
	return conns == 0 && fc.others == 0 && fc.sent == 0 && b.pending == 0 && b.inflight == 0 && full
}
