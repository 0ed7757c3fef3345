package main

import (
	"strings"
	"testing"
)

func TestParseIperf(t *testing.T) {
	gbps, gb, err := parseIperf([]byte(`{"end":{"sum_received":{"bytes":6000000000,"bits_per_second":12000000000}}}`))
	if err != nil || gbps != 12 || gb != 6 {
		t.Fatalf("a good report: %v Gbit/s, %v GB, %v; want 12, 6, nil", gbps, gb, err)
	}
	for _, c := range []struct{ out, want string }{
		{`{"end":{"sum_received":{"bytes":0,"bits_per_second":0}}}`, "no bytes"},
		{`{"end":{}}`, "no bytes"},
		{`{"error":"unable to connect to server"}`, "unable to connect"},
		{`not json`, "iperf3 report"},
	} {
		if _, _, err := parseIperf([]byte(c.out)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseIperf(%s): %v, want an error with %q", c.out, err, c.want)
		}
	}
}
