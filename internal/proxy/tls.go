package proxy

import (
	"context"
	"crypto/tls"
	"net"
)

// Terminator runs the server side of a TLS handshake on a client
// connection (tlsconf.Server): the plaintext is relayed through the
// returned connection. On failure conn is left open for the caller.
type Terminator interface {
	Handshake(ctx context.Context, conn net.Conn) (*tls.Conn, error)
}

// tlsRoute reports whether rt's connections need TLS on either side.
func (rt *Route) tlsRoute() bool { return rt.TLS != nil || rt.BackendTLS != nil }
