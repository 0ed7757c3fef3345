//go:build !linux

package proxy

import (
	"errors"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// The epoll engine runs on Linux only; elsewhere it has no state and no
// connections.
type epollState struct{}

var errNoEpoll = errors.New("the epoll engine runs on Linux only")

func (s *Server) initEpoll()                                     {}
func (s *Server) cutEpoll() int                                  { return 0 }
func (s *Server) acceptedEpoll() int64                           { return 0 }
func (s *Server) activeEpoll() int64                             { return 0 }
func (s *Server) collectSpareSlots()                             {}
func (s *Server) stealSlot(any) bool                             { return s.slots.take(1) > 0 }
func (s *Server) loopList() []struct{}                           { return nil }
func (s *Server) stopEpoll()                                     {}
func (s *Server) eachConnEpoll(*ConnFilter, connSink)            {}
func (s *Server) closeDNSBackendEpoll(*backend.Backend) int      { return 0 }
func (s *Server) listenTCPEpoll(string, Table) (Listener, error) { return nil, errNoEpoll }
func (s *Server) listenUDPEpoll(string, Table, udpOptions) (Listener, error) {
	return nil, errNoEpoll
}
