package proxy

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The socket layer of the UDP proxy: recvmmsg/sendmmsg over reused headers,
// sockaddr and IP_PKTINFO/IPV6_PKTINFO encoding, all without allocating.
//
// golang.org/x/net/ipv4's ReadBatch/WriteBatch wrap the same system calls,
// but return every source address as a freshly allocated *net.UDPAddr (two
// allocations per datagram, measured in BenchmarkXNetReadBatch), so the
// listener calls them itself.

// oobSize is the control buffer of one message: room for IP_PKTINFO (32
// bytes) or IPV6_PKTINFO (40) and anything unexpected next to it.
const oobSize = 64

// The loop's datagram calls never block (MSG_DONTWAIT on non-blocking
// sockets), so they are raw system calls: see rawio_linux.go for what the
// runtime's blocking-syscall protocol would cost on every one.

// recvmmsg reads up to len(hs) datagrams without blocking. It returns 0 and
// EAGAIN when none is waiting.
func recvmmsg(fd int, hs []unix.Mmsghdr) (int, unix.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hs[0])),
		uintptr(len(hs)), unix.MSG_DONTWAIT, 0, 0)
	runtime.KeepAlive(hs)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// sendmmsg sends up to len(hs) datagrams without blocking and returns how
// many went; an error is about hs[n].
func sendmmsg(fd int, hs []unix.Mmsghdr) (int, unix.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hs[0])),
		uintptr(len(hs)), unix.MSG_DONTWAIT, 0, 0)
	runtime.KeepAlive(hs)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// send writes one datagram on a connected socket. Unlike write(2), send
// with a zero length does send an empty datagram.
func send(fd int, p []byte) unix.Errno {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(ptr), uintptr(len(p)), unix.MSG_DONTWAIT, 0, 0)
	runtime.KeepAlive(p)
	return e
}

// sockaddrAddrPort decodes a sockaddr_in or sockaddr_in6. An IPv6 zone is
// not kept (the raw sockaddr, which has it, is what replies are sent to).
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), ntohs(s4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// addrFamily is the socket family that reaches ap: AF_INET for an IPv4 or
// IPv4-mapped address, AF_INET6 otherwise.
func addrFamily(ap netip.AddrPort) int {
	if ap.Addr().Unmap().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// putSockaddr encodes ap into sa for a socket of the given family (an IPv4
// address on an AF_INET6 socket becomes IPv4-mapped) and returns its length.
func putSockaddr(sa *unix.RawSockaddrInet6, family int, ap netip.AddrPort) uint32 {
	*sa = unix.RawSockaddrInet6{}
	if family == unix.AF_INET {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		s4.Family = unix.AF_INET
		s4.Port = htons(ap.Port())
		s4.Addr = ap.Addr().Unmap().As4()
		return unix.SizeofSockaddrInet4
	}
	sa.Family = unix.AF_INET6
	sa.Port = htons(ap.Port())
	sa.Addr = ap.Addr().As16()
	return unix.SizeofSockaddrInet6
}

func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return binary.BigEndian.Uint16(b[:])
}

func htons(p uint16) uint16 {
	var v uint16
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&v))[:], p)
	return v
}

// parsePktinfo finds the local address a datagram was sent to in its
// control messages: IP_PKTINFO's ipi_spec_dst (the address to answer from,
// also for broadcasts) or IPV6_PKTINFO's address (and its interface, which
// a link-local address needs). ok is false when there is none, or when
// the address cannot be a source (multicast).
func parsePktinfo(oob []byte) (local netip.Addr, ifindex uint32, ok bool) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return netip.Addr{}, 0, false
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			a := netip.AddrFrom4(pi.Spec_dst)
			return a, 0, !a.IsUnspecified() && !a.IsMulticast()
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			a := netip.AddrFrom16(pi.Addr)
			return a, pi.Ifindex, !a.IsUnspecified() && !a.IsMulticast()
		}
		sp := unix.CmsgSpace(l - unix.SizeofCmsghdr)
		if sp > len(oob) {
			break
		}
		oob = oob[sp:]
	}
	return netip.Addr{}, 0, false
}

// putPktinfo encodes the control message that makes a reply leave from
// local, for a socket of the given family, into oob and returns its
// length. The interface is left to routing except for link-local
// addresses, which are only meaningful on the interface they came in on.
func putPktinfo(oob []byte, family int, local netip.Addr, ifindex uint32) int {
	clear(oob)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	data := oob[unix.CmsgLen(0):]
	if family == unix.AF_INET {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
		pi.Spec_dst = local.Unmap().As4()
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
	pi.Addr = local.As16()
	if local.IsLinkLocalUnicast() {
		pi.Ifindex = ifindex
	}
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}

// sendWithHeader sends hdr and p as one datagram (a PROXY v2 header before
// the payload) without copying them together: sendmsg(2) with two iovecs,
// as a raw system call like the loop's other socket calls.
func sendWithHeader(fd int, hdr, p []byte) unix.Errno {
	var iov [2]unix.Iovec
	iov[0].Base = unsafe.SliceData(hdr)
	iov[0].SetLen(len(hdr))
	n := 1
	if len(p) > 0 {
		iov[1].Base = &p[0]
		iov[1].SetLen(len(p))
		n = 2
	}
	var msg unix.Msghdr
	msg.Iov = &iov[0]
	msg.SetIovlen(n)
	_, _, e := unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT)
	runtime.KeepAlive(hdr)
	runtime.KeepAlive(p)
	return e
}
