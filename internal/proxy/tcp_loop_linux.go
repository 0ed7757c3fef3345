//go:build linux

package proxy

import (
	"sync/atomic"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// The TCP event loops.
//
// Every TCP connection lives in one event loop, as in HAProxy and nginx:
// the Server runs one loop per worker (Server.Workers: GOMAXPROCS, which
// worker_threads sets, at start-up), each a single goroutine with its own
// epoll set holding the listening sockets (level-triggered) and the sockets
// of its connections (edge-triggered). The loop accepts, routes, dials (a non-blocking
// connect), relays and closes with raw system calls, and parks in the Go
// runtime's poller on its epoll descriptor when there is nothing to do, so
// no thread is blocked while idle (and loops can outnumber the Ps that
// internal/procs leaves the runtime at a light load). A connection costs
// no goroutine, no Go netpoller registration and no buffer while idle: its
// state is one lconn (tcp_conn_linux.go).
//
// Why not a goroutine per connection, as the net package invites: under a
// connection churn that design spends more CPU per connection than HAProxy
// however its goroutines are arranged, because the Go runtime's costs
// dominate it: accept, dial and close go through the blocking-syscall
// protocol, which wakes sysmon; two or three goroutines per connection wake
// threads on the other CPU; and the edge-triggered netpoller needs a read
// that only returns EAGAIN before each wait. docs/architecture.md has the
// decision, docs/BENCHMARKS.md the figures.
//
// The listening socket of a TCPListener is in every loop's epoll set with
// EPOLLEXCLUSIVE, so a new connection wakes one loop, which accepts it and
// keeps it for its whole life. Only the loop touches a connection, its
// descriptors and its timers; other goroutines ask it to act by posting a
// function (eventloop.Loop.Post), which wakes it through an eventfd. A descriptor is closed
// only by the loop that owns it, after it left the loop's tables, so a
// recycled descriptor number can never be taken for an older socket.
//
// Connections whose route needs the first bytes inspected (a PROXY header
// to read, a ClientHello or HTTP head to peek at) are the exception: the
// loop hands the socket to a goroutine that runs inspect with its
// peek_timeout through the net package, then takes it back for the rest.

type tcpLoop struct {
	eventloop.Loop // the epoll set, the posted functions, the timer deadline
	srv            *Server
	idx            int // the loop's number, 0 to Workers-1

	fds       []fdOwner // by descriptor number
	conns     *lconn    // every connection of the loop (a circular list's head, nil: none)
	nconns    int
	timers    eventloop.Heap[*lconn]
	now       int64 // unix nanoseconds at the start of this turn
	buf       []byte
	lsns      []*loopListener
	turnReads int      // reads a direction makes per turn (lconn.pump)
	redo      []*lconn // connections to drive again next turn (lconn.queued)
	redo2     []*lconn // the list being driven (swapped with redo)
	rot       uint32   // rotation over a resolved backend's addresses (lconn.useAddrs)
	stop      bool     // the server is shut down: leave once every connection ended
	ids       idRange  // connection ids taken from the server (Server.nextID)

	// What others read of the loop's counts (Server.Accepted, Active), on
	// a line of its own: only the loop writes them.
	_        [64]byte
	accepted atomic.Int64 // connections accepted
	active   atomic.Int64 // connections it holds (nconns)
	spare    atomic.Int64 // slots of max_connections taken and not in use (takeSlot); others take one only when the room is out (stealSlot)
	spareOf  atomic.Int64 // the slots' epoch the spares were taken in
	_        [32]byte
}

// takeSlot takes a slot of max_connections for a new connection: a spare
// one, else a batch from the server's room, else another loop's spare
// (slots.go). It reports false at the cap.
func (lp *tcpLoop) takeSlot() bool {
	sl := &lp.srv.slots
	e := sl.epoch.Load()
	if lp.spareOf.Load() != e {
		lp.giveSpare()
		lp.spareOf.Store(e)
	}
	if lp.useSpare(e) {
		return true
	}
	if k := sl.take(sl.batch.Load()); k > 0 {
		lp.spare.Add(k - 1)
		return true
	}
	return lp.srv.stealSlot(lp)
}

// useSpare takes one of the loop's spare slots, if it has one taken in
// epoch (the loop itself, or another loop out of room).
func (lp *tcpLoop) useSpare(epoch int64) bool {
	for {
		n := lp.spare.Load()
		if n <= 0 || lp.spareOf.Load() != epoch {
			return false
		}
		if lp.spare.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// giveSlot takes back the slot of a connection that ended: the loop keeps
// up to two batches spare (none with a batch of one) and gives the rest
// back.
func (lp *tcpLoop) giveSlot() {
	sl := &lp.srv.slots
	keep := sl.batch.Load()
	if keep == 1 || lp.spareOf.Load() != sl.epoch.Load() {
		keep = 0
	} else {
		keep *= 2
	}
	n := lp.spare.Add(1)
	for n > keep {
		if lp.spare.CompareAndSwap(n, keep) {
			sl.give(n - keep)
			return
		}
		n = lp.spare.Load()
	}
}

// giveSpare gives every spare slot back (a change of the cap).
func (lp *tcpLoop) giveSpare() {
	if n := lp.spare.Swap(0); n > 0 {
		lp.srv.slots.give(n)
	}
}

// fdOwner is what a descriptor in a loop's epoll set is.
type fdOwner struct {
	ln      *loopListener
	c       *lconn
	backend bool // c's backend socket (else its client socket)
}

const maxLoopEvents = 256 // epoll events per turn

func newTCPLoop(s *Server, idx int) (*tcpLoop, error) {
	lp := &tcpLoop{srv: s, idx: idx, turnReads: defaultTurnReads}
	if s.turnReads > 0 {
		lp.turnReads = s.turnReads
	}
	if err := lp.Open("tcp-epoll", maxLoopEvents); err != nil {
		return nil, err
	}
	return lp, nil
}

// startLoops starts the server's TCP loops unless they run. Called with s.mu held.
func (s *Server) startLoops() error {
	if s.loops != nil {
		return nil
	}
	n := s.Workers()
	loops := make([]*tcpLoop, 0, n)
	for i := range n {
		lp, err := newTCPLoop(s, i)
		if err != nil {
			for _, l := range loops {
				l.Close()
			}
			return err
		}
		loops = append(loops, lp)
	}
	s.loops = loops
	s.loopsOnce.Store(&loops)
	for _, lp := range loops {
		go lp.run()
	}
	return nil
}

func (lp *tcpLoop) run() {
	defer lp.Exit()
	for {
		var err error
		if len(lp.redo) > 0 {
			lp.Poll() // connections have bytes to move: collect events, do not park
		} else {
			err = lp.Wait()
		}
		lp.now = time.Now().UnixNano()
		lp.Busy(lp.now)
		if err != nil {
			lp.srv.log.Error("tcp event loop stopped", "err", err)
			return
		}
		for _, ev := range lp.Events() {
			fd := int(ev.Fd)
			if fd == lp.WakeFD() {
				lp.RunPosted()
				continue
			}
			if fd >= len(lp.fds) {
				continue
			}
			switch o := lp.fds[fd]; {
			case o.c != nil:
				o.c.event(o.backend, ev.Events)
			case o.ln != nil:
				lp.accept(o.ln)
			}
		}
		lp.driveAgain()
		lp.expire()
		if lp.stop && lp.conns == nil {
			return
		}
		lp.arm()
	}
}

// again queues c to be driven next turn: it stopped with bytes to read
// (its turn's bound), and being edge-triggered, no event would say so.
func (lp *tcpLoop) again(c *lconn) {
	if !c.queued {
		c.queued = true
		lp.redo = append(lp.redo, c)
	}
}

// driveAgain drives the connections queued by again.
func (lp *tcpLoop) driveAgain() {
	if len(lp.redo) == 0 {
		return
	}
	cs := lp.redo
	lp.redo, lp.redo2 = lp.redo2[:0], nil
	for i, c := range cs {
		c.queued = false
		if c.state == stRelay {
			c.drive()
		}
		cs[i] = nil
	}
	if lp.redo2 == nil {
		lp.redo2 = cs[:0]
	}
}

// own records what descriptor fd is in this loop.
func (lp *tcpLoop) own(fd int, o fdOwner) {
	if fd >= len(lp.fds) {
		n := max(2*len(lp.fds), fd+1, 64)
		fds := make([]fdOwner, n)
		copy(fds, lp.fds)
		lp.fds = fds
	}
	lp.fds[fd] = o
}

func (lp *tcpLoop) disown(fd int) {
	if fd >= 0 && fd < len(lp.fds) {
		lp.fds[fd] = fdOwner{}
	}
}

// link adds c to the loop's connections. While it has any, the loop holds
// one count in the server's wg (Shutdown waits for it): a shared write
// when the loop goes from idle to busy, not one per connection.
func (lp *tcpLoop) link(c *lconn) {
	if lp.nconns == 0 {
		lp.srv.wg.Add(1)
	}
	if lp.conns == nil {
		c.prev, c.next = c, c
		lp.conns = c
	} else {
		h := lp.conns
		c.prev, c.next = h.prev, h
		h.prev.next = c
		h.prev = c
	}
	lp.nconns++
	lp.active.Store(int64(lp.nconns))
}

func (lp *tcpLoop) unlink(c *lconn) {
	if c.next == nil {
		return
	}
	if c.next == c {
		lp.conns = nil
	} else {
		c.prev.next = c.next
		c.next.prev = c.prev
		if lp.conns == c {
			lp.conns = c.next
		}
	}
	c.prev, c.next = nil, nil
	lp.nconns--
	lp.active.Store(int64(lp.nconns))
	if lp.nconns == 0 {
		lp.srv.wg.Done()
	}
}

// each calls f for every connection of the loop (f may end the connection).
func (lp *tcpLoop) each(f func(*lconn)) {
	var all []*lconn
	if c := lp.conns; c != nil {
		for {
			all = append(all, c)
			if c = c.next; c == lp.conns {
				break
			}
		}
	}
	for _, c := range all {
		if c.next != nil {
			f(c)
		}
	}
}

// expire fires the timers that are due: connection deadlines and listeners
// waiting out an accept backoff.
func (lp *tcpLoop) expire() {
	for {
		c, ok := lp.timers.PopDue(lp.now)
		if !ok {
			break
		}
		c.timeout()
	}
	for _, ll := range lp.lsns {
		if ll.retry != 0 && ll.retry <= lp.now {
			ll.retry = 0
			if !ll.on {
				lp.listen(ll)
			}
		}
	}
}

// arm sets the epoll descriptor's read deadline to the next timer.
func (lp *tcpLoop) arm() {
	next, _ := lp.timers.Next()
	for _, ll := range lp.lsns {
		if ll.retry != 0 && (next == 0 || ll.retry < next) {
			next = ll.retry
		}
	}
	if next != lp.Armed() {
		lp.SetDeadline(next)
	}
}

// TCPLoops is the number of TCP event loops running (0 before the first
// TCP listener).
func (s *Server) TCPLoops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.loops)
}
