package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWithKeptPart: a new report replaces the old one but keeps what
// follows the marker, and a file without the marker is replaced whole.
func TestWithKeptPart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if got := withKeptPart(path, "# new\n"); got != "# new\n" {
		t.Errorf("no file: %q", got)
	}
	kept := keptMarker + "\n\n## By hand\n\nfigures\n"
	if err := os.WriteFile(path, []byte("# old\n\n"+kept), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := withKeptPart(path, "# new\n"); got != "# new\n\n"+kept {
		t.Errorf("with the marker: %q", got)
	}
	if err := os.WriteFile(path, []byte("# old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := withKeptPart(path, "# new\n"); got != "# new\n" {
		t.Errorf("without the marker: %q", got)
	}
}

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

func TestFailedRounds(t *testing.T) {
	targets := []*target{{name: "a"}, {name: "b"}, {name: "c"}}
	res := map[string][]sample{"a": {{}, {}}, "b": {{}, {}, {}}}
	errs := map[string][]string{"a": {"x", "iperf3 received no bytes"}, "c": {"down"}}
	got := failedRounds(targets, errs, res)
	want := "Rounds that failed, left out of the medians: a 2 of 4 (iperf3 received no bytes)."
	if got != want {
		t.Fatalf("failedRounds = %q, want %q (c failed every round: it has an error row instead)", got, want)
	}
	if got := failedRounds(targets, nil, res); got != "" {
		t.Fatalf("no failures: %q, want nothing", got)
	}
}
