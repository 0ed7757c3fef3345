//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// UDP sessions of the epoll engine cross to the process an upgrade started
// as TCP connections do (handover_conns_linux.go): the old process takes an
// open session out of its shard (DetachSessions) — its connected backend
// socket, the client's address and the reply's source (pktinfo), counts —
// and the new one puts it in the shard that owns the same listening
// socket of the SO_REUSEPORT group (AdoptSession), so the client's next
// datagram, which the kernel sends to that socket, finds it there, and the
// backend's replies go on from the same socket.

// HandedSession is an open UDP session as it crosses between processes.
type HandedSession struct {
	ID          uint64        `json:"id"`       // its session id, kept by the new process (conns.go)
	Listener    string        `json:"listener"` // "udp " + the listening socket's bound address
	Shard       int           `json:"shard"`    // which socket of the listener's SO_REUSEPORT group
	Rule        string        `json:"rule"`
	Backend     string        `json:"backend"`
	BackendAddr string        `json:"backend_addr"`
	Client      string        `json:"client"`
	OOB         []byte        `json:"oob,omitempty"`       // the reply's source address (pktinfo)
	ProxyHdr    []byte        `json:"proxy_hdr,omitempty"` // PROXY v2 header sent before each datagram
	Age         time.Duration `json:"age"`
	In          int64         `json:"in,omitempty"` // datagrams client → backend
	Out         int64         `json:"out,omitempty"`
	InB         int64         `json:"in_bytes,omitempty"`
	OutB        int64         `json:"out_bytes,omitempty"`
	Responses   int           `json:"responses,omitempty"`
}

// DetachedSession is a session taken out of this process: the caller
// sends it with its socket, then closes it.
type DetachedSession struct {
	HandedSession
	FD int
}

// udpTargets adds the UDP listeners to what the server can adopt.
func (s *Server) udpTargets(t Targets) {
	for l := range s.listeners {
		ul, ok := l.(*UDPListener)
		if !ok {
			continue
		}
		rules := map[string][]string{}
		for _, rt := range ul.Routes() {
			for _, b := range rt.Backends {
				rules[rt.Name] = append(rules[rt.Name], b.ID+"\x00"+b.Address)
			}
		}
		t["udp "+ul.Addr().String()] = rules
	}
}

// DetachSessions takes out of the shards every open session whose
// listener, rule and backend t has, and returns them; this process no
// longer forwards, answers or counts them. Call it after ReleaseListeners.
func (s *Server) DetachSessions(t Targets) []DetachedSession {
	s.mu.Lock()
	var ls []*UDPListener
	for l := range s.udp {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	var out []DetachedSession
	for _, l := range ls {
		key := "udp " + l.Addr().String()
		for _, sh := range l.shards {
			sh.Call(func() {
				for _, ss := range sh.sessions {
					if ss.fd < 0 || !ss.counted || !t.has(key, ss.route.Name, ss.b.ID, ss.b.Address) {
						continue
					}
					out = append(out, sh.detach(key, ss))
				}
			})
		}
	}
	return out
}

// detach takes ss out of the shard (on the shard's goroutine).
func (l *udpShard) detach(key string, ss *udpSession) DetachedSession {
	d := DetachedSession{HandedSession: HandedSession{
		ID: ss.id, Listener: key, Shard: l.idx, Rule: ss.route.Name, Backend: ss.b.ID, BackendAddr: ss.b.Address,
		Client: ss.client.String(), OOB: append([]byte(nil), ss.oob[:ss.ooblen]...), ProxyHdr: ss.proxyHdr,
		Age: time.Duration(l.now - ss.start), In: ss.inN, Out: ss.outN, InB: ss.inB, OutB: ss.outB, Responses: ss.responses,
	}, FD: ss.fd}
	_ = l.Control(unix.EPOLL_CTL_DEL, ss.fd, 0)
	l.byFd[ss.fd] = nil
	ss.fd = -1
	ss.b.Release(l.idx)
	if ss.release != nil {
		ss.release()
		ss.release = nil
	}
	ss.counted = false
	l.open--
	l.openN.Store(int64(l.open))
	if l.ln.live.Add(-1) == 0 && l.ln.closed.Load() {
		l.ln.wake()
	}
	l.srv.UDP.Sessions.Add(-1)
	l.remove(ss)
	return d
}

// AdoptSession takes a session handed over by the old process into the
// shard of the same socket; fd is its backend socket (owned by the server
// from now on, closed on an error).
func (s *Server) AdoptSession(h HandedSession, fd int) error {
	fail := func(err error) error { eventloop.Close(fd); return err }
	client, err := netip.ParseAddrPort(h.Client)
	if err != nil {
		return fail(err)
	}
	s.SkipConnIDs(h.ID)
	s.mu.Lock()
	var l *UDPListener
	for x := range s.udp {
		if "udp "+x.Addr().String() == h.Listener {
			l = x
		}
	}
	s.mu.Unlock()
	if l == nil {
		return fail(fmt.Errorf("no UDP listener on %s", h.Listener))
	}
	var ss *udpSession
	for _, rt := range l.Routes() {
		if rt.Name != h.Rule {
			continue
		}
		for _, b := range rt.Backends {
			if b.ID == h.Backend && b.Address == h.BackendAddr {
				ss = &udpSession{id: h.ID, client: client, fd: fd, route: rt, obs: rt.Observer, b: b, proxyHdr: h.ProxyHdr}
			}
		}
	}
	if ss == nil {
		return fail(fmt.Errorf("no rule %q with backend %q at %s on %s", h.Rule, h.Backend, h.BackendAddr, h.Listener))
	}
	ss.ooblen = copy(ss.oob[:], h.OOB)
	ss.inN, ss.outN, ss.inB, ss.outB, ss.responses = h.In, h.Out, h.InB, h.OutB, h.Responses
	sh := l.shards[min(max(h.Shard, 0), len(l.shards)-1)]
	done := make(chan error, 1)
	if !sh.Post(func() { done <- sh.adopt(ss, h.Age) }) {
		return fail(errors.New("the UDP listener has stopped"))
	}
	return <-done
}

// adopt starts serving an adopted session (on the shard's goroutine).
func (l *udpShard) adopt(ss *udpSession, age time.Duration) error {
	// A session this process opened for the client meanwhile (a datagram
	// came between the old process's last read and now) keeps its socket
	// for the replies it expects and ends by session_timeout; the
	// client's next datagrams take the adopted one.
	if err := l.Control(unix.EPOLL_CTL_ADD, ss.fd, unix.EPOLLIN); err != nil {
		eventloop.Close(ss.fd)
		return err
	}
	ss.salen = eventloop.PutSockaddr(&ss.sa, l.family, ss.client)
	ss.start = l.now - int64(age)
	l.ln.live.Add(1)
	ss.b.Acquire(l.idx)
	l.sessions[ss.client] = ss
	for ss.fd >= len(l.byFd) {
		l.byFd = append(l.byFd, make([]*udpSession, len(l.byFd)+64)...)
	}
	l.byFd[ss.fd] = ss
	l.open++
	l.openN.Store(int64(l.open))
	ss.counted = true
	l.srv.UDP.Sessions.Add(1)
	l.touch(ss)
	return nil
}
