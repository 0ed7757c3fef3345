package proxy

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// epollLoop is what the TCP and UDP event loops share: a level-triggered
// epoll set that the loop's goroutine parks on through the Go runtime's
// poller (no thread blocks while idle), an eventfd that other goroutines
// wake it with, and the epoll descriptor's read deadline as the loop's
// timer. The loop's goroutine alone calls wait, pollEvents, control and
// setDeadline; wake is safe from any goroutine.
type epollLoop struct {
	epfd   int      // -1 until open
	ep     *os.File // epfd handed to the runtime poller
	epRC   syscall.RawConn
	pollFn func(uintptr) bool

	wakeMu sync.Mutex
	evfd   int // -1 until open and once closed

	events []unix.EpollEvent
	nev    int   // events collected by the last wait
	armed  int64 // read deadline in unix ns (0: none, -1: it passed)
}

// openEpoll creates the epoll set and the eventfd, or releases what it made.
func (p *epollLoop) openEpoll(name string, maxEvents int) error {
	p.epfd, p.evfd = -1, -1
	var err error
	if p.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		p.epfd = -1
		return os.NewSyscallError("epoll_create1", err)
	}
	// The epoll descriptor is readable when it has events: handed to the
	// runtime poller (non-blocking, as os.NewFile requires for that), the
	// loop waits on it like on a socket, deadline included.
	if err = unix.SetNonblock(p.epfd, true); err != nil {
		err = os.NewSyscallError("fcntl", err)
	} else if p.evfd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		p.evfd = -1
		err = os.NewSyscallError("eventfd", err)
	} else if err = p.control(unix.EPOLL_CTL_ADD, p.evfd, unix.EPOLLIN); err != nil {
		err = os.NewSyscallError("epoll_ctl", err)
	} else {
		p.ep = os.NewFile(uintptr(p.epfd), name)
		p.epRC, err = p.ep.SyscallConn()
	}
	if err != nil {
		p.closeEpoll()
		return err
	}
	p.events = make([]unix.EpollEvent, maxEvents)
	p.pollFn = p.pollEvents
	return nil
}

// pollEvents is the function the loop parks with: it collects ready events
// without blocking and returns false (park) when there are none.
func (p *epollLoop) pollEvents(fd uintptr) bool {
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

// wait parks until events are ready (p.events[:p.nev]) or the deadline
// passed (p.nev 0, p.armed -1). Any other error means the epoll descriptor
// is gone.
func (p *epollLoop) wait() error {
	p.nev = 0
	err := p.epRC.Read(p.pollFn)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		p.armed = -1 // passed: the next setDeadline must clear or move it
		return nil
	}
	return err
}

// setDeadline sets when wait returns without events (unix ns; 0: never).
func (p *epollLoop) setDeadline(t int64) {
	if t == 0 {
		_ = p.ep.SetReadDeadline(time.Time{})
	} else {
		_ = p.ep.SetReadDeadline(time.Unix(0, t))
	}
	p.armed = t
}

// control adds, modifies or removes fd in the set, as a raw system call.
func (p *epollLoop) control(op, fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	return epollCtl(p.epfd, op, fd, &ev)
}

// wake makes the loop take a turn; safe from any goroutine.
func (p *epollLoop) wake() {
	p.wakeMu.Lock()
	defer p.wakeMu.Unlock()
	if p.evfd < 0 {
		return
	}
	var one = [8]byte{1}
	_, _ = rawWrite(p.evfd, one[:])
}

// woken consumes a wake-up (the eventfd was reported readable).
func (p *epollLoop) woken() {
	var b [8]byte
	_, _ = rawRead(p.evfd, b[:])
}

// closeEpoll releases the epoll set and the eventfd.
func (p *epollLoop) closeEpoll() {
	p.wakeMu.Lock()
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
