package proxy

import (
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// Measurements behind the UDP design (docs/notes/udp.md records the figures):
//
//	go test -run XXX -bench 'Batch|SessionCost' -benchtime 20x ./internal/proxy

// batchPair is a receiver socket and a connected sender.
func batchPair(b *testing.B) (*net.UDPConn, *net.UDPConn) {
	r, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	r.SetReadBuffer(4 << 20)
	s, err := net.DialUDP("udp", nil, r.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close(); s.Close() })
	return r, s
}

// BenchmarkXNetReadBatch reads batches of 32 datagrams with
// golang.org/x/net/ipv4's ReadBatch (recvmmsg), reporting its allocations
// per datagram: it returns every source address as a new *net.UDPAddr.
func BenchmarkXNetReadBatch(b *testing.B) {
	r, s := batchPair(b)
	pc := ipv4.NewPacketConn(r)
	msgs := make([]ipv4.Message, batchSize)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	p := make([]byte, 64)
	b.ReportAllocs()
	start := mallocs()
	for b.Loop() {
		for range batchSize {
			s.Write(p)
		}
		for got := 0; got < batchSize; {
			n, err := pc.ReadBatch(msgs[:batchSize-got], 0)
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
	b.StopTimer()
	b.ReportMetric(mallocsSince(start)/float64(b.N*batchSize), "allocs/datagram")
}

// BenchmarkRecvmmsgBatch is the same with the listener's own recvmmsg.
func BenchmarkRecvmmsgBatch(b *testing.B) {
	r, s := batchPair(b)
	var fd int
	rc, _ := r.SyscallConn()
	rc.Control(func(f uintptr) { fd = int(f) })
	var bt batch
	bt.init(2048, batchSize)
	p := make([]byte, 64)
	b.ReportAllocs()
	start := mallocs()
	for b.Loop() {
		for range batchSize {
			s.Write(p)
		}
		for got := 0; got < batchSize; {
			hs := bt.Hdrs[:batchSize-got]
			for i := range hs {
				hs[i].Hdr.Name = (*byte)(unsafe.Pointer(&bt.Names[i]))
				hs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
				bt.Iov[i].SetLen(2048)
			}
			n, e := eventloop.Recvmmsg(fd, hs)
			if e == unix.EAGAIN {
				continue
			}
			if e != 0 {
				b.Fatal(e)
			}
			for i := 0; i < n; i++ {
				_ = eventloop.SockaddrAddrPort(&bt.Names[i])
			}
			got += n
		}
	}
	b.StopTimer()
	b.ReportMetric(mallocsSince(start)/float64(b.N*batchSize), "allocs/datagram")
}

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

func mallocsSince(start uint64) float64 { return float64(mallocs() - start) }

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// BenchmarkSessionCost measures what an idle session costs in Go memory and
// goroutines, for the design used (one event loop per listener) and for
// the goroutine-per-session alternative (a goroutine blocked reading the
// backend socket, with its own 64 KiB buffer or a pooled one it takes only
// once data is there). Each op opens 2,000 sessions, measures, and ends them.
func BenchmarkSessionCost(b *testing.B) {
	const n = 2000
	b.Run("loop", func(b *testing.B) {
		s, _ := newTestServer(b)
		be := startRawEcho(b)
		rt := newUDPRoute(b, "cost", be)
		rt.MaxSessions = 0
		for b.Loop() {
			l, err := s.listenUDPEpoll("127.0.0.1:0", Table{Routes: []*Route{rt}}, udpOptions{})
			if err != nil {
				b.Fatal(err)
			}
			conns := make([]*net.UDPConn, n)
			for i := range conns {
				conns[i] = udpClient(b, l.Addr())
			}
			before := memNow()
			var wg sync.WaitGroup
			for _, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					roundTrip(c, []byte("x"), 0)
				}()
			}
			wg.Wait()
			after := memNow()
			reportCost(b, before, after, n)
			for _, c := range conns {
				c.Close()
			}
			l.forceClose()
			<-l.done
		}
	})
	for _, pooled := range []bool{false, true} {
		name := "goroutine-64KiB-buffer"
		if pooled {
			name = "goroutine-pooled-buffer"
		}
		b.Run(name, func(b *testing.B) {
			be := startRawEcho(b)
			var pool = sync.Pool{New: func() any { p := make([]byte, eventloop.MaxDatagram); return &p }}
			for b.Loop() {
				before := memNow()
				conns := make([]*net.UDPConn, n)
				var ready, done sync.WaitGroup
				for i := range conns {
					c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(mustAddrPort(be)))
					if err != nil {
						b.Fatal(err)
					}
					conns[i] = c
					ready.Add(1)
					done.Add(1)
					go func() { // the session's reader, blocked until a reply
						defer done.Done()
						ready.Done()
						if pooled {
							readPooled(c, &pool)
						} else {
							readOwnBuffer(c)
						}
					}()
				}
				ready.Wait()
				runtime.Gosched()
				after := memNow()
				reportCost(b, before, after, n)
				for _, c := range conns {
					c.Close()
				}
				done.Wait()
			}
		})
	}
}

// readOwnBuffer is a session reader with a buffer of its own.
//
//go:noinline
func readOwnBuffer(c *net.UDPConn) {
	buf := make([]byte, eventloop.MaxDatagram)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// readPooled is a session reader that takes a buffer from pool only once
// the socket is readable.
//
//go:noinline
//go:noinline
func readPooled(c *net.UDPConn, pool *sync.Pool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	for {
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			bp := pool.Get().(*[]byte)
			_, rerr = unix.Read(int(fd), *bp)
			pool.Put(bp)
			return rerr != unix.EAGAIN
		})
		if err != nil || (rerr != nil && rerr != unix.EAGAIN) {
			return
		}
	}
}

type memSample struct {
	heap, stack uint64
	goroutines  int
}

func memNow() memSample {
	runtime.GC()
	runtime.GC() // a second cycle empties sync.Pool's victim cache
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

func reportCost(b *testing.B, before, after memSample, n int) {
	b.ReportMetric(float64(int64(after.heap+after.stack)-int64(before.heap+before.stack))/float64(n), "B/session")
	b.ReportMetric(float64(after.goroutines-before.goroutines)/float64(n), "goroutines/session")
	b.ReportMetric(float64(int64(after.stack)-int64(before.stack))/float64(n), "stackB/session")
}
