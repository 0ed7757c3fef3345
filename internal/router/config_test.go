package router

import (
	"errors"
	"strings"
	"testing"
)

// Every plugin's bad settings are errors naming the key and what is allowed.
func TestPluginConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		plugin string
		config map[string]any
		want   []string
	}{
		{"round_robin", map[string]any{"x": int64(1)}, []string{"config.x: unknown key (this plugin takes: none)"}},
		{"least_connections", map[string]any{"weighted": true}, []string{"config.weighted: unknown key (this plugin takes: none)"}},
		{"weighted", map[string]any{"smooth_weighted": "yes"}, []string{"config.smooth_weighted: want true or false, got \"yes\""}},
		{"weighted", map[string]any{"smooth": true}, []string{"config.smooth: unknown key (this plugin takes: smooth_weighted)"}},
		{"random", map[string]any{"choices": int64(3)}, []string{"config.choices: want an integer from 1 to 2, got 3"}},
		{"random", map[string]any{"choices": 2.5}, []string{"config.choices: want an integer from 1 to 2, got 2.5"}},
		{"random", map[string]any{"choices": int64(0), "seed": int64(1)}, []string{
			"config.choices: want an integer from 1 to 2, got 0",
			"config.seed: unknown key (this plugin takes: choices)",
		}},
		{"hash", map[string]any{"hash_key": "cookie"}, []string{`config.hash_key: want one of ["client_ip" "client_ip_port" "sni"], got "cookie"`}},
	} {
		err := Validate(tc.plugin, tc.config)
		if err == nil {
			t.Errorf("%s %v: no error", tc.plugin, tc.config)
			continue
		}
		lines := strings.Split(err.Error(), "\n")
		if len(lines) != len(tc.want) {
			t.Errorf("%s %v: errors %q, want %q", tc.plugin, tc.config, lines, tc.want)
			continue
		}
		for i := range lines {
			if lines[i] != tc.want[i] {
				t.Errorf("%s %v: error %q, want %q", tc.plugin, tc.config, lines[i], tc.want[i])
			}
		}
	}
	for _, p := range allPlugins {
		if err := Validate(p.plugin, p.config); err != nil {
			t.Errorf("%s %v: %v", p.plugin, p.config, err)
		}
	}
}

func TestBuiltinPlugins(t *testing.T) {
	for _, want := range []string{"hash", "least_connections", "random", "round_robin", "weighted"} {
		if !Known(want) {
			t.Errorf("plugin %q not registered (have %v)", want, Plugins())
		}
	}
}

// Every router returns an error wrapping ErrNoBackend when it has no
// backends, or none usable.
func TestNoBackendError(t *testing.T) {
	for _, p := range allPlugins {
		r := mustNew(t, p.plugin, p.config, nil)
		if _, err := r.Pick(&Request{}); !errorsIsNoBackend(err) {
			t.Errorf("%s with no backends: %v", p.name, err)
		}
		bs := newBackends(3)
		bs[0].SetEnabled(false)
		bs[1].Health().SetUp(false)
		bs[2].SetDraining(true)
		r = mustNew(t, p.plugin, p.config, bs)
		if b, err := r.Pick(&Request{}); !errorsIsNoBackend(err) {
			t.Errorf("%s with none usable: %v, %v", p.name, b, err)
		}
		bs[1].Health().SetUp(true)
		if b, err := r.Pick(&Request{}); err != nil || b != bs[1] {
			t.Errorf("%s with b1 back up: %v, %v", p.name, b, err)
		}
	}
}

func errorsIsNoBackend(err error) bool { return err != nil && errors.Is(err, ErrNoBackend) }
