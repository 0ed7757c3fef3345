//go:build !linux

package proxy

import (
	"errors"
	"os"
	"syscall"
)

// ListenerFiles is Linux only: an upgrade is refused elsewhere
// (internal/upgrade).
func ListenerFiles(Listener) ([]*os.File, error) {
	return nil, errors.New("handing listeners over is supported on Linux only")
}

// ReleaseListeners closes the listeners (StopAccepting).
func (s *Server) ReleaseListeners() { s.StopAccepting() }

// SocketFile is Linux only, as upgrades are.
func SocketFile(syscall.Conn) (*os.File, error) {
	return nil, errors.New("handing sockets over is supported on Linux only")
}
