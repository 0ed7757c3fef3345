package proxy

import (
	"unsafe"

	"net"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// errPeerReset is what a copy that read a plain EOF reports when the peer
// had in fact reset the connection (see resetByPeer).
var errPeerReset = os.NewSyscallError("read", syscall.ECONNRESET)

// tcpStateClose is TCP_CLOSE in tcp_info.tcpi_state.
const tcpStateClose = 7

// resetByPeer tells a reset from an orderly end after a read from c saw EOF.
//
// Both copies of a connection use each socket, and a socket's pending error
// is reported once: when the copy writing to a socket is the first to
// notice the peer's reset (EPIPE, ECONNRESET), the copy reading from it
// then sees a plain EOF. The TCP state still tells the two apart: after the
// peer's FIN the socket is in CLOSE_WAIT until we send our own FIN, after a
// reset it is CLOSE. finSent is set just before we send our FIN on c (once
// both FINs crossed, the state is CLOSE too), and is read after the state
// so that a FIN we sent meanwhile is not taken for a reset.
func resetByPeer(c *net.TCPConn, finSent *atomic.Bool) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var state uint8
	if rc.Control(func(fd uintptr) {
		// Raw, like the relay's other calls on the socket (rawio_linux.go).
		var info unix.TCPInfo
		n := uint32(unsafe.Sizeof(info))
		if _, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&n)), 0); e == 0 {
			state = info.State
		}
	}) != nil {
		return false
	}
	return state == tcpStateClose && !finSent.Load()
}
