package proxy

import (
	"net"

	"golang.org/x/sys/unix"
)

// queued is how many bytes wait to be read on c (SIOCINQ, FIONREAD): the goroutine
// engine splices exactly those, so that a splice never waits for more while
// holding a pipe.
func queued(c *net.TCPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	if cerr := rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); cerr != nil || err != nil {
		return 0
	}
	return n
}
