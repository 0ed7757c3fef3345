// Package peek reads what a client says first — a TLS ClientHello or an
// HTTP/1.x request head — without consuming it for the backend: the proxy
// keeps the bytes it read and replays them to the backend before splicing
// the rest.
//
// Both parsers are incremental: they are called with everything read so far
// and answer ErrNeedMore until the message is complete, so the caller owns
// the reading, its deadline (peek_timeout) and its size bound.
package peek

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// ErrNeedMore means the data is a valid prefix but incomplete.
var ErrNeedMore = errors.New("need more data")

// ErrNotTLS means the data does not start a TLS handshake.
var ErrNotTLS = errors.New("not a TLS ClientHello")

// ErrNotHTTP means the data is not an HTTP/1.x request head.
var ErrNotHTTP = errors.New("not an HTTP/1.x request")

// MaxHelloSize bounds the ClientHello we are willing to buffer: a handshake
// message length is 24 bits, but real ClientHellos (even with post-quantum
// key shares) are a few kB. 64 KiB leaves room for odd clients.
const MaxHelloSize = 64 << 10

// MaxHTTPHead bounds the HTTP request head we buffer (nginx's default
// large_client_header_buffers is 8 kB a line; 16 KiB for the whole head).
const MaxHTTPHead = 16 << 10

// Hello is what routing needs from a ClientHello.
type Hello struct {
	ServerName string   // SNI, lower-cased; "" when absent
	ALPN       []string // offered application protocols
}

// ClientHello parses the TLS ClientHello at the start of data. It returns
// ErrNeedMore while data is a valid but incomplete prefix, ErrNotTLS when
// it cannot be one, and another error for a malformed hello.
func ClientHello(data []byte) (*Hello, error) {
	// Collect the handshake message from consecutive handshake records.
	var msg []byte
	rest := data
	for {
		if len(rest) == 0 {
			return nil, ErrNeedMore
		}
		if rest[0] != 0x16 { // handshake record
			return nil, ErrNotTLS
		}
		if len(rest) >= 2 && rest[1] != 3 { // TLS major version
			return nil, ErrNotTLS
		}
		if len(rest) < 5 {
			return nil, ErrNeedMore
		}
		n := int(rest[3])<<8 | int(rest[4])
		if n == 0 || n > 16384+2048 {
			return nil, ErrNotTLS
		}
		if len(rest) < 5+n {
			return nil, ErrNeedMore
		}
		msg = append(msg, rest[5:5+n]...)
		rest = rest[5+n:]
		if len(msg) >= 4 {
			if msg[0] != 1 { // client_hello
				return nil, ErrNotTLS
			}
			hl := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if hl+4 > MaxHelloSize {
				return nil, errors.New("TLS ClientHello too large")
			}
			if len(msg) >= hl+4 {
				return parseHello(data[:len(data)-len(rest)])
			}
		}
	}
}

// parseHello hands the complete records to crypto/tls, which parses the
// hello and calls GetConfigForClient; we keep what it saw and abort.
func parseHello(records []byte) (*Hello, error) {
	var h *Hello
	errDone := errors.New("done")
	srv := tls.Server(&replayConn{r: bytes.NewReader(records)}, &tls.Config{
		GetConfigForClient: func(ch *tls.ClientHelloInfo) (*tls.Config, error) {
			h = &Hello{ServerName: strings.ToLower(ch.ServerName), ALPN: append([]string(nil), ch.SupportedProtos...)}
			return nil, errDone
		},
	})
	err := srv.Handshake()
	if h != nil {
		return h, nil
	}
	if err == nil {
		err = errors.New("no ClientHello")
	}
	return nil, errors.New("malformed TLS ClientHello: " + err.Error())
}

// replayConn is a net.Conn that reads from r and discards writes.
type replayConn struct {
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *replayConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *replayConn) Close() error                       { return nil }
func (c *replayConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *replayConn) SetDeadline(t time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(t time.Time) error { return nil }

var methods = []string{"GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "}

// HTTPHost returns the Host of the HTTP/1.x request head at the start of
// data (lower-cased, without port). It returns ErrNeedMore until the head
// is complete and ErrNotHTTP when data cannot be a request.
func HTTPHost(data []byte) (string, error) {
	ok := false
	for _, m := range methods {
		n := min(len(m), len(data))
		if string(data[:n]) == m[:n] {
			ok = true
			break
		}
	}
	if !ok {
		return "", ErrNotHTTP
	}
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		if len(data) >= MaxHTTPHead {
			return "", errors.New("HTTP request head too large")
		}
		return "", ErrNeedMore
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data[:end+4])))
	if err != nil {
		return "", ErrNotHTTP
	}
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(host, ".")), nil
}
