package engine

import (
	"bytes"
	"io"
	"log/slog"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config/gen"
)

// BenchmarkPlan: the plan of a reload that changes one backend address of
// 10,000 SNI rules (all on one listener), against the running config.
func BenchmarkPlan(b *testing.B) {
	config10k := func(edit bool) *config.Config {
		var buf bytes.Buffer
		if err := gen.Write(&buf, gen.Options{Rules: 10000, Kind: "sni", TCPBind: "127.0.0.1:0", BackendPort: 40000}); err != nil {
			b.Fatal(err)
		}
		data := buf.Bytes()
		if edit {
			data = bytes.Replace(data, []byte(`address = "127.0.0.1:45000"`), []byte(`address = "127.0.0.1:45001"`), 1)
		}
		cfg, err := config.Parse("bench.toml", data)
		if err != nil {
			b.Fatal(err)
		}
		return cfg
	}
	e := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := e.Apply(config10k(false)); err != nil {
		b.Fatal(err)
	}
	defer e.Shutdown(b.Context())
	next := config10k(true)
	b.ReportAllocs()
	for b.Loop() {
		ch, err := e.Plan(next)
		if err != nil || len(ch.RulesChanged) != 1 {
			b.Fatalf("plan %v %v, want one rule changed", ch, err)
		}
	}
}
