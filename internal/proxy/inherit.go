package proxy

import (
	"context"
	"net"
	"os"
	"sync"
)

// Sockets are listening sockets handed over by the process this one
// replaces (internal/upgrade), by listener key: "tcp ADDR" or "udp ADDR"
// with ADDR as the config writes it (the engine's listener keys), "http
// ADDR" for the metrics and admin servers. A listener whose key is here
// takes its sockets instead of binding, so an upgrade binds nothing that
// was handed over and no client is refused while both processes run.
type Sockets struct {
	mu sync.Mutex
	m  map[string][]*os.File
}

// NewSockets holds the files of m (each a socket descriptor the caller
// gives up).
func NewSockets(m map[string][]*os.File) *Sockets { return &Sockets{m: m} }

// Take returns the sockets handed over for key and forgets them (nil if
// none; the caller closes the files once it made its own descriptors of
// them).
func (s *Sockets) Take(key string) []*os.File {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.m[key]
	delete(s.m, key)
	return f
}

// Close closes the sockets nobody took (listeners the new config does not
// have) and returns their keys; the process that handed them over closes
// its own copies when it exits.
func (s *Sockets) Close() []string {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for k, fs := range s.m {
		keys = append(keys, k)
		for _, f := range fs {
			f.Close()
		}
	}
	s.m = nil
	return keys
}

// Len is the number of listeners not yet taken.
func (s *Sockets) Len() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// SetInherited gives the server the sockets handed over by the process it
// replaces; call it before the first listener.
func (s *Server) SetInherited(in *Sockets) {
	s.mu.Lock()
	s.inherited = in
	s.mu.Unlock()
}

func (s *Server) inheritedSockets() *Sockets {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inherited
}

// ListenTCPKey is a TCP listener for key ("http ADDR", "tcp ADDR"): the
// socket handed over for key if there is one, else a new one bound to addr.
func ListenTCPKey(in *Sockets, key, addr string) (net.Listener, error) {
	if fs := in.Take(key); len(fs) > 0 {
		ln, err := net.FileListener(fs[0])
		closeFiles(fs)
		return ln, err
	}
	return (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
}

// listenTCP binds addr for a TCP listener of either engine, or takes the
// socket handed over for it.
func (s *Server) listenTCP(addr string) (net.Listener, error) {
	return ListenTCPKey(s.inheritedSockets(), "tcp "+addr, addr)
}

// inheritedUDP returns the UDP sockets handed over for addr (nil: none).
func (s *Server) inheritedUDP(addr string) ([]*net.UDPConn, error) {
	fs := s.inheritedSockets().Take("udp " + addr)
	if len(fs) == 0 {
		return nil, nil
	}
	defer closeFiles(fs)
	conns := make([]*net.UDPConn, 0, len(fs))
	for _, f := range fs {
		pc, err := net.FilePacketConn(f)
		if err == nil {
			if c, ok := pc.(*net.UDPConn); ok {
				conns = append(conns, c)
				continue
			}
			pc.Close()
			err = os.ErrInvalid
		}
		for _, c := range conns {
			c.Close()
		}
		return nil, err
	}
	return conns, nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
