//go:build linux

package eventloop

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw system calls for the event loops' non-blocking socket I/O.
//
// The event loops only make system calls that cannot block: accept,
// connect, recv, send, splice, shutdown, close on non-blocking sockets,
// epoll_wait with a zero timeout. Made through syscall.Syscall they would
// still pay the runtime's blocking-syscall protocol (entersyscall /
// exitsyscall), and entersyscall wakes the runtime's sysmon thread from its
// deep sleep whenever the process was idle; sysmon then polls every 20 µs
// for a millisecond, several wake-ups per connection under a connection
// churn (docs/BENCHMARKS.md has the cost). RawSyscall skips the protocol;
// the calls are as short as they were.

// RawRead and RawWrite are read(2) and write(2), for a loop's eventfd.
func RawRead(fd int, p []byte) (int, error)  { return rawIO(unix.SYS_READ, fd, p, 0) }
func RawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p, 0) }

// Recv and Send are recv(2) and send(2) (recvfrom and sendto without an
// address) on a connected stream socket. The TCP relay uses them rather
// than read and write: they go straight to the socket layer, skipping the
// VFS (fdget_pos, vfs_read/vfs_write, sock_read_iter/sock_write_iter), a
// cost visible on small persistent requests; and MSG_NOSIGNAL makes a write
// to a reset peer fail with EPIPE without raising SIGPIPE for the runtime
// to field.
func Recv(fd int, p []byte) (int, error) { return rawIO(unix.SYS_RECVFROM, fd, p, 0) }
func Send(fd int, p []byte) (int, error) {
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

// Splice is splice(2) of up to n bytes from in to out (one of them a pipe).
func Splice(in, out int, n int, flags int) (int64, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return -1, e
	}
	return int64(r), nil
}

// epollPoll collects ready events without waiting (timeout 0), as a raw
// system call: the loops park in the netpoller, never in epoll_wait.
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

func epollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// Close closes a descriptor that only its caller uses and that has no
// pending output to flush (a UDP session's socket, an unused one).
func Close(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// Accept4 takes a connection off a listening socket, non-blocking and
// close-on-exec, and fills sa with the peer's address.
func Accept4(lfd int, sa *unix.RawSockaddrInet6) (int, unix.Errno) {
	n := uint32(unsafe.Sizeof(*sa))
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(sa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), 0
}

// SetsockoptInt is setsockopt(2) of an int option.
func SetsockoptInt(fd, level, opt, v int) unix.Errno {
	val := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&val)), 4, 0)
	return e
}

// SetNoDelay turns Nagle's algorithm off, as the net package does on every
// TCP socket: a proxy passes on what it has at once.
func SetNoDelay(fd int) { SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) }

// ResetClose closes a socket with a reset instead of a FIN (SO_LINGER 0).
func ResetClose(fd int) {
	l := unix.Linger{Onoff: 1, Linger: 0}
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
	Close(fd)
}

// SoError reads and clears a socket's pending error.
func SoError(fd int) unix.Errno {
	var v int32
	n := uint32(4)
	if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR,
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		return e
	}
	return unix.Errno(v)
}

// ShutdownWR sends a FIN (shutdown SHUT_WR).
func ShutdownWR(fd int) { unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0) }

// TCPSocket opens a non-blocking TCP socket of ap's family with Nagle off.
func TCPSocket(ap netip.AddrPort) (int, unix.Errno) {
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(AddrFamily(ap)), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	SetNoDelay(int(fd))
	return int(fd), 0
}

// Connect starts a non-blocking connect to ap (an IPv6 address with the
// interface index scope; 0: none): 0 when connected at once, EINPROGRESS
// while it goes on. A UDP connect only sets the peer and returns at once.
func Connect(fd int, ap netip.AddrPort, scope uint32) unix.Errno {
	var sa unix.RawSockaddrInet6
	n := PutSockaddr(&sa, AddrFamily(ap), ap)
	sa.Scope_id = scope
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(n))
	return e
}

// LocalAddrPort is a socket's local address (getsockname), without
// allocating.
func LocalAddrPort(fd int) (netip.AddrPort, bool) {
	var sa unix.RawSockaddrInet6
	n := uint32(unsafe.Sizeof(sa))
	if _, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n))); e != 0 {
		return netip.AddrPort{}, false
	}
	return SockaddrAddrPort(&sa), true
}

// AcceptPending reports whether a connection waits in a listening
// socket's backlog, without taking it (poll, no timeout).
func AcceptPending(fd int) bool {
	fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), 1, uintptr(unsafe.Pointer(&unix.Timespec{})), 0, 0, 0)
	return e == 0 && n > 0 && fds[0].Revents&unix.POLLIN != 0
}
