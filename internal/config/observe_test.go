package config

import (
	"strings"
	"testing"
)

const observeBase = `
[[rules]]
name = "r"
[[rules.backends]]
id = "b"
address = "127.0.0.1:9001"
`

func TestObserveDefaults(t *testing.T) {
	cfg, err := Parse("c.toml", []byte(observeBase))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics != (Metrics{Enabled: true, Bind: "127.0.0.1:8070", Path: "/metrics"}) {
		t.Errorf("metrics defaults: %+v", cfg.Metrics)
	}
	if cfg.Admin != (Admin{Bind: "127.0.0.1:8071"}) {
		t.Errorf("admin defaults: %+v", cfg.Admin)
	}
	cfg, err = Parse("c.toml", []byte(observeBase+`
[metrics]
enabled = false
[admin]
bind = ""
token = "t0k3n"
pprof = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics.Enabled || cfg.Metrics.Bind != DefaultMetricsBind || cfg.Admin.Bind != "" || cfg.Admin.Token != "t0k3n" || !cfg.Admin.Pprof {
		t.Errorf("explicit values: %+v %+v", cfg.Metrics, cfg.Admin)
	}
}

func TestObserveValidation(t *testing.T) {
	for _, c := range []struct {
		name, toml string
		want       []string // each a substring of one problem, with its line
	}{
		{"non-loopback admin without token", "[admin]\nbind = \"0.0.0.0:8071\"\n",
			[]string{`c.toml:8: admin.bind: "0.0.0.0:8071" is not a loopback address`, "set admin.token"}},
		{"all addresses without token", "[admin]\nbind = \":8071\"\n", []string{"admin.bind: \":8071\" is not a loopback address"}},
		{"a LAN address without token", "[admin]\nbind = \"10.1.2.3:8071\"\n", []string{"not a loopback address"}},
		{"bad admin bind", "[admin]\nbind = \"localhost\"\n", []string{`admin.bind: invalid address "localhost"`}},
		{"token with a space", "[admin]\ntoken = \"a b\"\n", []string{"c.toml:8: admin.token: must not contain spaces"}},
		{"bad metrics bind", "[metrics]\nbind = \"127.0.0.1:99999\"\n", []string{"c.toml:8: metrics.bind: invalid address"}},
		{"relative metrics path", "[metrics]\npath = \"metrics\"\n", []string{`metrics.path: must start with "/"`}},
		{"metrics path with a query", "[metrics]\npath = \"/m?x=1\"\n", []string{"metrics.path: must be a plain URL path"}},
		{"same port", "[metrics]\nbind = \"127.0.0.1:9500\"\n[admin]\nbind = \"127.0.0.1:9500\"\n", []string{"admin.bind: \"127.0.0.1:9500\" is also metrics.bind"}},
		{"unknown key", "[admin]\ntokn = \"x\"\n", []string{`admin.tokn: unknown key "tokn" (did you mean "token"?)`}},
		{"wrong type", "[metrics]\nenabled = \"yes\"\n", []string{"metrics.enabled: want true or false"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("c.toml", []byte(observeBase+c.toml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
	for _, ok := range []string{
		"[admin]\nbind = \"0.0.0.0:8071\"\ntoken = \"secret\"\n",
		"[admin]\nbind = \"[::1]:8071\"\n",
		"[admin]\nbind = \"localhost:8071\"\n",
		"[admin]\nbind = \"127.0.0.2:8071\"\n",
		"[metrics]\nenabled = false\nbind = \"nonsense\"\n", // not used when disabled
		"[metrics]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n",
		"[admin]\nbind = \"\"\ntoken = \"\"\n",
	} {
		if _, err := Parse("c.toml", []byte(observeBase+ok)); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for bind, want := range map[string]bool{
		"127.0.0.1:8071": true, "127.9.9.9:1": true, "[::1]:8071": true, "localhost:80": true, "LOCALHOST:80": true,
		"0.0.0.0:8071": false, ":8071": false, "[::]:8071": false, "192.168.1.1:80": false, "example.com:80": false, "garbage": false,
	} {
		if got := IsLoopback(bind); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", bind, got, want)
		}
	}
}

func TestObserveChangesNeedRestart(t *testing.T) {
	old, err := Parse("c.toml", []byte(observeBase))
	if err != nil {
		t.Fatal(err)
	}
	next, err := Parse("c.toml", []byte(observeBase+"[metrics]\nbind = \"127.0.0.1:9999\"\n[admin]\npprof = true\ntoken = \"new\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(RestartNeeded(old, next), ",")
	if got != "metrics.bind,admin.pprof" {
		t.Errorf("restart needed for %q, want metrics.bind,admin.pprof (a token applies at once)", got)
	}
}

func TestThreadChangesNeedRestart(t *testing.T) {
	old, err := Parse("c.toml", []byte(observeBase))
	if err != nil {
		t.Fatal(err)
	}
	next, err := Parse("c.toml", []byte("[server]\nworker_threads = 3\nadaptive_threads = false\nengine = \"goroutine\"\n"+observeBase))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(RestartNeeded(old, next), ","); got != "server.worker_threads,server.adaptive_threads,server.engine" {
		t.Errorf("restart needed for %q, want server.worker_threads,server.adaptive_threads,server.engine", got)
	}
}
