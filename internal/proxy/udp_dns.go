package proxy

import (
	"errors"
	"math/bits"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/dnsmsg"
)

// DNS-aware UDP balancing (ListenOptions.DNS: a rule's dns = true), the
// parts both engines share.
//
// On such a listener every client datagram must be a DNS query (a header
// and a question; anything else is counted and dropped before it is
// routed). A client address:port still is a session for routing, access
// control, max_sessions, logs and metrics, but it has no socket of its
// own: each query is balanced on its own with the rule's router and sent
// on the engine's one socket to the picked backend (per shard, or per
// listener on the goroutine engine), shared by every client. Each such
// socket has an id table (dnsIDs): a query keeps its id unless another
// query waiting on that socket has it, and then takes a free one; the
// reply is matched by its id and question, gets the client's id back, and
// goes to that client. A query not answered within session_timeout is
// forgotten (counted); a reply no waiting query matches (late, repeated,
// for another question) is counted and dropped. Replies pass otherwise
// unchanged, a truncated (TC) one too, so the client retries over TCP.
// A waiting query holds its backend (Acquire), so least_connections counts
// queries in flight.

// maxDNSPending bounds the queries waiting on one backend socket; a query
// beyond it is not sent there (the router's next pick is tried).
const maxDNSPending = 32768

// errDNSFull: the backend socket has maxDNSPending queries waiting.
var errDNSFull = errors.New("udp dns: too many queries waiting on the backend socket")

// errDNSBudget: a backend socket would go beyond the descriptor budget.
var errDNSBudget = errors.New("udp dns: at the descriptor budget")

// DNSObserver is what an Observer also implements to count DNS-aware
// balancing's own events (internal/metrics does).
type DNSObserver interface {
	// DNSUnanswered: a query sent to b got no reply within session_timeout
	// and was forgotten.
	DNSUnanswered(loop int, b *backend.Backend)
	// DNSUnmatched: a reply from b matched no query waiting on its socket
	// (late, repeated, or for another question) and was dropped.
	DNSUnmatched(loop int, b *backend.Backend)
}

// dnsObserver is o's DNSObserver, nil when it has none.
func dnsObserver(o Observer) DNSObserver {
	d, _ := o.(DNSObserver)
	return d
}

// dnsMalformed counts and observes a client datagram of a DNS listener
// serving t that is not a DNS query (parseDNSQuery).
func (s *Server) dnsMalformed(t *Table) {
	s.UDP.DroppedDNSMalformed.Add(1)
	if lo := t.Options.Observer; lo != nil {
		lo.Rejected(ReasonDNSMalformed)
	}
}

// parseDNSQuery reads client datagram p as a DNS query: its id and its
// question's hash. ok is false when p is not one (shorter than a header, a
// response, no question or a malformed one).
func parseDNSQuery(p []byte) (id uint16, q uint64, ok bool) {
	h, err := dnsmsg.ParseHeader(p)
	if err != nil || h.Response || h.QDCount == 0 {
		return 0, 0, false
	}
	qs, err := dnsmsg.Question(p)
	if err != nil {
		return 0, 0, false
	}
	return h.ID, questionHash(qs), true
}

// parseDNSReply reads backend datagram p as a DNS response: its id and its
// question's hash, q = 0 when it carries none (a FORMERR or REFUSED may
// not). ok is false when p is not a response.
func parseDNSReply(p []byte) (id uint16, q uint64, ok bool) {
	h, err := dnsmsg.ParseHeader(p)
	if err != nil || !h.Response {
		return 0, 0, false
	}
	if h.QDCount == 0 {
		return h.ID, 0, true
	}
	qs, err := dnsmsg.Question(p)
	if err != nil {
		return 0, 0, false
	}
	return h.ID, questionHash(qs), true
}

// questionHash is an FNV-1a hash of a question's wire form (dnsmsg.Question)
// with the name's ASCII letters folded to lower case (a server may answer
// with the case it has, and 0x20 randomisation varies it), never 0.
func questionHash(qs []byte) uint64 {
	h := uint64(14695981039346656037)
	name := len(qs) - 4 // the type and class follow the name
	for i, c := range qs {
		if i < name && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h | 1
}

// dnsPending is a query waiting for its reply on a backend socket.
type dnsPending[C any] struct {
	client C      // who asked
	id     uint16 // the id the client gave it, restored on the reply
	q      uint64 // its question's hash
	sent   int64  // unix ns
}

// dnsSent is a query in send order, for expiry.
type dnsSent struct {
	wire uint16
	sent int64
}

// dnsIDs are the queries waiting on one backend socket, by the id they
// were sent with. Its storage grows to the largest number waiting at once
// and is reused: adding and matching allocate nothing in steady state. The
// zero value is empty and ready. C is the engine's client type.
type dnsIDs[C any] struct {
	slot  dnsIndex // by wire id: index+1 into ents; 0: free
	ents  []dnsPending[C]
	free  []int32   // indexes of ents not in use
	queue []dnsSent // in send order; entries already answered are skipped
	qhead int
	n     int    // queries waiting
	next  uint16 // where the search for a free id starts
}

// add records client's query with id and question q, sent at now, and
// returns the id to send it with: its own, unless a query waiting on this
// socket has that one (another client's, or an earlier one of the same
// client), then the next free one. ok is false when maxDNSPending queries
// wait already.
func (t *dnsIDs[C]) add(client C, id uint16, q uint64, now int64) (wire uint16, ok bool) {
	if t.n >= maxDNSPending {
		return 0, false
	}
	wire = id
	if t.slot.get(wire) != 0 {
		// Taken: search from a moving start, so that rewritten ids do not
		// crowd together. Fewer than half the ids are ever taken, so the
		// search is short.
		t.next += 40503 // odd: every id in turn (a multiplicative-hash step)
		wire = t.next
		for t.slot.get(wire) != 0 {
			wire++
		}
	}
	var i int32
	if k := len(t.free); k > 0 {
		i = t.free[k-1]
		t.free = t.free[:k-1]
	} else {
		t.ents = append(t.ents, dnsPending[C]{})
		i = int32(len(t.ents) - 1)
	}
	t.ents[i] = dnsPending[C]{client: client, id: id, q: q, sent: now}
	t.slot.put(wire, i+1)
	t.n++
	switch q := len(t.queue) - t.qhead; {
	case q > 4096 && q > 4*t.n:
		// Mostly answered queries, kept behind an older one still waiting:
		// keep the waiting only, so the queue stays a few times the
		// queries waiting rather than every query of a session_timeout.
		k := 0
		for _, s := range t.queue[t.qhead:] {
			if i := t.slot.get(s.wire); i != 0 && t.ents[i-1].sent == s.sent {
				t.queue[k] = s
				k++
			}
		}
		t.queue, t.qhead = t.queue[:k], 0
	case t.qhead > 0 && t.qhead >= len(t.queue)/2: // reuse the queue's front
		t.queue = t.queue[:copy(t.queue, t.queue[t.qhead:])]
		t.qhead = 0
	}
	t.queue = append(t.queue, dnsSent{wire, now})
	return wire, true
}

// take forgets the query waiting with wire id and returns it.
func (t *dnsIDs[C]) take(wire uint16) dnsPending[C] {
	i := t.slot.get(wire) - 1
	p := t.ents[i]
	var zero dnsPending[C]
	t.ents[i] = zero // drop the client reference
	t.slot.del(wire)
	t.free = append(t.free, i)
	t.n--
	return p
}

// match finds the query a reply with wire id and question q (0: the reply
// has none) answers, and forgets it. A reply whose question differs from
// the query's answers nothing.
func (t *dnsIDs[C]) match(wire uint16, q uint64) (dnsPending[C], bool) {
	if t.n == 0 {
		return dnsPending[C]{}, false
	}
	if i := t.slot.get(wire); i == 0 || q != 0 && t.ents[i-1].q != q {
		return dnsPending[C]{}, false
	}
	return t.take(wire), true
}

// expireOne forgets and returns the oldest query sent before `before`
// (unix ns), if there is one.
func (t *dnsIDs[C]) expireOne(before int64) (dnsPending[C], bool) {
	for t.qhead < len(t.queue) {
		s := t.queue[t.qhead]
		if s.sent >= before {
			break
		}
		t.qhead++
		if i := t.slot.get(s.wire); i != 0 && t.ents[i-1].sent == s.sent {
			return t.take(s.wire), true
		}
	}
	if t.qhead == len(t.queue) {
		t.queue, t.qhead = t.queue[:0], 0
	}
	return dnsPending[C]{}, false
}

// oldest is when the oldest query still waiting was sent; 0: none waits.
func (t *dnsIDs[C]) oldest() int64 {
	for t.qhead < len(t.queue) {
		s := t.queue[t.qhead]
		if i := t.slot.get(s.wire); i != 0 && t.ents[i-1].sent == s.sent {
			return s.sent
		}
		t.qhead++ // answered: skip it for good
	}
	return 0
}

// all forgets every waiting query, calling f with each (the socket
// closes).
func (t *dnsIDs[C]) all(f func(dnsPending[C])) {
	for _, v := range t.slot.vals {
		if v != 0 {
			f(t.ents[v-1])
		}
	}
	clear(t.slot.vals)
	t.slot.n = 0
	clear(t.ents)
	t.ents, t.free, t.n = t.ents[:0], t.free[:0], 0
	t.queue, t.qhead = t.queue[:0], 0
}

// dnsIndex maps the ids of the queries waiting on a socket to their place:
// an open-addressing hash table (linear probing, deletion by backward
// shift) kept at most half full, so it takes a few times the queries
// waiting rather than 65,536 slots. It grows to the most queries that ever
// waited at once and is reused: get, put and del allocate nothing then.
type dnsIndex struct {
	keys  []uint16
	vals  []int32 // 0: empty
	shift uint8   // 32 - log2(len(vals))
	n     int
}

func (x *dnsIndex) home(k uint16) int { return int(uint32(k) * 0x9e3779b1 >> x.shift) }

// get returns k's value, 0 when k is not in the table.
func (x *dnsIndex) get(k uint16) int32 {
	if x.n == 0 {
		return 0
	}
	m := len(x.vals) - 1
	for i := x.home(k); ; i = (i + 1) & m {
		switch {
		case x.vals[i] == 0:
			return 0
		case x.keys[i] == k:
			return x.vals[i]
		}
	}
}

// put sets k (not in the table) to v (not 0).
func (x *dnsIndex) put(k uint16, v int32) {
	if 2*(x.n+1) > len(x.vals) {
		x.grow()
	}
	m := len(x.vals) - 1
	i := x.home(k)
	for x.vals[i] != 0 {
		i = (i + 1) & m
	}
	x.keys[i], x.vals[i] = k, v
	x.n++
}

// del removes k (in the table).
func (x *dnsIndex) del(k uint16) {
	m := len(x.vals) - 1
	i := x.home(k)
	for x.keys[i] != k || x.vals[i] == 0 {
		i = (i + 1) & m
	}
	// Move back the entries after i that probing would no longer reach.
	for j := (i + 1) & m; x.vals[j] != 0; j = (j + 1) & m {
		h := x.home(x.keys[j])
		if i <= j && (h <= i || h > j) || i > j && h <= i && h > j {
			x.keys[i], x.vals[i] = x.keys[j], x.vals[j]
			i = j
		}
	}
	x.vals[i] = 0
	x.n--
}

func (x *dnsIndex) grow() {
	size := max(2*len(x.vals), 64)
	old := *x
	x.keys, x.vals, x.n = make([]uint16, size), make([]int32, size), 0
	x.shift = uint8(32 - bits.TrailingZeros(uint(size)))
	for i, v := range old.vals {
		if v != 0 {
			x.put(old.keys[i], v)
		}
	}
}
