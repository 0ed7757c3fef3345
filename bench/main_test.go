package main

import (
	"os"
	"path/filepath"
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

// TestHandWrittenSectionsKept: a new report keeps the file's "Config
// loading" section and what follows it, and nothing before it.
func TestHandWrittenSectionsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if got := handWritten(path); got != "" {
		t.Fatalf("no file: got %q", got)
	}
	old := "# Benchmarks\n\n## bulk-1\n\nold figures\n\n## Config loading\n\nkept\n\n### more\n\nkept too\n"
	if err := os.WriteFile(path, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := handWritten(path), "\n## Config loading\n\nkept\n\n### more\n\nkept too\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
