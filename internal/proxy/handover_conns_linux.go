//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// Established TCP connections of the epoll engine cross to the process an
// upgrade started (internal/upgrade carries them): the old process takes
// a relayed connection out of its loop (DetachConns) — both sockets, what
// it holds unwritten in either direction, its identity and counts — and
// the new one puts it in one of its loops (AdoptConn), which writes the
// held bytes first and then relays as if nothing happened. Bytes that
// arrive meanwhile wait in the sockets' kernel buffers. A connection in
// any other state (being inspected, routed, dialled) or on the goroutine
// engine (TLS) is not moved; it finishes in the old process.

// HandedConn is a relayed connection as it crosses between processes.
type HandedConn struct {
	ID          uint64    `json:"id"`       // its connection id, kept by the new process (conns.go)
	Listener    string    `json:"listener"` // the listening socket's bound address (shared by both processes)
	Rule        string    `json:"rule"`
	Backend     string    `json:"backend"` // its id
	BackendAddr string    `json:"backend_addr"`
	Client      string    `json:"client"`
	Start       time.Time `json:"start"`
	Up          HandedDir `json:"up"`   // client → backend
	Down        HandedDir `json:"down"` // backend → client
}

// HandedDir is one direction of a HandedConn.
type HandedDir struct {
	Pend []byte `json:"pend,omitempty"` // read from the source, not yet written to the destination
	Skip int    `json:"skip,omitempty"` // bytes at the front of Pend not counted as traffic (a PROXY header)
	EOF  bool   `json:"eof,omitempty"`  // the source sent its FIN
	Shut bool   `json:"shut,omitempty"` // the destination was sent a FIN
	N    int64  `json:"n"`              // bytes moved so far
}

// Detached is a connection taken out of this process: the caller sends
// it with both descriptors, then closes them.
type Detached struct {
	HandedConn
	CFD, BFD int
}

// MaxHandedBytes bounds what a moved connection may hold unwritten (both
// directions); one holding more finishes in the old process.
const MaxHandedBytes = 64 << 10

// Targets names, by listener address, the rules and their backend ids a
// process serves: what a new process can adopt.
type Targets map[string]map[string][]string

// AdoptTargets is what this server can adopt: the epoll engine's TCP
// listeners and their routes (nil on the goroutine engine, which adopts
// nothing).
func (s *Server) AdoptTargets() Targets {
	if s.goroutineEngine() {
		return nil
	}
	t := Targets{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for l := range s.listeners {
		tl, ok := l.(*TCPListener)
		if !ok {
			continue
		}
		rules := map[string][]string{}
		for _, rt := range tl.Routes() {
			if rt.TLS != nil || len(rt.BackendTLS) > 0 {
				continue // served by the goroutine engine
			}
			for _, b := range rt.Backends {
				rules[rt.Name] = append(rules[rt.Name], b.ID+"\x00"+b.Address)
			}
		}
		t[tl.addr.String()] = rules
	}
	s.udpTargets(t)
	return t
}

// Lacks reports whether no listener of t has rule with backend id at addr:
// a connection on it has nowhere to go in the new process.
func (t Targets) Lacks(rule, id, addr string) bool {
	for l := range t {
		if t.has(l, rule, id, addr) {
			return false
		}
	}
	return true
}

func (t Targets) has(listener, rule, id, addr string) bool {
	for _, b := range t[listener][rule] {
		if b == id+"\x00"+addr {
			return true
		}
	}
	return false
}

// DetachConns takes out of the loops every relayed connection whose
// listener, rule and backend t has, and returns them; this process no
// longer reads, writes or counts them. Call it after ReleaseListeners.
func (s *Server) DetachConns(t Targets) []Detached {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	var out []Detached
	for _, lp := range loops {
		lp.Call(func() {
			lp.each(func(c *lconn) {
				if c.state != stRelay || !t.has(c.l.addr.String(), c.rt.Name, c.be.ID, c.be.Address) {
					return
				}
				if d, ok := c.detach(); ok {
					out = append(out, d)
				}
			})
		})
	}
	return out
}

// detach takes c out of its loop (on the loop's goroutine).
func (c *lconn) detach() (Detached, bool) {
	up, ok1 := c.up.handed(c.lp)
	down, ok2 := c.down.handed(c.lp)
	if !ok1 || !ok2 || len(up.Pend)+len(down.Pend) > MaxHandedBytes {
		return Detached{}, false
	}
	d := Detached{HandedConn: HandedConn{
		ID: c.ID, Listener: c.l.addr.String(), Rule: c.rt.Name, Backend: c.be.ID, BackendAddr: c.be.Address,
		Client: c.ci.Client.String(), Start: c.Start, Up: up, Down: down,
	}, CFD: c.cfd, BFD: c.bfd}
	lp := c.lp
	for _, fd := range []struct {
		fd  int
		reg bool
	}{{c.cfd, c.creg}, {c.bfd, c.breg}} {
		if fd.reg {
			_ = lp.Control(unix.EPOLL_CTL_DEL, fd.fd, 0)
		}
		lp.disown(fd.fd)
	}
	c.creg, c.breg, c.cmask, c.bmask = false, false, 0, 0
	for _, dir := range []*ldir{&c.up, &c.down} {
		if dir.pbuf != nil {
			putBuf(dir.pbuf)
		}
		if dir.pipe != nil {
			putPipe(dir.pipe) // emptied by handed
		}
		*dir = ldir{}
	}
	c.cfd, c.bfd = -1, -1
	c.state = stDone
	c.be.Release(c.lp.idx)
	c.release()
	c.untrack()
	return d, true
}

// handed copies what the direction holds; what sits in its splice pipe is
// read out of it.
func (d *ldir) handed(lp *tcpLoop) (HandedDir, bool) {
	h := HandedDir{Pend: append([]byte(nil), d.pend...), Skip: d.skip, EOF: d.eof, Shut: d.shut, N: d.n}
	for d.inPipe > 0 {
		buf := make([]byte, d.inPipe)
		n, err := unix.Read(d.pipe.R, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return HandedDir{}, false
		}
		h.Pend = append(h.Pend, buf[:n]...)
		d.inPipe -= n
	}
	return h, true
}

// AdoptConn takes a connection handed over by the old process into one
// of the loops: cfd and bfd are its sockets (owned by the server from
// now on, closed on an error).
func (s *Server) AdoptConn(h HandedConn, cfd, bfd int, n int) error {
	fail := func(err error) error { eventloop.Close(cfd); eventloop.Close(bfd); return err }
	client, err := netip.ParseAddrPort(h.Client)
	if err != nil {
		return fail(err)
	}
	s.mu.Lock()
	var l *TCPListener
	for x := range s.listeners {
		if tl, ok := x.(*TCPListener); ok && tl.addr.String() == h.Listener {
			l = tl
		}
	}
	loops := s.loops
	s.mu.Unlock()
	if l == nil || len(loops) == 0 {
		return fail(fmt.Errorf("no TCP listener on %s", h.Listener))
	}
	var rt *Route
	for _, r := range l.Routes() {
		if r.Name == h.Rule {
			rt = r
		}
	}
	if rt == nil {
		return fail(fmt.Errorf("no rule %q on %s", h.Rule, h.Listener))
	}
	c := &lconn{ConnIdent: ConnIdent{ID: h.ID, Start: h.Start}, l: l, cfd: cfd, bfd: bfd, rt: rt, release: func() {}}
	l.srv.SkipConnIDs(h.ID)
	for _, b := range rt.Backends {
		if b.ID == h.Backend && b.Address == h.BackendAddr {
			c.be = b
		}
	}
	if c.be == nil {
		return fail(fmt.Errorf("rule %q has no backend %q at %s", h.Rule, h.Backend, h.BackendAddr))
	}
	c.ci.Client = client
	c.timer.Owner = c
	for _, x := range []struct {
		d *ldir
		h HandedDir
	}{{&c.up, h.Up}, {&c.down, h.Down}} {
		x.d.pend, x.d.skip, x.d.eof, x.d.shut, x.d.n = x.h.Pend, x.h.Skip, x.h.EOF, x.h.Shut, x.h.N
		if len(x.d.pend) == 0 {
			x.d.pend = nil
		}
	}
	lp := loops[n%len(loops)]
	s.wg.Add(1)
	s.slots.room.Add(-1) // a slot whatever the cap: the connection is open already
	c.be.Acquire(lp.idx)
	if !lp.Post(func() { c.adopted(lp) }) {
		s.slots.give(1)
		s.wg.Done()
		c.be.Release(lp.idx)
		return fail(errors.New("the event loop has stopped"))
	}
	return nil
}

// adopted starts relaying an adopted connection (on its loop).
func (c *lconn) adopted(lp *tcpLoop) {
	c.lp = lp
	c.state = stRelay
	lp.link(c)
	lp.srv.wg.Done() // the loop's count covers it now, instead of the one taken before posting
	lp.own(c.cfd, fdOwner{c: c})
	lp.own(c.bfd, fdOwner{c: c, backend: true})
	if c.idle = int64(c.rt.IdleTimeout); c.idle > 0 {
		c.last = lp.now
		lp.timers.Set(&c.timer, c.last+c.idle)
	}
	// What the old process's edges said is not known here: try each way
	// once (a read that finds nothing clears it).
	c.up.rd, c.up.wr, c.down.rd, c.down.wr = true, true, true, true
	c.drive()
}
