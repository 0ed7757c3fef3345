package harness

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	n := 0
	Eventually(t, "the third check", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Errorf("cond checked %d times, want 3 (it stops once it holds)", n)
	}
	m := 0
	Eventually(t, "the second check", func() error {
		if m++; m < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	if m != 2 {
		t.Errorf("cond checked %d times, want 2", m)
	}
}

// fatalRecorder records a Fatalf instead of ending the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestEventuallyFailsWithTheLastError(t *testing.T) {
	r := &fatalRecorder{TB: t}
	eventually(r, "never", func() bool { return false }, 20*time.Millisecond)
	if r.msg != "never: not within 20ms" {
		t.Errorf("bool cond: failure %q", r.msg)
	}
	r.msg = ""
	n := 0
	eventually(r, "never", func() error { n++; return fmt.Errorf("check %d failed", n) }, 20*time.Millisecond)
	if want := fmt.Sprintf("never: not within 20ms: check %d failed", n); r.msg != want {
		t.Errorf("error cond: failure %q, want %q", r.msg, want)
	}
}

// cleanupRecorder keeps the cleanups and errors of a test instead of
// running and reporting them.
type cleanupRecorder struct {
	testing.TB
	cleanups []func()
	errs     []string
}

func (r *cleanupRecorder) Helper()             {}
func (r *cleanupRecorder) Cleanup(f func())    { r.cleanups = append(r.cleanups, f) }
func (r *cleanupRecorder) Failed() bool        { return len(r.errs) > 0 }
func (r *cleanupRecorder) Logf(string, ...any) {}
func (r *cleanupRecorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestLaunchFailsOnARaceReport: a process whose log holds the race
// detector's report fails its test when it ends; one without does not.
func TestLaunchFailsOnARaceReport(t *testing.T) {
	for _, c := range []struct {
		script string
		fail   bool
	}{
		{"echo starting; echo '" + raceReport + "'; echo 'Read at 0x00c000123456 by goroutine 7:'", true},
		{"echo starting; echo 'all well'", false},
	} {
		r := &cleanupRecorder{TB: t}
		p := Launch(r, "", "sh", "-c", c.script)
		select {
		case <-p.Exited():
		case <-time.After(Deadline):
			t.Fatalf("%q did not exit within %v", c.script, Deadline)
		}
		for i := len(r.cleanups) - 1; i >= 0; i-- {
			r.cleanups[i]()
		}
		if got := len(r.errs) > 0; got != c.fail {
			t.Errorf("%q: failed %v (%q), want %v", c.script, got, r.errs, c.fail)
		}
	}
}

const exposition = `# TYPE dynamic_proxy_requests_total counter
dynamic_proxy_requests_total{protocol="tcp",rule="web"} 7
dynamic_proxy_requests_total{protocol="udp",rule="web"} 2
dynamic_proxy_requests_total{protocol="tcp",rule="api"} 1
# TYPE dynamic_proxy_connections_active gauge
dynamic_proxy_connections_active{protocol="tcp",rule="web"} 0
# TYPE dynamic_proxy_dial_seconds histogram
dynamic_proxy_dial_seconds_bucket{rule="web",le="0.1"} 3
dynamic_proxy_dial_seconds_bucket{rule="web",le="+Inf"} 4
dynamic_proxy_dial_seconds_sum{rule="web"} 0.5
dynamic_proxy_dial_seconds_count{rule="web"} 4
`

func TestScrapeAndValue(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, exposition)
	}))
	defer srv.Close()
	m := Scrape(t, srv.URL)
	for _, c := range []struct {
		name   string
		labels Labels
		want   float64
	}{
		{"dynamic_proxy_requests_total", nil, 10},
		{"dynamic_proxy_requests_total", Labels{"rule": "web"}, 9},
		{"dynamic_proxy_requests_total", Labels{"rule": "web", "protocol": "tcp"}, 7},
		{"dynamic_proxy_requests_total", Labels{"rule": "none"}, 0},
		{"dynamic_proxy_connections_active", Labels{"rule": "web"}, 0},
		{"dynamic_proxy_dial_seconds", nil, 4},
		{"dynamic_proxy_dial_seconds_count", nil, 4},
		{"dynamic_proxy_dial_seconds_sum", Labels{"rule": "web"}, 0.5},
		{"dynamic_proxy_missing_total", nil, -1},
	} {
		if got := m.Value(c.name, c.labels); got != c.want {
			t.Errorf("Value(%s, %v) = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	calls := 0
	WaitMetrics(t, srv.URL, "7 tcp requests", func(m Metrics) bool {
		calls++
		return m.Value("dynamic_proxy_requests_total", Labels{"protocol": "tcp", "rule": "web"}) == 7
	})
	if calls != 1 {
		t.Errorf("WaitMetrics scraped %d times for a condition true at once", calls)
	}
}
