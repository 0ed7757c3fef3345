//go:build linux

// Package eventloop is the Linux layer the proxy's event loops stand on:
// an epoll set parked on through the Go runtime's poller (Poller), one way
// for other goroutines to hand a loop work (Loop.Post and Loop.Call), a
// timer heap without interface calls (Heap), the raw system calls a loop
// makes (rawio.go), the splice-pipe pool (splice.go) and the
// recvmmsg/sendmmsg batches with their sockaddr and pktinfo encoding
// (mmsg.go).
//
// Everything here is mechanism: it knows sockets, descriptors and time,
// not routes, backends or connections. The TCP and UDP engines of
// internal/proxy (tcp_*_linux.go, udp_*_linux.go) are built on it; the
// routing policy they share (matching, access, inspection, observers) is
// portable code in internal/proxy.
//
// A loop is one goroutine. Only that goroutine calls Wait, Events,
// SetDeadline, Control and RunPosted, and only it touches the descriptors
// it owns; Wake, Post and Call are safe from any goroutine.
package eventloop

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Poller is an epoll set (each registration level- or edge-triggered, as
// its loop chooses) that its loop's goroutine parks
// on through the Go runtime's poller (no thread blocks while idle), an
// eventfd that other goroutines wake it with, and the epoll descriptor's
// read deadline as the loop's timer. Its zero value is closed: Close and
// Wake do nothing until Open.
type Poller struct {
	epfd   int      // -1 until open
	ep     *os.File // epfd handed to the runtime poller
	epRC   syscall.RawConn
	pollFn func(uintptr) bool

	wakeMu sync.Mutex
	opened bool // Open was called: epfd and evfd are descriptors or -1
	evfd   int  // -1 until open and once closed

	events []unix.EpollEvent
	nev    int   // events collected by the last wait
	armed  int64 // read deadline in unix ns (0: none, -1: it passed)

	// Turns without a park (Busy): polls counts pollEvents' calls in a
	// Wait (more than one: it parked), busySince is when the loop's turns
	// without a park began (0: it just parked), yield asks the next Wait
	// or Poll to park all the same.
	polls     int
	busySince int64
	yield     bool
	yieldFn   func(uintptr) bool
	yields    int
}

// YieldAfter is the longest a loop runs turns without parking. A loop that
// always finds events ready never enters the scheduler, so it keeps its P;
// when loops outnumber the Ps (internal/procs), another loop's events then
// wait for the runtime's next network poll, which sysmon forces only every
// 10 ms. Parking once per YieldAfter lets the scheduler poll and run them.
const YieldAfter = int64(time.Millisecond)

// Open creates the epoll set and the eventfd, or releases what it made.
func (p *Poller) Open(name string, maxEvents int) error {
	p.wakeMu.Lock()
	p.epfd, p.evfd, p.opened = -1, -1, true
	p.wakeMu.Unlock()
	var err error
	if p.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		p.epfd = -1
		return os.NewSyscallError("epoll_create1", err)
	}
	// The epoll descriptor is readable when it has events: handed to the
	// runtime poller (non-blocking, as os.NewFile requires for that), the
	// loop waits on it like on a socket, deadline included.
	var evfd int
	if err = unix.SetNonblock(p.epfd, true); err != nil {
		err = os.NewSyscallError("fcntl", err)
	} else if evfd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		err = os.NewSyscallError("eventfd", err)
	} else {
		p.wakeMu.Lock()
		p.evfd = evfd
		p.wakeMu.Unlock()
		if err = p.Control(unix.EPOLL_CTL_ADD, evfd, unix.EPOLLIN); err != nil {
			err = os.NewSyscallError("epoll_ctl", err)
		} else {
			p.ep = os.NewFile(uintptr(p.epfd), name)
			p.epRC, err = p.ep.SyscallConn()
		}
	}
	if err != nil {
		p.Close()
		return err
	}
	p.events = make([]unix.EpollEvent, maxEvents)
	p.pollFn = p.pollEvents
	p.yieldFn = p.yieldOnce
	return nil
}

// pollEvents is the function the loop parks with: it collects ready events
// without blocking and returns false (park) when there are none.
func (p *Poller) pollEvents(fd uintptr) bool {
	p.polls++
	n, err := epollPoll(int(fd), p.events)
	if err == unix.EINTR {
		return true // take a turn and poll again: never park on pending events
	}
	if err != nil || n <= 0 {
		return false
	}
	p.nev = n
	return true
}

// yieldOnce is the function a loop parks with when it is to yield (Busy):
// its first call wakes the loop's own eventfd, which gives the runtime
// poller a new edge after RawConn.Read reset the descriptor's readiness,
// and parks; the calls after that collect events as pollEvents does.
func (p *Poller) yieldOnce(fd uintptr) bool {
	if p.polls == 0 {
		p.polls++
		p.Wake()
		return false
	}
	return p.pollEvents(fd)
}

// Wait parks until events are ready (Events) or the deadline passed (no
// events, Armed -1). Any other error means the epoll descriptor is gone.
func (p *Poller) Wait() error {
	p.nev, p.polls = 0, 0
	f := p.pollFn
	if p.yield {
		f, p.yield = p.yieldFn, false
		p.yields++
	}
	err := p.epRC.Read(f)
	deadline := errors.Is(err, os.ErrDeadlineExceeded)
	if p.polls != 1 || deadline {
		p.busySince = 0 // it parked
	}
	if deadline {
		p.armed = -1 // passed: the next SetDeadline must clear or move it
		return nil
	}
	return err
}

// Poll collects the events that are ready without waiting (Events), or
// parks as Wait does when the loop is to yield (Busy).
func (p *Poller) Poll() {
	if p.yield {
		_ = p.Wait()
		return
	}
	p.nev = 0
	if n, err := epollPoll(p.epfd, p.events); err == nil {
		p.nev = n
	}
}

// Busy tells the poller the time of the turn its loop is starting (unix
// ns). After YieldAfter of turns without a park, the next Wait or Poll
// parks even though events are ready, and returns once the runtime has
// run what else was ready.
func (p *Poller) Busy(now int64) {
	if p.busySince == 0 {
		p.busySince = now
		return
	}
	if now-p.busySince >= YieldAfter {
		p.yield = true
		p.busySince = now
	}
}

// Yields is how many times the loop parked because Busy asked it to.
func (p *Poller) Yields() int { return p.yields }

// Events are the events the last Wait or Poll collected.
func (p *Poller) Events() []unix.EpollEvent { return p.events[:p.nev] }

// SetDeadline sets when Wait returns without events (unix ns; 0: never).
func (p *Poller) SetDeadline(t int64) {
	if t == 0 {
		_ = p.ep.SetReadDeadline(time.Time{})
	} else {
		_ = p.ep.SetReadDeadline(time.Unix(0, t))
	}
	p.armed = t
}

// Armed is the deadline last set (unix ns; 0: none; -1: it passed).
func (p *Poller) Armed() int64 { return p.armed }

// Rearm forgets the deadline set, so that the loop's next comparison with
// Armed sets it again (a timer came earlier than the one armed).
func (p *Poller) Rearm() { p.armed = 0 }

// Control adds, modifies or removes fd in the set, as a raw system call.
func (p *Poller) Control(op, fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	return epollCtl(p.epfd, op, fd, &ev)
}

// WakeFD is the eventfd's descriptor: an event on it is a wake-up.
func (p *Poller) WakeFD() int { return p.evfd }

// Wake makes the loop take a turn; safe from any goroutine.
func (p *Poller) Wake() {
	p.wakeMu.Lock()
	defer p.wakeMu.Unlock()
	if !p.opened || p.evfd < 0 {
		return
	}
	var one = [8]byte{1}
	_, _ = RawWrite(p.evfd, one[:])
}

// Woken consumes a wake-up (the eventfd was reported readable).
func (p *Poller) Woken() {
	var b [8]byte
	_, _ = RawRead(p.evfd, b[:])
}

// Close releases the epoll set and the eventfd.
func (p *Poller) Close() {
	p.wakeMu.Lock()
	if !p.opened {
		p.wakeMu.Unlock()
		return
	}
	if p.evfd >= 0 {
		unix.Close(p.evfd)
		p.evfd = -1
	}
	p.wakeMu.Unlock()
	if p.ep != nil {
		p.ep.Close()
		p.ep = nil
	} else if p.epfd >= 0 {
		unix.Close(p.epfd)
	}
	p.epfd = -1
}
