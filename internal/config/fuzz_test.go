package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary documents to the loader: it must answer with a
// config or an *Errors whose every problem names a line or a key, and never
// panic. The seed corpus is every config in testdata/.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.toml")
	bad, _ := filepath.Glob("testdata/bad/*.toml")
	for _, p := range append(files, bad...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.toml", data)
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without error")
			}
			return
		}
		errs, ok := err.(*Errors)
		if !ok {
			t.Fatalf("error of type %T: %v", err, err)
		}
		if len(errs.Problems) == 0 {
			t.Fatal("invalid config with no problem listed")
		}
		for _, p := range errs.Problems {
			if p.Msg == "" || p.Line == 0 && p.Path == "" {
				t.Fatalf("problem without position or key: %+v", p)
			}
		}
	})
}
