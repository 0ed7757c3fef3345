package proxy

import (
	"container/heap"
	"net/netip"
	"sort"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// Connections, live: the admin API's list of open TCP connections and UDP
// sessions, and closing them by id, backend or client.
//
// Nothing here is counted per byte or per event: a list reads what the
// engines already keep for their own work (each direction's byte count,
// the last activity idle_timeout watches), on demand, where it lives —
// the epoll engine's connections in their loop (Loop.Call), the goroutine
// engine's under the locks their goroutines already take. A connection's
// only new state is its ConnIdent, numbered once at accept.

// ConnIdent is a connection's identity for its whole life: the id the
// access log, every log line about it and the admin API show, and when it
// was accepted. A TCP connection handed to another engine (TLS) or process
// keeps it.
type ConnIdent struct {
	ID    uint64
	Start time.Time
}

// newIdent numbers a connection accepted at start.
func (s *Server) newIdent(start time.Time) ConnIdent {
	return ConnIdent{ID: s.connIDs.Add(1), Start: start}
}

// idBlock is how many ids an event loop or UDP shard takes at a time
// (idRange), so that numbering writes the shared counter once per idBlock
// connections rather than once per connection. Ids stay unique; across
// loops they are not in accept order.
const idBlock = 64

// idRange is the ids a loop has taken and not given yet; the loop's own.
type idRange struct {
	next, end uint64 // next id to give; end: one past the last taken
	epoch     uint64 // Server.idEpoch when taken
}

// nextID numbers a connection of the loop that owns r.
func (s *Server) nextID(r *idRange) uint64 {
	if e := s.idEpoch.Load(); r.next == r.end || r.epoch != e {
		r.epoch = e
		r.end = s.connIDs.Add(idBlock) + 1
		r.next = r.end - idBlock
	}
	id := r.next
	r.next++
	return id
}

// LastConnID is at least every id given so far (0: none yet).
func (s *Server) LastConnID() uint64 { return s.connIDs.Load() }

// SkipConnIDs makes the ids given from now on greater than last: a process
// taking connections over from another (with their ConnIdent) calls it with
// the greatest id it took, so that no new connection gets a taken id. The
// loops drop the ids they hold (idEpoch).
func (s *Server) SkipConnIDs(last uint64) {
	for {
		n := s.connIDs.Load()
		if n >= last || s.connIDs.CompareAndSwap(n, last) {
			break
		}
	}
	s.idEpoch.Add(1) // a loop may hold ids up to last even when the counter is past it
}

// Connection states, as listed.
const (
	StateRouting     = "routing"     // accepted, not yet routed
	StateInspecting  = "inspecting"  // reading a PROXY header or peeking at the first bytes
	StateResolving   = "resolving"   // the backend's host name is looked up
	StateConnecting  = "connecting"  // dialling the backend
	StateEstablished = "established" // relaying (TCP) or open (UDP)
)

// ConnEntry is one open connection or session as the admin API lists it.
type ConnEntry struct {
	ConnIdent
	Protocol    string // "tcp" or "udp"
	Rule        string // "" before routing
	Backend     string // the backend's id; "" before one is picked
	BackendAddr string
	Client      netip.AddrPort
	Local       netip.AddrPort // the address the client connected (sent) to
	LastActive  time.Time      // the last byte or datagram either way (Start before any)
	BytesIn     int64          // client → backend
	BytesOut    int64          // backend → client
	State       string
}

// ConnFilter selects connections; its zero value selects every one.
type ConnFilter struct {
	ID       uint64           // 0: any
	Protocol string           // "tcp", "udp"; "": both
	Rule     string           // "": any
	Backend  string           // a backend id; "": any
	Of       *backend.Backend // this very backend; nil: any
	Client   netip.Prefix     // the client's address within; invalid: any
	// Gone, when set, selects only routed connections whose rule and
	// backend (id, address) it says are gone: those the new process of an
	// upgrade does not have.
	Gone func(rule, id, addr string) bool
}

// match reports whether a connection of protocol, with id, routed by rt
// (nil: not yet), on backend b (nil: none yet), from client, is selected.
func (f *ConnFilter) match(protocol string, id uint64, rt *Route, b *backend.Backend, client netip.AddrPort) bool {
	switch {
	case f.ID != 0 && f.ID != id,
		f.Protocol != "" && f.Protocol != protocol,
		f.Rule != "" && (rt == nil || rt.Name != f.Rule),
		f.Backend != "" && (b == nil || b.ID != f.Backend),
		f.Of != nil && b != f.Of,
		f.Gone != nil && (rt == nil || b == nil || !f.Gone(rt.Name, b.ID, b.Address)):
		return false
	case f.Client.IsValid():
		return f.Client.Contains(client.Addr().Unmap()) || f.Client.Contains(client.Addr())
	}
	return true
}

// connSink receives the connections an engine finds selected, on the
// goroutine that owns them (a loop, or under the engine's locks): want
// says whether it keeps id (so an entry is built only when kept), put
// takes the entry and a way to close the connection later from any
// goroutine.
type connSink interface {
	want(id uint64) bool
	put(e ConnEntry, closer func(End))
}

// eachConn gives sink every selected connection of both engines. The
// engines visit their connections one after the other, so a sink needs no
// lock.
func (s *Server) eachConn(f *ConnFilter, sink connSink) {
	s.eachConnEpoll(f, sink)
	s.eachConnGo(f, sink)
}

// ConnPage is a page of the list, by ascending id.
type ConnPage struct {
	Conns []ConnEntry
	Total int    // selected connections in all
	Next  uint64 // the after of the next page; 0: this is the last
}

// Conns lists the selected connections whose id is above after, at most
// limit of them (by ascending id). It holds at most limit entries, however
// many are open: a loop is held for a walk of its connections.
func (s *Server) Conns(f ConnFilter, after uint64, limit int) ConnPage {
	p := &pageSink{after: after, limit: max(limit, 0)}
	s.eachConn(&f, p)
	out := p.h.e
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	page := ConnPage{Conns: out, Total: p.total}
	if n := len(out); n > 0 && p.beyond > n {
		page.Next = out[n-1].ID
	}
	return page
}

// CloseConns closes the selected connections now, as ended by end, and
// returns how many.
func (s *Server) CloseConns(f ConnFilter, end End) int {
	k := &closeSink{}
	s.eachConn(&f, k)
	for _, c := range k.closers {
		c(end)
	}
	return len(k.closers)
}

// ConnClosers returns a closer for each selected connection, to close them
// later (one at a time, spread over a window: on_backend_down). A closer of
// a connection that has ended meanwhile does nothing.
func (s *Server) ConnClosers(f ConnFilter) []func(End) {
	k := &closeSink{}
	s.eachConn(&f, k)
	return k.closers
}

// pageSink keeps the limit smallest ids above after.
type pageSink struct {
	after  uint64
	limit  int
	total  int // selected
	beyond int // selected above after
	h      entryHeap
}

func (p *pageSink) want(id uint64) bool {
	p.total++
	if id <= p.after {
		return false
	}
	p.beyond++
	return p.limit > 0 && (len(p.h.e) < p.limit || id < p.h.e[0].ID)
}

func (p *pageSink) put(e ConnEntry, _ func(End)) {
	if len(p.h.e) < p.limit {
		heap.Push(&p.h, e)
		return
	}
	p.h.e[0] = e
	heap.Fix(&p.h, 0)
}

// entryHeap is a max-heap of entries by id.
type entryHeap struct{ e []ConnEntry }

func (h *entryHeap) Len() int           { return len(h.e) }
func (h *entryHeap) Less(i, j int) bool { return h.e[i].ID > h.e[j].ID }
func (h *entryHeap) Swap(i, j int)      { h.e[i], h.e[j] = h.e[j], h.e[i] }
func (h *entryHeap) Push(x any)         { h.e = append(h.e, x.(ConnEntry)) }
func (h *entryHeap) Pop() any {
	x := h.e[len(h.e)-1]
	h.e = h.e[:len(h.e)-1]
	return x
}

// closeSink collects closers.
type closeSink struct{ closers []func(End) }

func (*closeSink) want(uint64) bool { return true }
func (k *closeSink) put(_ ConnEntry, c func(End)) {
	k.closers = append(k.closers, c)
}

// connEntry fills what every engine's entry has.
func connEntry(protocol string, id ConnIdent, rt *Route, b *backend.Backend, client, local netip.AddrPort, last int64, in, out int64, state string) ConnEntry {
	e := ConnEntry{ConnIdent: id, Protocol: protocol, Client: client, Local: local, BytesIn: in, BytesOut: out, State: state, LastActive: id.Start}
	if rt != nil {
		e.Rule = rt.Name
	}
	if b != nil {
		e.Backend, e.BackendAddr = b.ID, b.Address
	}
	if last > 0 {
		e.LastActive = time.Unix(0, last)
	}
	return e
}
