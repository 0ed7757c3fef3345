package main

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// echoServe is the backend for the churn, UDP and idle scenarios: it echoes
// every TCP byte and every UDP datagram. It runs as its own process
// (bench -mode echo) so its CPU is never counted as the proxy's.
func echoServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	for i := 0; i < 2; i++ {
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 4096)
			io.CopyBuffer(c, c, buf)
		}()
	}
}

type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l[int(float64(len(l)-1)*p)]
}

type loadResult struct {
	ops      int64
	errors   int64
	elapsed  time.Duration
	lat      latencies
	firstErr error
}

// churn opens a connection, sends 64 bytes, reads them back and closes, at
// a fixed offered rate (rate > 0) or closed-loop with workers (rate == 0).
func churn(addr string, rate int, workers int, d time.Duration) loadResult {
	msg := make([]byte, 64)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	one := func() (time.Duration, error) {
		t0 := time.Now()
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		var buf [64]byte
		if _, err := io.ReadFull(c, buf[:]); err != nil {
			return 0, err
		}
		return time.Since(t0), nil
	}
	return drive(rate, workers, d, one)
}

// drive runs op at a fixed rate spread over workers goroutines (or as fast
// as workers allow when rate is 0) for d, bounded.
func drive(rate, workers int, d time.Duration, op func() (time.Duration, error)) loadResult {
	var mu sync.Mutex
	var res loadResult
	var ops, errs atomic.Int64
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	var tokens chan struct{}
	if rate > 0 {
		tokens = make(chan struct{}, workers)
		go func() {
			interval := time.Second / time.Duration(rate)
			next := time.Now()
			for time.Now().Before(deadline) {
				next = next.Add(interval)
				if w := time.Until(next); w > 0 {
					time.Sleep(w)
				}
				select {
				case tokens <- struct{}{}:
				default: // all workers busy: the offered load is not met; counted as lower ops
				}
			}
			close(tokens)
		}()
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make(latencies, 0, 4096)
			for {
				if tokens != nil {
					if _, ok := <-tokens; !ok {
						break
					}
				} else if time.Now().After(deadline) {
					break
				}
				lat, err := op()
				if err != nil {
					if errs.Add(1) == 1 {
						mu.Lock()
						res.firstErr = err
						mu.Unlock()
					}
					continue
				}
				ops.Add(1)
				local = append(local, lat)
			}
			mu.Lock()
			res.lat = append(res.lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.ops, res.errors, res.elapsed = ops.Load(), errs.Load(), time.Since(start)
	return res
}

// udpLoad sends 64-byte datagrams from `clients` sockets, each waiting for
// its echo, at a fixed total rate (or closed-loop when rate is 0).
func udpLoad(addr string, rate, clients int, d time.Duration) loadResult {
	conns := make(chan net.Conn, clients)
	for i := 0; i < clients; i++ {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return loadResult{firstErr: err, errors: 1}
		}
		conns <- c
	}
	defer func() {
		close(conns)
		for c := range conns {
			c.Close()
		}
	}()
	msg := make([]byte, 64)
	op := func() (time.Duration, error) {
		c := <-conns
		defer func() { conns <- c }()
		return udpEcho(c, msg)
	}
	return drive(rate, clients, d, op)
}

// udpEcho is one round trip of msg on c: the time it took, or why it failed.
func udpEcho(c net.Conn, msg []byte) (time.Duration, error) {
	t0 := time.Now()
	c.SetDeadline(t0.Add(time.Second))
	if _, err := c.Write(msg); err != nil {
		return 0, err
	}
	var buf [128]byte
	n, err := c.Read(buf[:])
	if err != nil {
		return 0, err
	}
	if n != len(msg) {
		return 0, errors.New("short echo")
	}
	return time.Since(t0), nil
}

// idleConns opens n connections to addr, exchanges one message on each and
// returns them open.
func idleConns(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	msg := []byte("ping\n")
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return conns, err
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg); err != nil {
			return conns, err
		}
		var buf [5]byte
		if _, err := io.ReadFull(c, buf[:]); err != nil {
			return conns, err
		}
		c.SetDeadline(time.Time{})
	}
	return conns, nil
}

// sinkServe accepts TCP connections and discards what they send.
func sinkServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			io.Copy(io.Discard, c)
		}()
	}
}

// clientHello returns the first bytes a TLS client sends for serverName.
func clientHello(serverName string) []byte {
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
		a.Close()
	}()
	b.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16384)
	n, _ := b.Read(buf)
	b.Close()
	return buf[:n]
}

// bulkSend writes prefix then as much data as it can for d, and returns
// the bytes written.
func bulkSend(addr string, prefix []byte, d time.Duration) (int64, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if _, err := c.Write(prefix); err != nil {
		return 0, err
	}
	return writeFor(c, d), nil
}

// writeFor writes to c in 256 KiB chunks for d and returns the bytes
// written.
func writeFor(c net.Conn, d time.Duration) int64 {
	chunk := make([]byte, 256<<10)
	var total int64
	end := time.Now().Add(d)
	c.SetWriteDeadline(end)
	for time.Now().Before(end) {
		n, err := c.Write(chunk)
		total += int64(n)
		if err != nil {
			break
		}
	}
	return total
}
