package proxy

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw system calls for the relay's non-blocking socket I/O.
//
// The relay only calls read, write, splice and shutdown on non-blocking
// sockets, from inside a syscall.RawConn callback after the netpoller said
// the socket is ready: they never block. Made through syscall.Syscall they
// would still pay the runtime's blocking-syscall protocol (entersyscall /
// exitsyscall), and entersyscall wakes the runtime's sysmon thread from its
// deep sleep whenever the process was idle; sysmon then polls every 20 µs
// for a millisecond. At a few thousand connections a second that is several
// wake-ups per connection, and on this kind of VM a context switch costs
// micro-seconds: perf put 17% of the proxy's CPU in sysmon. RawSyscall skips
// the protocol; the calls are as short as they were.

func rawRead(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func rawSplice(in, out int, n int, flags int) (int64, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return -1, e
	}
	return int64(r), nil
}

// closeWrite half-closes a socket (shutdown SHUT_WR). Nothing is done
// about a failure: the copy in the other direction meets the socket's
// error, if any, and reports it.
func closeWrite(rc syscall.RawConn) { _ = rc.Control(shutdownWrite) }

func shutdownWrite(fd uintptr) { unix.RawSyscall(unix.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0) }

// tcpState is the socket's TCP state (tcp_info.tcpi_state), 0 if unknown.
func tcpState(rc syscall.RawConn) uint8 {
	var state uint8
	_ = rc.Control(func(fd uintptr) {
		var info unix.TCPInfo
		n := uint32(unsafe.Sizeof(info))
		if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&n)), 0); e == 0 {
			state = info.State
		}
	})
	return state
}

// epollPoll collects ready events without waiting (timeout 0), as a raw
// system call: the UDP loops park in the netpoller, never in epoll_wait.
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawClose closes a descriptor that only its caller uses and that has no
// pending output to flush (a UDP session's socket).
func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}
