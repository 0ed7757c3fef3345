//go:build unix

package e2e

// Fleet-wide access limits (docs/fleet.md, "Fleet-wide access limits"):
// three instances on one real redis-server, one client address
// (127.0.0.1) spread round-robin over them.

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// startLimitedFleet starts n instances whose rule web has access, with
// metrics, and waits until every one has synced with all n.
func startLimitedFleet(t *testing.T, srv *redistest.Server, n int, access string) []*fleetProxy {
	t.Helper()
	a := StartEcho(t, "a")
	rest := "[metrics]\nbind = \"127.0.0.1:0\"\n" + webRule(a) + "[rules.access]\n" + access
	ps := make([]*fleetProxy, n)
	for i := range ps {
		ps[i] = startFleetProxy(t, srv.URL(), "", rest)
	}
	for i, p := range ps {
		harness.WaitMetrics(t, p.MetricsURL(), fmt.Sprintf("instance %d synced with %d instances", i, n), func(m harness.Metrics) bool {
			return m.Value("dynamic_proxy_fleet_limits_synced", nil) == 1 && m.Value("dynamic_proxy_fleet_limits_instances", nil) == float64(n)
		})
	}
	return ps
}

// hammer tries rate new connections per second for d, round-robin over
// ps, and returns how many were proxied (the backend's greeting came back).
func hammer(ps []*fleetProxy, rate int, d time.Duration) (accepted, tried int) {
	var ok, all atomic.Int64
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	stop := time.After(d)
	for i := 0; ; i++ {
		select {
		case <-stop:
			wg.Wait()
			return int(ok.Load()), int(all.Load())
		case <-tick.C:
		}
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			all.Add(1)
			if name, err := harness.Greeting(addr); err == nil && name == "a" {
				ok.Add(1)
			}
		}(ps[i%len(ps)].Addr)
	}
}

// sumMetric adds up a metric over the instances.
func sumMetric(t *testing.T, ps []*fleetProxy, name string, labels harness.Labels) float64 {
	total := 0.0
	for _, p := range ps {
		total += harness.Scrape(t, p.MetricsURL()).Value(name, labels)
	}
	return total
}

// TestFleetLimitRate: a fleet-wide rate of 100 new connections per second
// per client holds across three instances (1,000 ± 10 % in 10 s); with
// Redis stopped (SIGSTOP) each instance goes on at its share, 100/3 per
// second, without waiting for Redis; and they sync again once it resumes.
func TestFleetLimitRate(t *testing.T) {
	srv := redistest.Start(t)
	ps := startLimitedFleet(t, srv, 3, "fleet_connection_rate_per_ip = 100\nfleet_connection_burst_per_ip = 10\n")

	accepted, tried := hammer(ps, 300, 10*time.Second)
	t.Logf("Redis up: %d of %d connections accepted in 10 s", accepted, tried)
	if accepted < 900 || accepted > 1100 {
		t.Errorf("Redis up: %d connections accepted in 10 s at a fleet-wide 100/s, want 1000 ± 10%%", accepted)
	}
	if n := sumMetric(t, ps, "dynamic_proxy_connections_rejected_total", harness.Labels{"reason": "fleet_rate_limited"}); int(n) != tried-accepted {
		t.Errorf("fleet_rate_limited rejections %v, want the %d refused", n, tried-accepted)
	}
	m := harness.Scrape(t, ps[0].MetricsURL())
	local := m.Value("dynamic_proxy_fleet_limits_admitted_total", harness.Labels{"rule": "web", "scope": "local"})
	if fleet := m.Value("dynamic_proxy_fleet_limits_admitted_total", harness.Labels{"rule": "web", "scope": "fleet"}); fleet < 2*local || fleet > float64(accepted) {
		t.Errorf("instance 0 counted %v admitted here and %v in the fleet; %d were", local, fleet, accepted)
	}

	srv.Pause()
	for i, p := range ps {
		harness.WaitMetrics(t, p.MetricsURL(), fmt.Sprintf("instance %d on its local share", i), func(m harness.Metrics) bool {
			return m.Value("dynamic_proxy_fleet_limits_synced", nil) == 0
		})
	}
	accepted, tried = hammer(ps, 300, 3*time.Second)
	t.Logf("Redis stopped: %d of %d connections accepted in 3 s", accepted, tried)
	// Each instance: 100/3 per second, and at most its share of the burst (10/3) saved up.
	if accepted < 270 || accepted > 340 {
		t.Errorf("Redis stopped: %d connections accepted in 3 s, want 3 × 100/3 per second (300 - 10 %%, + 10 %% and the burst)", accepted)
	}
	srv.Continue()
	for i, p := range ps {
		m := harness.WaitMetrics(t, p.MetricsURL(), fmt.Sprintf("instance %d synced again", i), func(m harness.Metrics) bool {
			return m.Value("dynamic_proxy_fleet_limits_synced", nil) == 1
		})
		if ok, failed := m.Value("dynamic_proxy_fleet_limits_syncs_total", harness.Labels{"result": "success"}),
			m.Value("dynamic_proxy_fleet_limits_syncs_total", harness.Labels{"result": "failure"}); ok < 1 || failed < 1 {
			t.Errorf("instance %d: syncs %v good, %v failed; want both across the stop", i, ok, failed)
		}
	}
	ps[0].WaitLog("redis: fleet-wide access limits not synced; each falls back to this instance's share")
	ps[0].WaitLog("redis: fleet-wide access limits synced again")
}

// TestFleetLimitConnsInstanceDies: fleet_max_connections_per_ip = 3 with
// one connection held on each of three instances refuses a fourth
// anywhere; once one instance is killed, its connection stops counting
// within 1 s and another instance admits one again.
func TestFleetLimitConnsInstanceDies(t *testing.T) {
	srv := redistest.Start(t)
	ps := startLimitedFleet(t, srv, 3, "fleet_max_connections_per_ip = 3\n")
	for _, p := range ps {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Read(make([]byte, 2)); err != nil {
			t.Fatalf("held connection through %s: %v", p.Addr, err)
		}
	}
	for i, p := range ps {
		harness.WaitMetrics(t, p.MetricsURL(), fmt.Sprintf("instance %d sees the fleet's 3 connections", i), func(m harness.Metrics) bool {
			return m.Value("dynamic_proxy_fleet_limits_connections", harness.Labels{"rule": "web", "scope": "fleet"}) == 3 &&
				m.Value("dynamic_proxy_fleet_limits_connections", harness.Labels{"rule": "web", "scope": "local"}) == 1
		})
	}
	if _, err := harness.Greeting(ps[0].Addr); err == nil {
		t.Fatal("a fourth connection was admitted with the fleet at its limit")
	}
	if n := harness.Scrape(t, ps[0].MetricsURL()).Value("dynamic_proxy_connections_rejected_total", harness.Labels{"reason": "fleet_conn_limited"}); n != 1 {
		t.Errorf("fleet_conn_limited rejections %v, want 1", n)
	}

	ps[2].Signal(syscall.SIGKILL)
	killed := time.Now()
	<-ps[2].Exited()
	var admitted time.Duration
	harness.Eventually(t, "instance 0 admits a connection again", func() bool {
		c, err := net.Dial("tcp", ps[0].Addr)
		if err != nil {
			return false
		}
		c.SetReadDeadline(time.Now().Add(harness.Deadline))
		if _, err := c.Read(make([]byte, 2)); err != nil {
			c.Close()
			return false
		}
		admitted = time.Since(killed)
		t.Cleanup(func() { c.Close() })
		return true
	})
	t.Logf("the killed instance's connection stopped counting %v after the kill", admitted.Round(time.Millisecond))
	if admitted > time.Second {
		t.Errorf("the killed instance counted for %v, want within 1 s", admitted)
	}
	harness.WaitMetrics(t, ps[0].MetricsURL(), "2 instances left", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_fleet_limits_instances", nil) == 2
	})
}
