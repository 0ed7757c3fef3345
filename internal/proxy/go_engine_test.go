//go:build linux

package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestGoroutineEngine runs the engine-level tests again on the goroutine
// engine, so both engines are held to the same behaviour: TCP forwarding,
// half-close, idle timeout, resets passed on, limits, drain, the shutdown
// cut, observer events in order, the resolver's use (every address, the
// next one on a refusal, a first lookup holding nobody up) and router
// needs; UDP sessions, session_timeout, max_responses per datagram,
// max_sessions, the refused tombstone, drain and shutdown.
//
// Left out, as they look at the epoll engine's own machinery:
// TestIdleConnectionHoldsTwoDescriptors and TestDescriptorBudgetCopiesWithoutPipe
// (its splice-pipe pool), TestNoDelayBothSides (its loops' sockets),
// TestUDPOversize and TestUDPShards (its message buffers and shards).
func TestGoroutineEngine(t *testing.T) {
	tests := []struct {
		name string
		run  func(*testing.T)
	}{
		{"Forward10MiBEachWay", TestForward10MiBEachWay},
		{"HalfClose", TestHalfClose},
		{"Concurrent500", TestConcurrent500},
		{"DeadBackendSkipped", TestDeadBackendSkipped},
		{"AllBackendsDeadClosesFast", TestAllBackendsDeadClosesFast},
		{"MaxConnections", TestMaxConnections},
		{"MaxConnectionsBatched", TestMaxConnectionsBatched},
		{"IdleTimeout", TestIdleTimeout},
		{"AccessLog", TestAccessLog},
		{"ResetClosesBoth", TestResetClosesBoth},
		{"NoRouteClosed", TestNoRouteClosed},
		{"FirstRouteWins", TestFirstRouteWins},
		{"StopAcceptingDropsNoClient", TestStopAcceptingDropsNoClient},
		{"ShutdownDrains", TestShutdownDrains},
		{"ShutdownTimeoutCuts", TestShutdownTimeoutCuts},
		{"CloseBackendConnsDrained", TestCloseBackendConnsDrained},
		{"ConnsListAndClose", TestConnsListAndClose},
		{"MaxConnectionsAcrossListeners", TestMaxConnectionsAcrossListeners},
		{"BackendHostName", TestBackendHostName},
		{"ObserverSeesEveryTCPEvent", TestObserverSeesEveryTCPEvent},
		{"ObserverRejections", TestObserverRejections},
		{"TCPResolvedAddressesAllUsed", TestTCPResolvedAddressesAllUsed},
		{"TCPNextAddressOnRefused", TestTCPNextAddressOnRefused},
		{"TCPFirstLookupDoesNotBlock", TestTCPFirstLookupDoesNotBlock},
		{"TCPStaleAnswerKept", TestTCPStaleAnswerKept},
		{"RouterNeedsHost", TestRouterNeedsHost},
		{"RouterNeedsSNIAndALPN", TestRouterNeedsSNIAndALPN},
		{"RouterNeedsNothing", TestRouterNeedsNothing},
		{"ShutdownAbortsInspection", TestShutdownAbortsInspection},
		{"DescriptorBudgetPausesAccept", TestDescriptorBudgetPausesAccept},

		{"UDPEchoRoundTrip", TestUDPEchoRoundTrip},
		{"UDPManyClientsOwnReplies", TestUDPManyClientsOwnReplies},
		{"UDPSessionTimeout", TestUDPSessionTimeout},
		{"UDPTrafficKeepsSessionOpen", TestUDPTrafficKeepsSessionOpen},
		{"UDPMaxResponses", TestUDPMaxResponses},
		{"UDPMaxResponsesPerDatagram", TestUDPMaxResponsesPerDatagram},
		{"UDPDNSShaped", TestUDPDNSShaped},
		{"UDPMaxSessions", TestUDPMaxSessions},
		{"UDPDeadBackend", TestUDPDeadBackend},
		{"UDPAllBackendsDead", TestUDPAllBackendsDead},
		{"UDPLargeDatagrams", TestUDPLargeDatagrams},
		{"UDPDescriptorsReleased", TestUDPDescriptorsReleased},
		{"UDPShutdownDrains", TestUDPShutdownDrains},
		{"UDPShutdownTimeout", TestUDPShutdownTimeout},
		{"UDPCloseReleasesPort", TestUDPCloseReleasesPort},
		{"UDPReload", TestUDPReload},
		{"UDPCloseBackendConns", TestUDPCloseBackendConns},
		{"UDPBackendHostName", TestUDPBackendHostName},
		{"UDPFirstLookupDoesNotBlock", TestUDPFirstLookupDoesNotBlock},
		{"UDPResolvedAddressesAllUsed", TestUDPResolvedAddressesAllUsed},
		{"DescriptorBudgetUDP", TestDescriptorBudgetUDP},
		{"UDPDNSSocketsReleased", TestUDPDNSSocketsReleased},
	}
	testEngine = EngineGoroutine
	defer func() { testEngine = 0 }()
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}

// TestUDPWildcardRepliesFromDestination: on a wildcard bind, a reply comes
// from the address the client sent to (here 127.0.0.7, not the 127.0.0.1
// the system would pick), on both engines.
func TestUDPWildcardRepliesFromDestination(t *testing.T) {
	for _, e := range []Engine{EngineEpoll, EngineGoroutine} {
		t.Run(e.String(), func(t *testing.T) {
			if e == EngineEpoll && !EpollSupported {
				t.Skip("the epoll engine runs on Linux only")
			}
			s, _ := newTestServer(t)
			if err := s.SetEngine(e); err != nil {
				t.Fatal(err)
			}
			be := startUDPBackend(t, echoReply)
			l, err := s.ListenUDP("0.0.0.0:0", Table{Routes: []*Route{newUDPRoute(t, "wild", be.addr)}})
			if err != nil {
				t.Fatal(err)
			}
			cutOnCleanup(t, l.(udpTestListener))
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 7), Port: l.Addr().(*net.UDPAddr).Port}
			buf := make([]byte, 64)
			harness.Eventually(t, "a reply from 127.0.0.7", func() bool {
				if _, err := c.WriteToUDP([]byte("hi"), to); err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				n, from, err := c.ReadFromUDP(buf)
				if err != nil {
					return false
				}
				if string(buf[:n]) != "hi" || !from.IP.Equal(to.IP) || from.Port != to.Port {
					t.Fatalf("reply %q from %v, want \"hi\" from %v", buf[:n], from, to)
				}
				return true
			})
		})
	}
}
