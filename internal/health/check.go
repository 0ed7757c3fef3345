// Package health checks backends: active checks (a TCP connect, or a
// send/expect exchange over TCP or UDP, every interval, each bounded by its
// timeout), the rise/fall state machine that turns their results into up and
// down, and passive detection of dial failures of real traffic. It flips a
// backend.Health; routers read that with one atomic load, so checking never
// slows traffic down.
//
// One Monitor runs per distinct (protocol, address, check settings); every
// backend of every rule that names the same address with the same settings
// shares its Health. The engine owns a Registry and updates it by difference
// on every reload, so health state survives a reload.
package health

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// Check is one health check, compiled from a rule's effective
// config.HealthCheck.
type Check struct {
	Protocol string // "tcp" or "udp"
	Address  string // the backend's traffic address
	Target   string // the address checked: Address, or its host with the check port

	Active          bool // run active checks
	Interval        time.Duration
	Timeout         time.Duration
	Retries, Rise   int
	Send            []byte
	Expect          []byte         // the reply must start with this (nil: no prefix)
	ExpectRegex     *regexp.Regexp // or match this (nil: no regex)
	DNSQuery        string         // ask a DNS query for this name instead (dns.go); "": none
	PassiveFailures int            // 0: no passive detection
	PassiveWindow   time.Duration
	PassiveCooldown time.Duration
	SlowStart       time.Duration
	// TLS, when not nil, makes every check a TLS handshake with the
	// backend's TLS settings (the traffic's), before any send/expect, so
	// a passing check proves the handshake works. The files are read at
	// each check, so a renewed CA or client certificate is used at once.
	TLS *tlsconf.ClientOptions
}

// Compile turns a rule's effective settings into a Check of address for
// protocol. The config was validated, so an error here is unexpected; it is
// still reported rather than ignored.
func Compile(protocol, address string, hc config.HealthCheck) (*Check, error) {
	c := &Check{
		Protocol:        protocol,
		Address:         address,
		Target:          address,
		Active:          hc.Enabled,
		Interval:        hc.Interval.D(),
		Timeout:         hc.Timeout.D(),
		Retries:         hc.Retries,
		Rise:            hc.Rise,
		Send:            hc.SendBytes(),
		Expect:          hc.ExpectBytes(),
		DNSQuery:        hc.DNSQuery,
		PassiveFailures: hc.PassiveFailures,
		PassiveWindow:   hc.PassiveWindow.D(),
		PassiveCooldown: hc.PassiveCooldown.D(),
		SlowStart:       hc.SlowStart.D(),
	}
	if hc.Port != 0 {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fmt.Errorf("health check of %s: %w", address, err)
		}
		c.Target = net.JoinHostPort(host, strconv.Itoa(hc.Port))
	}
	if hc.ExpectRegex != "" {
		re, err := regexp.Compile(hc.ExpectRegex)
		if err != nil {
			return nil, fmt.Errorf("health check of %s: expect_regex: %w", address, err)
		}
		c.ExpectRegex = re
	}
	if c.Active {
		switch {
		case c.Interval <= 0 || c.Timeout <= 0 || c.Timeout >= c.Interval:
			return nil, fmt.Errorf("health check of %s: need 0 < timeout (%v) < interval (%v)", address, c.Timeout, c.Interval)
		case c.Retries < 1 || c.Rise < 1:
			return nil, fmt.Errorf("health check of %s: retries (%d) and rise (%d) must be at least 1", address, c.Retries, c.Rise)
		case protocol == "udp" && len(c.Send) == 0 && c.DNSQuery == "":
			return nil, fmt.Errorf("health check of %s: a UDP check needs send", address)
		}
	}
	return c, nil
}

// Kind names the check for logs: "tcp connect", "tcp send/expect", "udp
// send/expect", "udp dns".
func (c *Check) Kind() string {
	if c.Protocol == "udp" {
		if c.DNSQuery != "" {
			return "udp dns"
		}
		return "udp send/expect"
	}
	kind := "tcp connect"
	switch {
	case c.DNSQuery != "":
		kind = "tcp dns"
	case len(c.Send) > 0 || c.expects():
		kind = "tcp send/expect"
	}
	if c.TLS != nil {
		kind += " over tls"
	}
	return kind
}

func (c *Check) expects() bool { return c.Expect != nil || c.ExpectRegex != nil }

// offset is where in the interval this check's first run falls: a
// deterministic spread, so that many checks do not run all at once and a
// reload does not move the checks that it keeps.
func (c *Check) offset() time.Duration {
	if c.Interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	io.WriteString(h, c.Protocol+" "+c.Address+" "+c.Target)
	return time.Duration(h.Sum64() % uint64(c.Interval))
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, config.MaxHealthExpect); return &b }}

// Probe runs the check once and returns nil when it passes, or why it failed.
// It returns within Timeout, or sooner when ctx ends.
func (c *Check) Probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	d := net.Dialer{KeepAlive: -1} // a check connection is short: no keep-alive setup
	conn, err := d.DialContext(ctx, c.Protocol, c.Target)
	if err != nil {
		return err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		// Close with a reset: a check every second must not leave a
		// TIME_WAIT socket behind each time.
		defer func() { tc.SetLinger(0); tc.Close() }()
	} else {
		defer conn.Close()
	}
	if c.TLS != nil && c.Protocol == "tcp" {
		cfg, err := tlsconf.ClientConfig(*c.TLS, c.Address, time.Now())
		if err != nil {
			return err
		}
		cfg.ClientSessionCache = nil // each check proves a full handshake
		asked := false               // the backend asked for a client certificate
		certs := cfg.Certificates
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked = true
			if len(certs) > 0 {
				return &certs[0], nil
			}
			return &tls.Certificate{}, nil // none: the backend decides
		}
		t0 := time.Now()
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("tls handshake: %w", err)
		}
		conn = tc
		if asked && tc.ConnectionState().Version == tls.VersionTLS13 {
			first, err := confirmClientCert(ctx, tc, time.Since(t0))
			if err != nil {
				return err
			}
			if len(first) > 0 {
				conn = &replayConn{Conn: tc, first: first}
			}
		}
	}
	if c.Protocol == "tcp" && len(c.Send) == 0 && !c.expects() && c.DNSQuery == "" {
		return nil // connect check
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if c.DNSQuery != "" {
		return c.probeDNS(conn)
	}
	if len(c.Send) > 0 {
		if _, err := conn.Write(c.Send); err != nil {
			return err
		}
	}
	if c.Protocol == "tcp" && !c.expects() {
		return nil // sent; nothing to wait for
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	if c.Protocol == "udp" {
		// One datagram is the reply; silence is a failure.
		n, err := conn.Read(buf)
		if err != nil {
			return c.readErr(err, nil)
		}
		return c.judge(buf[:n])
	}
	limit := len(buf)
	if c.ExpectRegex == nil {
		limit = len(c.Expect)
	}
	got := 0
	for {
		n, err := conn.Read(buf[got:limit])
		got += n
		if ok, final := c.decided(buf[:got]); final {
			if ok {
				return nil
			}
			return c.judge(buf[:got])
		}
		if got == limit {
			return c.judge(buf[:got])
		}
		if err != nil {
			return c.readErr(err, buf[:got])
		}
	}
}

// confirmClientCert waits, after a TLS 1.3 handshake in which the backend
// asked for a client certificate, for the backend's verdict on it: in TLS
// 1.3 the client's side of the handshake is done before the server has
// read the certificate, and a refusal comes as an alert after it. The wait
// is twice the handshake (at least 100 ms, at most the check's timeout): an
// alert fails the check; silence, an orderly close or data pass it. Data a
// backend sent first is returned, for the check's expect to read.
func confirmClientCert(ctx context.Context, tc *tls.Conn, handshake time.Duration) ([]byte, error) {
	deadline := time.Now().Add(max(2*handshake, 100*time.Millisecond))
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	tc.SetReadDeadline(deadline)
	defer tc.SetReadDeadline(time.Time{})
	b := make([]byte, 512)
	n, err := tc.Read(b)
	var oe *net.OpError
	if n == 0 && errors.As(err, &oe) && oe.Op == "remote error" {
		return nil, fmt.Errorf("tls handshake: the backend refused the client certificate: %w", err)
	}
	return b[:n], nil
}

// replayConn reads first before what its Conn reads.
type replayConn struct {
	net.Conn
	first []byte
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.first) > 0 {
		n := copy(p, r.first)
		r.first = r.first[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}

// decided reports whether the reply so far already passes (ok) or can no
// longer pass (final && !ok).
func (c *Check) decided(reply []byte) (ok, final bool) {
	if c.ExpectRegex != nil {
		if c.ExpectRegex.Match(reply) {
			return true, true
		}
		return false, false
	}
	if len(reply) >= len(c.Expect) {
		return bytes.HasPrefix(reply, c.Expect), true
	}
	if !bytes.HasPrefix(c.Expect, reply) {
		return false, true
	}
	return false, false
}

// judge decides on a complete reply.
func (c *Check) judge(reply []byte) error {
	switch {
	case c.ExpectRegex != nil:
		if c.ExpectRegex.Match(reply) {
			return nil
		}
		return fmt.Errorf("reply %s does not match /%s/", quote(reply), c.ExpectRegex)
	case c.Expect != nil:
		if bytes.HasPrefix(reply, c.Expect) {
			return nil
		}
		return fmt.Errorf("reply %s does not start with %s", quote(reply), quote(c.Expect))
	}
	return nil // any reply will do
}

// readErr explains a read that ended before the reply was decided.
func (c *Check) readErr(err error, partial []byte) error {
	timeout := errors.Is(err, os.ErrDeadlineExceeded)
	switch {
	case len(partial) == 0 && timeout:
		return fmt.Errorf("no reply from %s %s within %v", c.Protocol, c.Target, c.Timeout)
	case len(partial) == 0 && errors.Is(err, io.EOF):
		return fmt.Errorf("%s %s closed the connection without a reply", c.Protocol, c.Target)
	case len(partial) == 0:
		return err
	case timeout:
		return fmt.Errorf("%v (no more within %v)", c.judge(partial), c.Timeout)
	default:
		return fmt.Errorf("%v (%v)", c.judge(partial), err)
	}
}

// quote shows at most 64 bytes of b as a Go string.
func quote(b []byte) string {
	if len(b) > 64 {
		return strconv.Quote(string(b[:64])) + "…"
	}
	return strconv.Quote(string(b))
}
