package proxy

// End says how a proxied TCP connection or UDP session ended. Its String is
// the access log's end field and the end label of
// dynamic_proxy_connections_ended_total, the same words for both protocols.
type End uint8

const (
	// EndEOF: both sides finished (TCP).
	EndEOF End = iota
	// EndIdleTimeout: nothing moved for idle_timeout (TCP) or
	// session_timeout (UDP).
	EndIdleTimeout
	// EndClientError: the client reset the connection or failed (TCP).
	EndClientError
	// EndBackendError: the backend reset or failed (TCP: e.g. a reset
	// mid-stream; UDP: an error on the session's socket).
	EndBackendError
	// EndBackendRefused: the backend answered ICMP port unreachable (UDP);
	// the client's next datagram opens a session on another backend.
	EndBackendRefused
	// EndMaxResponses: the session delivered max_responses replies per
	// client datagram (UDP).
	EndMaxResponses
	// EndDrained: the backend was removed by a reload and its drain_timeout
	// ended the connection.
	EndDrained
	// EndShutdown: shutdown_timeout ended it (or the listener's last
	// loop stopped).
	EndShutdown
	// EndClosed: closed through the admin API (by id, backend or client).
	EndClosed
	// EndBackendDown: its backend was marked down, or removed, and the
	// rule's on_backend_down is "close".
	EndBackendDown
	// EndNoBackend: no backend was reachable (TCP access log; no backend,
	// so not counted per backend).
	EndNoBackend
	// NumEnds is the number of ends.
	NumEnds
)

var endNames = [NumEnds]string{"eof", "idle_timeout", "client_error", "backend_error", "backend_refused",
	"max_responses", "drained", "shutdown", "closed", "backend_down", "no_backend"}

func (e End) String() string {
	if e < NumEnds {
		return endNames[e]
	}
	return "unknown"
}

// EndsOf lists the ends a connection of protocol ("tcp" or "udp") that
// reached a backend can have: the end label values of
// connections_ended_total for a rule of that protocol.
func EndsOf(protocol string) []End {
	if protocol == "udp" {
		return []End{EndIdleTimeout, EndBackendError, EndBackendRefused, EndMaxResponses, EndDrained, EndShutdown, EndClosed, EndBackendDown}
	}
	return []End{EndEOF, EndIdleTimeout, EndClientError, EndBackendError, EndDrained, EndShutdown, EndClosed, EndBackendDown}
}
