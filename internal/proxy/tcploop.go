//go:build linux

package proxy

import (
	"container/heap"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The TCP event loops.
//
// Every TCP connection lives in one event loop, as in HAProxy and nginx:
// the Server runs one loop per worker (Server.Workers: GOMAXPROCS, which
// worker_threads sets, at start-up), each a single goroutine with its own
// level-triggered epoll set holding the listening sockets and the sockets
// of its connections. The loop accepts, routes, dials (a non-blocking
// connect), relays and closes with raw system calls, and parks in the Go
// runtime's poller on its epoll descriptor when there is nothing to do, so
// no thread is blocked while idle (and loops can outnumber the Ps that
// internal/procs leaves the runtime at a light load). A connection costs
// no goroutine, no Go netpoller registration and no buffer while idle: its
// state is one lconn (tcpconn.go).
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
// function (post) and waking it through an eventfd. A descriptor is closed
// only by the loop that owns it, after it left the loop's tables, so a
// recycled descriptor number can never be taken for an older socket.
//
// Connections whose route needs the first bytes inspected (a PROXY header
// to read, a ClientHello or HTTP head to peek at) are the exception: the
// loop hands the socket to a goroutine that runs inspect with its
// peek_timeout through the net package, then takes it back for the rest.

type tcpLoop struct {
	epollLoop
	srv *Server
	idx int // the loop's number, 0 to Workers-1

	mu      sync.Mutex
	cmds    []func()
	running []func() // cmds being run (swapped with cmds)
	stopped bool     // no more posts are run

	fds    []fdOwner // by descriptor number
	conns  *lconn    // every connection of the loop (a circular list's head, nil: none)
	nconns int
	timers timerHeap
	now    int64 // unix nanoseconds at the start of this turn
	buf    []byte
	lsns   []*loopListener
	rot    uint32 // rotation over a resolved backend's addresses (lconn.useAddrs)
	stop   bool   // the server is shut down: leave once every connection ended
	done   chan struct{}
}

// fdOwner is what a descriptor in a loop's epoll set is.
type fdOwner struct {
	ln      *loopListener
	c       *lconn
	backend bool // c's backend socket (else its client socket)
}

// loopListener is a TCPListener's state in one loop.
type loopListener struct {
	l       *TCPListener
	fd      int
	on      bool  // in the epoll set
	retry   int64 // when to put it back after an accept failure (0: not waiting)
	backoff time.Duration
	failing bool
}

const maxLoopEvents = 256 // epoll events per turn

func newTCPLoop(s *Server, idx int) (*tcpLoop, error) {
	lp := &tcpLoop{srv: s, idx: idx, done: make(chan struct{})}
	if err := lp.openEpoll("tcp-epoll", maxLoopEvents); err != nil {
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
				l.closeEpoll()
			}
			return err
		}
		loops = append(loops, lp)
	}
	s.loops = loops
	for _, lp := range loops {
		go lp.run()
	}
	return nil
}

// post runs f in the loop. It reports false when the loop is gone.
func (lp *tcpLoop) post(f func()) bool {
	lp.mu.Lock()
	if lp.stopped {
		lp.mu.Unlock()
		return false
	}
	lp.cmds = append(lp.cmds, f)
	wake := len(lp.cmds) == 1
	lp.mu.Unlock()
	if wake {
		lp.wake()
	}
	return true
}

// call runs f in the loop and waits for it; false when the loop is gone.
func (lp *tcpLoop) call(f func()) bool {
	done := make(chan struct{})
	if !lp.post(func() { f(); close(done) }) {
		return false
	}
	<-done
	return true
}

func (lp *tcpLoop) run() {
	defer func() {
		lp.mu.Lock()
		lp.stopped = true
		lp.mu.Unlock()
		lp.closeEpoll()
		close(lp.done)
	}()
	for {
		err := lp.wait()
		lp.now = time.Now().UnixNano()
		if err != nil {
			lp.srv.log.Error("tcp event loop stopped", "err", err)
			return
		}
		for i := 0; i < lp.nev; i++ {
			ev := lp.events[i]
			fd := int(ev.Fd)
			if fd == lp.evfd {
				lp.woken()
				lp.runCmds()
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
		lp.expire()
		if lp.stop && lp.conns == nil {
			return
		}
		lp.arm()
	}
}

func (lp *tcpLoop) runCmds() {
	lp.mu.Lock()
	cmds := lp.cmds
	lp.cmds, lp.running = lp.running[:0], nil
	lp.mu.Unlock()
	for i, f := range cmds {
		f()
		cmds[i] = nil
	}
	lp.mu.Lock()
	if lp.running == nil {
		lp.running = cmds[:0]
	}
	lp.mu.Unlock()
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

// addListener puts l's listening socket in the loop.
func (lp *tcpLoop) addListener(l *TCPListener) {
	ll := &loopListener{l: l, fd: l.fd}
	lp.lsns = append(lp.lsns, ll)
	lp.own(l.fd, fdOwner{ln: ll})
	lp.listen(ll)
}

func (lp *tcpLoop) listen(ll *loopListener) {
	if err := lp.control(unix.EPOLL_CTL_ADD, ll.fd, unix.EPOLLIN|unix.EPOLLEXCLUSIVE); err != nil {
		lp.srv.log.Error("listener not added to the event loop", "listener", ll.l.addr.String(), "err", err)
		return
	}
	ll.on = true
}

// removeListener takes l's listening socket out of the loop (before it is
// closed).
func (lp *tcpLoop) removeListener(l *TCPListener) {
	for i, ll := range lp.lsns {
		if ll.l != l {
			continue
		}
		if ll.on {
			_ = lp.control(unix.EPOLL_CTL_DEL, ll.fd, 0)
		}
		lp.disown(ll.fd)
		lp.lsns = append(lp.lsns[:i], lp.lsns[i+1:]...)
		return
	}
}

// accept takes the connections waiting on a listener, a bounded number per
// turn so that one busy listener does not starve the loop's connections.
func (lp *tcpLoop) accept(ll *loopListener) {
	s, l := lp.srv, ll.l
	for range 16 {
		if !s.fdRoom(2) {
			// The data path is at its descriptor budget (fdbudget.go):
			// the clients wait in the backlog, as on EMFILE. (Unless
			// another loop took the connection that woke this one.)
			if acceptPending(ll.fd) {
				s.refuse(RefusedAccept, l.addr.String())
				lp.pause(ll)
			}
			return
		}
		var sa unix.RawSockaddrInet6
		fd, err := accept4(ll.fd, &sa)
		if err != 0 {
			switch err {
			case unix.EAGAIN:
				return
			case unix.EINTR, unix.ECONNABORTED:
				continue
			}
			// EMFILE, ENFILE, ENOBUFS…: leave the listener out of the epoll
			// set for a backoff instead of spinning, and say so once per
			// episode (exhaust.go), not once per attempt.
			serr := os.NewSyscallError("accept4", err)
			if resourceError(serr) {
				s.exhaust.failed(s.log, false, l.addr.String(), serr)
			} else if !ll.failing {
				s.log.Error("accept failed; backing off until it succeeds", "listener", l.addr.String(), "err", serr)
				ll.failing = true
			}
			lp.pause(ll)
			return
		}
		if ll.failing {
			s.log.Info("accept recovered", "listener", l.addr.String())
			ll.failing = false
		}
		ll.backoff = 0
		s.Stats.Accepted.Add(1)
		if s.closing.Load() {
			rawClose(fd)
			continue
		}
		if max := s.maxConns.Load(); !s.admitConn(max) {
			s.tcpMaxConnections(l.Routes(), l.addr.String(), max)
			resetClose(fd)
			continue
		}
		s.wg.Add(1) // (TCP_NODELAY comes from the listening socket: ListenTCP)
		c := &lconn{lp: lp, l: l, cfd: fd, bfd: -1, start: time.Now(), hidx: -1}
		c.ci.Client = sockaddrAddrPort(&sa)
		lp.link(c)
		c.begin()
	}
}

// pause takes a listener out of the epoll set for a backoff that doubles
// from 5 ms to 1 s while accepting keeps failing.
func (lp *tcpLoop) pause(ll *loopListener) {
	ll.backoff = nextBackoff(ll.backoff)
	if ll.on {
		_ = lp.control(unix.EPOLL_CTL_DEL, ll.fd, 0)
		ll.on = false
	}
	ll.retry = lp.now + int64(ll.backoff)
}

// link adds c to the loop's connections.
func (lp *tcpLoop) link(c *lconn) {
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
	for len(lp.timers) > 0 && lp.timers[0].due <= lp.now {
		c := lp.timers[0]
		lp.timers.remove(c)
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
	var next int64
	if len(lp.timers) > 0 {
		next = lp.timers[0].due
	}
	for _, ll := range lp.lsns {
		if ll.retry != 0 && (next == 0 || ll.retry < next) {
			next = ll.retry
		}
	}
	if next != lp.armed {
		lp.setDeadline(next)
	}
}

// timerHeap is a min-heap (container/heap) of connections by due time;
// each connection has at most one deadline at a time (connect, dial retry
// or idle), and knows its place in the heap (hidx, -1: none).
type timerHeap []*lconn

func (h *timerHeap) set(c *lconn, due int64) {
	c.due = due
	if c.hidx >= 0 {
		heap.Fix(h, c.hidx)
		return
	}
	heap.Push(h, c)
}

func (h *timerHeap) remove(c *lconn) {
	if c.hidx >= 0 {
		heap.Remove(h, c.hidx)
	}
}

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx, h[j].hidx = i, j
}

func (h *timerHeap) Push(x any) {
	c := x.(*lconn)
	c.hidx = len(*h)
	*h = append(*h, c)
}

func (h *timerHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.hidx = -1
	return c
}

// TCPLoops is the number of TCP event loops running (0 before the first
// TCP listener).
func (s *Server) TCPLoops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.loops)
}
