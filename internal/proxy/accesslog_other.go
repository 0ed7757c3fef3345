//go:build !linux

package proxy

import "time"

// openEpoll: there is no epoll engine off Linux.
func (s *Server) openEpoll(time.Time, func(openConn)) {}

func (s *Server) openUDPEpoll(time.Time, func(openConn)) {}
