package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// go test ./internal/config -update rewrites the .golden files from what the
// code produces now; review the diff before committing it.
var update = flag.Bool("update", false, "rewrite testdata/**/*.golden")

// golden compares got with the golden file, or rewrites it under -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// TestBadConfigs loads each testdata/bad/*.toml, one per kind of error, and
// compares the complete error text with its .golden file. Every file but
// many_problems.toml has exactly one problem, and every problem names the
// file, the line and the key path.
func TestBadConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 30 {
		t.Fatalf("found only %d bad configs", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".toml")
		t.Run(name, func(t *testing.T) {
			cfg, err := Load(f)
			if err == nil {
				t.Fatalf("loaded without error: %+v", cfg)
			}
			if cfg != nil {
				t.Error("Load returned a config together with an error")
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, want *Errors: %v", err, err)
			}
			if name != "many_problems" && len(errs.Problems) != 1 {
				t.Errorf("want exactly one problem, got %d:\n%v", len(errs.Problems), err)
			}
			for _, p := range errs.Problems {
				if p.File != f || p.Line <= 0 {
					t.Errorf("problem without file:line: %+v", p)
				}
				if p.Path == "" && !strings.Contains(p.Msg, "TOML syntax error") {
					t.Errorf("problem without key path: %+v", p)
				}
				if !strings.HasPrefix(p.String(), fmt.Sprintf("%s:%d: ", f, p.Line)) {
					t.Errorf("problem text %q does not start with file:line", p.String())
				}
			}
			golden(t, strings.TrimSuffix(f, ".toml")+".golden", err.Error()+"\n")
		})
	}
}

// TestManyProblemsAllReported checks that collecting does not stop at the
// first problem and that problems come out in file order.
func TestManyProblemsAllReported(t *testing.T) {
	_, err := Load("testdata/bad/many_problems.toml")
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("want *Errors, got %v", err)
	}
	if len(errs.Problems) < 14 {
		t.Errorf("want every problem (14), got %d:\n%v", len(errs.Problems), err)
	}
	for i := 1; i < len(errs.Problems); i++ {
		if errs.Problems[i].Line < errs.Problems[i-1].Line {
			t.Errorf("problems out of file order: %v before %v", errs.Problems[i-1], errs.Problems[i])
		}
	}
	// Spot-check key paths inside array tables and inline tables.
	for _, want := range []string{
		"many_problems.toml:4: server.conection_timeout: unknown key",
		"many_problems.toml:18: rules[0].backends[0].address:",
		"many_problems.toml:22: rules[0].backends[1].address:",
		"many_problems.toml:25: rules[0].matcher.port:",
		"many_problems.toml:28: rules[1].name: duplicate rule name",
		"many_problems.toml:32: rules[1].backends[1].wieght: unknown key",
		"many_problems.toml:32: rules[1].backends[1].address:",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

// TestGoodConfig loads a config that sets every key and compares every
// resulting value (including the defaults it leaves out) with a golden dump.
func TestGoodConfig(t *testing.T) {
	cfg, err := Load("testdata/good.toml")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/good.golden", dump(cfg))
}

// TestSeedExampleConfig loads the seed README's example config unchanged
// (its sections as the seed writes them, addresses moved to loopback): the
// seed's format loads as written, including the weighted and hash routers
// it names, and every value is what the seed says.
func TestSeedExampleConfig(t *testing.T) {
	for _, p := range []string{"round_robin", "weighted", "hash"} {
		if !router.Known(p) {
			t.Errorf("the seed names router plugin %q, which is not registered", p)
		}
	}
	cfg, err := Load("testdata/seed.toml")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/seed.golden", dump(cfg))
}

// dump lists every value of cfg as "key.path = value", one per line, using
// the toml key names, with durations written as Go durations.
func dump(cfg *Config) string {
	var lines []string
	var walk func(path string, v reflect.Value)
	walk = func(path string, v reflect.Value) {
		switch {
		case v.Type() == durationType:
			lines = append(lines, fmt.Sprintf("%s = %s", path, Duration(v.Int())))
			return
		case v.Type() == anyMapType:
			lines = append(lines, fmt.Sprintf("%s = %s", path, fmtMap(v.Interface().(map[string]any))))
			return
		}
		switch v.Kind() {
		case reflect.Pointer:
			if v.IsNil() {
				lines = append(lines, path+" = (absent)")
				return
			}
			walk(path, v.Elem())
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				name := fieldName(v.Type().Field(i))
				if name != "" {
					walk(join(path, name), v.Field(i))
				}
			}
		case reflect.Slice:
			for i := 0; i < v.Len(); i++ {
				walk(fmt.Sprintf("%s[%d]", path, i), v.Index(i))
			}
		case reflect.Map:
			keys := v.MapKeys()
			sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
			for _, k := range keys {
				walk(join(path, k.String()), v.MapIndex(k))
			}
		case reflect.String:
			lines = append(lines, fmt.Sprintf("%s = %q", path, v.String()))
		default:
			lines = append(lines, fmt.Sprintf("%s = %v", path, v.Interface()))
		}
	}
	walk("", reflect.ValueOf(cfg).Elem())
	for i := range cfg.Rules {
		lines = append(lines, fmt.Sprintf("listener(rules[%d]) = %s %s", i, cfg.Rules[i].Protocol, cfg.Listener(&cfg.Rules[i])))
	}
	for _, w := range cfg.Warnings {
		lines = append(lines, "warning: "+w.String())
	}
	return strings.Join(lines, "\n") + "\n"
}

func fmtMap(m map[string]any) string {
	keys := sortedKeysOf(m)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s = %#v", k, m[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
