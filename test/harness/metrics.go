package harness

import (
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a Prometheus endpoint: its metric families by
// name.
type Metrics map[string]*dto.MetricFamily

// Labels selects series by label values; a series matches when it has every
// one of them (and maybe more).
type Labels map[string]string

// Scrape reads and parses the Prometheus text exposition at url. The client
// keeps no connection open, so a scrape leaves no goroutine or descriptor
// behind in the proxy.
func Scrape(t testing.TB, url string) Metrics {
	t.Helper()
	c := &http.Client{Timeout: Deadline, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, res.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// Value sums the series of family name that match want (nil: all of them).
// A histogram gives its sample count, or its sum when name is the family's
// name with _sum appended; name_count is also the sample count. A family
// that is not exposed at all gives -1, so that a check for 0 cannot pass on
// a family that is missing.
func (m Metrics) Value(name string, want Labels) float64 {
	field := ""
	mf, ok := m[name]
	if !ok {
		for _, suf := range []string{"_count", "_sum"} {
			if base, cut := strings.CutSuffix(name, suf); cut {
				mf, field = m[base], suf
			}
		}
	}
	if mf == nil {
		return -1
	}
	var sum float64
series:
	for _, s := range mf.Metric {
		for k, v := range want {
			found := false
			for _, lp := range s.Label {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue series
			}
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Histogram != nil && field == "_sum":
			sum += s.Histogram.GetSampleSum()
		case s.Histogram != nil:
			sum += float64(s.Histogram.GetSampleCount())
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum
}

// WaitMetrics scrapes url until cond holds and returns that scrape; it fails
// the test if cond does not hold within Deadline. The proxy counts a
// connection when it ends, a moment after the client saw it end, so a check
// of counters after traffic waits here rather than scraping once.
func WaitMetrics(t testing.TB, url, what string, cond func(Metrics) bool) Metrics {
	t.Helper()
	var m Metrics
	Eventually(t, "metrics at "+url+" showing "+what, func() bool {
		m = Scrape(t, url)
		return cond(m)
	})
	return m
}
