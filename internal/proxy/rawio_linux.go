package proxy

import (
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
)

// Raw system calls for the event loops' non-blocking socket I/O.
//
// The TCP and UDP event loops only make system calls that cannot block:
// accept, connect, recv, send, splice, shutdown, close on non-blocking
// sockets, epoll_wait with a zero timeout. Made through syscall.Syscall they
// would still pay the runtime's blocking-syscall protocol (entersyscall /
// exitsyscall), and entersyscall wakes the runtime's sysmon thread from its
// deep sleep whenever the process was idle; sysmon then polls every 20 µs
// for a millisecond. At a few thousand connections a second that is several
// wake-ups per connection, a visible share of the proxy's CPU
// (docs/BENCHMARKS.md). RawSyscall skips the protocol; the calls are as
// short as they were.

// rawRead and rawWrite are read(2) and write(2), for the loops' eventfd.
func rawRead(fd int, p []byte) (int, error)  { return rawIO(unix.SYS_READ, fd, p, 0) }
func rawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p, 0) }

// rawRecv and rawSend are recv(2) and send(2) (recvfrom and sendto without
// an address) on a connected socket. The TCP relay uses them rather than
// read and write: they go straight to the socket layer, skipping the VFS
// (fdget_pos, vfs_read/vfs_write, sock_read_iter/sock_write_iter), a cost
// visible on small persistent requests; and
// MSG_NOSIGNAL makes a write to a reset peer fail with EPIPE without
// raising SIGPIPE for the runtime to field.
func rawRecv(fd int, p []byte) (int, error) { return rawIO(unix.SYS_RECVFROM, fd, p, 0) }
func rawSend(fd int, p []byte) (int, error) {
	return rawIO(unix.SYS_SENDTO, fd, p, unix.MSG_NOSIGNAL)
}

// rawIO is read(2) or write(2) of p on fd, or recvfrom(2) or sendto(2)
// with flags and no address.
func rawIO(trap uintptr, fd int, p []byte, flags int) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags), 0, 0)
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

// The TCP event loops' socket calls (tcploop.go, tcpconn.go): all on
// non-blocking sockets, none can block.

// accept4 takes a connection off a listening socket, non-blocking and
// close-on-exec, and fills sa with the peer's address.
func accept4(lfd int, sa *unix.RawSockaddrInet6) (int, unix.Errno) {
	n := uint32(unsafe.Sizeof(*sa))
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(sa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), 0
}

func epollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func setsockoptInt(fd, level, opt, v int) unix.Errno {
	val := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&val)), 4, 0)
	return e
}

// setNoDelay turns Nagle's algorithm off, as the net package does on every
// TCP socket: a proxy passes on what it has at once.
func setNoDelay(fd int) { setsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) }

// resetClose closes a socket with a reset instead of a FIN (SO_LINGER 0).
func resetClose(fd int) {
	l := unix.Linger{Onoff: 1, Linger: 0}
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
	rawClose(fd)
}

// soError reads and clears a socket's pending error.
func soError(fd int) unix.Errno {
	var v int32
	n := uint32(4)
	if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR,
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		return e
	}
	return unix.Errno(v)
}

// shutdownWR sends a FIN (shutdown SHUT_WR).
func shutdownWR(fd int) { unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0) }

// tcpSocket opens a non-blocking TCP socket of ap's family with Nagle off.
func tcpSocket(ap netip.AddrPort) (int, unix.Errno) {
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(addrFamily(ap)), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	setNoDelay(int(fd))
	return int(fd), 0
}

// connectTo starts a non-blocking connect: 0 when connected at once,
// EINPROGRESS while it goes on.
func connectTo(fd int, ap netip.AddrPort) unix.Errno {
	var sa unix.RawSockaddrInet6
	n := putSockaddr(&sa, addrFamily(ap), ap)
	// Zones reach the loop as interface indexes (backend.Target and the
	// resolver convert names), so no interface lookup happens here.
	sa.Scope_id = resolve.ScopeID(ap.Addr())
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n))
	return e
}

// localAddr is a socket's own address.
func localAddr(fd int) net.Addr {
	ap, ok := localAddrPort(fd)
	if !ok {
		return &net.TCPAddr{}
	}
	return net.TCPAddrFromAddrPort(ap)
}

// localAddrPort is a socket's local address (getsockname), without
// allocating.
func localAddrPort(fd int) (netip.AddrPort, bool) {
	var sa unix.RawSockaddrInet6
	n := uint32(unsafe.Sizeof(sa))
	if _, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n))); e != 0 {
		return netip.AddrPort{}, false
	}
	return sockaddrAddrPort(&sa), true
}

// acceptPending reports whether a connection waits in a listening
// socket's backlog, without taking it (poll, no timeout).
func acceptPending(fd int) bool {
	fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), 1, uintptr(unsafe.Pointer(&unix.Timespec{})), 0, 0, 0)
	return e == 0 && n > 0 && fds[0].Revents&unix.POLLIN != 0
}
