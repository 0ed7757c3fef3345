//go:build linux

package proxy

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// An upgrade (internal/upgrade) hands this process's listening sockets to
// the process that replaces it: ListenerFiles duplicates them for sending,
// and once the new process serves, ReleaseListeners makes this one stop
// reading them without touching the sockets themselves, which live on in
// the new process.

// ListenerFiles returns duplicates of l's listening sockets: one for a TCP
// listener, one per shard for an epoll-engine UDP listener (their
// SO_REUSEPORT group). The caller closes them.
func ListenerFiles(l Listener) ([]*os.File, error) {
	var scs []syscall.Conn
	switch l := l.(type) {
	case *TCPListener:
		fd, err := unix.FcntlInt(uintptr(l.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, os.NewSyscallError("fcntl", err)
		}
		return []*os.File{os.NewFile(uintptr(fd), "tcp "+l.addr.String())}, nil
	case *UDPListener:
		for _, sh := range l.shards {
			scs = append(scs, sh.conn)
		}
	case *goTCPListener:
		scs = append(scs, l.ln)
	case *goUDPListener:
		scs = append(scs, l.conn)
	default:
		return nil, fmt.Errorf("listener %T cannot be handed over", l)
	}
	var fs []*os.File
	for _, sc := range scs {
		fd, err := dupSocket(sc)
		if err != nil {
			closeFiles(fs)
			return nil, err
		}
		fs = append(fs, os.NewFile(uintptr(fd), l.Addr().String()))
	}
	return fs, nil
}

// ReleaseListeners stops reading every listening socket, which another
// process serves now, and closes the listeners (StopAccepting): no new
// connection or session is taken here. UDP sessions open here keep
// replying through the socket until they end.
func (s *Server) ReleaseListeners() {
	s.mu.Lock()
	var udp []*UDPListener
	var goUDP []*goUDPListener
	for l := range s.listeners {
		switch l := l.(type) {
		case *UDPListener:
			udp = append(udp, l)
		case *goUDPListener:
			goUDP = append(goUDP, l)
		}
	}
	s.mu.Unlock()
	for _, l := range udp {
		for _, sh := range l.shards {
			sh.Call(func() {
				sh.released = true
				_ = sh.Control(unix.EPOLL_CTL_DEL, sh.fd, 0)
			})
		}
	}
	for _, l := range goUDP {
		l.released.Store(true)
		_ = l.conn.SetReadDeadline(time.Unix(1, 0)) // the reader leaves its read
	}
	s.StopAccepting()
}

// SocketFile duplicates a socket's descriptor without touching the
// original (unlike (*net.TCPListener).File, which may make it blocking).
func SocketFile(sc syscall.Conn) (*os.File, error) {
	fd, err := dupSocket(sc)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "socket"), nil
}
