//go:build unix

package redistest

import "syscall"

// Pause stops redis-server (every node of a cluster) with SIGSTOP: its port still accepts
// connections (the kernel's backlog) but nothing is answered, as a stuck
// Redis. Continue resumes it; the test's cleanup resumes it too.
func (s *Server) Pause() {
	s.t.Helper()
	s.signal(syscall.SIGSTOP)
	s.t.Cleanup(s.Continue)
}

// Continue resumes a paused redis-server (SIGCONT).
func (s *Server) Continue() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	for _, n := range s.Nodes {
		n.signal(sig)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}
