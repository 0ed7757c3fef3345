package config

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// minimal sets only what is required, with every optional section present
// so that its defaults are filled in by the decoder.
const minimal = `
[redis]
[acme]
[routers.rr]
plugin = "round_robin"
[[rules]]
name = "r"
[rules.backend_tls]
[[rules.backends]]
id = "b"
address = "127.0.0.1:9001"
[[rules.discovery]]
name = "web.test:80"
`

// TestDefaultsAsDocumented reads the doc comment of every field of every
// config struct in the package (config.go and the files beside it), takes the value it documents as the default
// ("Default 10s.", `Default "info".`, "0 (the default) ...") and checks it
// against what a config that leaves the key out actually gets. A field must
// document a default or say it is required, so a new key cannot ship
// without one.
func TestDefaultsAsDocumented(t *testing.T) {
	cfg, err := Parse("minimal.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	// The defaulted value of every struct type reachable from cfg.
	instances := map[string]reflect.Value{}
	var collect func(v reflect.Value)
	collect = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Pointer:
			if !v.IsNil() {
				collect(v.Elem())
			}
		case reflect.Struct:
			if v.Type() == durationType {
				return
			}
			if _, seen := instances[v.Type().Name()]; !seen {
				instances[v.Type().Name()] = v
			}
			for i := 0; i < v.NumField(); i++ {
				if fieldName(v.Type().Field(i)) != "" {
					collect(v.Field(i))
				}
			}
		case reflect.Slice:
			if v.Len() > 0 {
				collect(v.Index(0))
			}
		case reflect.Map:
			if v.Type() != anyMapType {
				for _, k := range v.MapKeys() {
					collect(v.MapIndex(k))
				}
			}
		}
	}
	collect(reflect.ValueOf(cfg))

	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var decls []ast.Decl
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		decls = append(decls, f.Decls...)
	}
	checked := 0
	for _, decl := range decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.TYPE {
			continue
		}
		for _, spec := range gd.Specs {
			ts := spec.(*ast.TypeSpec)
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				continue
			}
			tagged := false
			for _, field := range st.Fields.List {
				tagged = tagged || field.Tag != nil && strings.Contains(field.Tag.Value, `toml:"`)
			}
			inst, ok := instances[ts.Name.Name]
			if !tagged {
				continue // not a config section
			}
			if !ok {
				// A section only reachable through an optional pointer
				// (a matcher, a rule's health_check overrides) has no
				// defaults of its own.
				t.Logf("type %s: not in the minimal config, not checked", ts.Name.Name)
				continue
			}
			for _, field := range st.Fields.List {
				for _, name := range field.Names {
					sf, _ := inst.Type().FieldByName(name.Name)
					key := fieldName(sf)
					if key == "" {
						continue
					}
					doc := field.Doc.Text() + " " + field.Comment.Text()
					t.Run(ts.Name.Name+"."+key, func(t *testing.T) {
						checkDocumentedDefault(t, doc, inst.FieldByName(name.Name))
					})
					checked++
				}
			}
		}
	}
	if checked < 25 {
		t.Fatalf("checked only %d fields", checked)
	}
}

var (
	defaultRe  = regexp.MustCompile(`(?i)\bdefault:?\s+("[^"]*"|\{\}|[\w-]+)`)
	theDefault = regexp.MustCompile(`("[^"]*"|\{\}|[\w-]+)\s+\(the default\)`)
	requiredRe = regexp.MustCompile(`(?i)\brequired\b`)
)

func checkDocumentedDefault(t *testing.T, doc string, got reflect.Value) {
	t.Helper()
	doc = strings.Join(strings.Fields(doc), " ")
	var want string
	if m := defaultRe.FindStringSubmatch(doc); m != nil {
		want = m[1]
	} else if m := theDefault.FindStringSubmatch(doc); m != nil {
		want = m[1]
	}
	switch {
	case want == "" && requiredRe.MatchString(doc):
		return // required keys have no default; validation tests cover them
	case want == "" && (got.Kind() == reflect.Slice || got.Kind() == reflect.Pointer ||
		got.Kind() == reflect.Struct && got.Type() != durationType || got.Kind() == reflect.Map && got.Type() != anyMapType):
		return // a section or list, not a key
	case want == "":
		t.Fatalf("documents no default (want \"Default X\" or \"X (the default)\" in its comment): %q", doc)
	}
	switch {
	case got.Type() == durationType:
		d, err := time.ParseDuration(want)
		if err != nil {
			t.Fatalf("documented default %q is not a duration", want)
		}
		if time.Duration(got.Int()) != d {
			t.Errorf("default is %v, documented %v", time.Duration(got.Int()), d)
		}
	case got.Type() == anyMapType:
		if want != "{}" || got.IsNil() || got.Len() != 0 {
			t.Errorf("default is %v, documented %s", got.Interface(), want)
		}
	case got.Kind() == reflect.String:
		s, err := strconv.Unquote(want)
		if err != nil {
			t.Fatalf("documented default %s of a string is not quoted", want)
		}
		if got.String() != s {
			t.Errorf("default is %q, documented %q", got.String(), s)
		}
	case got.Kind() == reflect.Int:
		n, err := strconv.Atoi(want)
		if err != nil || int64(n) != got.Int() {
			t.Errorf("default is %d, documented %s", got.Int(), want)
		}
	case got.Kind() == reflect.Float64:
		f, err := strconv.ParseFloat(want, 64)
		if err != nil || f != got.Float() {
			t.Errorf("default is %v, documented %s", got.Float(), want)
		}
	case got.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(want)
		if err != nil || b != got.Bool() {
			t.Errorf("default is %v, documented %s", got.Bool(), want)
		}
	default:
		t.Fatalf("no rule to compare a %s with documented default %s", got.Type(), want)
	}
}

// TestDefaultsLiteral spells out the documented defaults once more, as the
// docs/configuration.md lists them, so a change to one shows up as a failing line here.
func TestDefaultsLiteral(t *testing.T) {
	cfg, err := Parse("minimal.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Server
	checks := []struct {
		key       string
		got, want any
	}{
		{"server.tcp_bind", s.TCPBind, "0.0.0.0:8080"},
		{"server.udp_bind", s.UDPBind, "0.0.0.0:8081"},
		{"server.worker_threads", s.WorkerThreads, 0},
		{"server.adaptive_threads", s.AdaptiveThreads, true},
		{"server.max_connections", s.MaxConnections, 10000},
		{"server.connection_timeout", s.ConnectionTimeout.D(), 10 * time.Second},
		{"server.buffer_size", s.BufferSize, 8192},
		{"server.idle_timeout", s.IdleTimeout.D(), 10 * time.Minute},
		{"server.shutdown_timeout", s.ShutdownTimeout.D(), 30 * time.Second},
		{"server.upgrade_timeout", s.UpgradeTimeout.D(), time.Minute},
		{"logging.level", cfg.Logging.Level, "info"},
		{"logging.format", cfg.Logging.Format, "text"},
		{"logging.access_log", cfg.Logging.AccessLog, false},
		{"logging.access_log_interval", cfg.Logging.AccessLogInterval.D(), time.Duration(0)},
		{"logging.access_log_file", cfg.Logging.AccessLogFile, ""},
		{"logging.explain_sample", cfg.Logging.ExplainSample, 0.0},
		{"redis.url", cfg.Redis.URL, "redis://127.0.0.1:6379"},
		{"redis.password", cfg.Redis.Password, ""},
		{"redis.db", cfg.Redis.DB, 0},
		{"redis.pool_size", cfg.Redis.PoolSize, 10},
		{"redis.connection_timeout", cfg.Redis.ConnectionTimeout.D(), 5 * time.Second},
		{"redis.command_timeout", cfg.Redis.CommandTimeout.D(), 3 * time.Second},
		{"redis.key_prefix", cfg.Redis.KeyPrefix, "dynamic-proxy:"},
		{"acme.email", cfg.ACME.Email, ""},
		{"acme.directory", cfg.ACME.Directory, "https://acme-v02.api.letsencrypt.org/directory"},
		{"acme.ca_root", cfg.ACME.CARoot, ""},
		{"acme.challenges", strings.Join(cfg.ACME.Challenges, ","), "tls-alpn-01"},
		{"acme.http_port", cfg.ACME.HTTPPort, 0},
		{"acme.storage", cfg.ACME.Storage, "acme"},
		{"acme.encryption_key_file", cfg.ACME.EncryptionKeyFile, ""},
		{"acme.renew_check_interval", cfg.ACME.RenewCheckInterval.D(), 10 * time.Minute},
		{"routers.rr.config", len(cfg.Routers["rr"].Config), 0},
		{"rules[0].protocol", cfg.Rules[0].Protocol, "tcp"},
		{"rules[0].enabled", cfg.Rules[0].Enabled, true},
		{"rules[0].router", cfg.Rules[0].Router, "round_robin"},
		{"rules[0].matcher", cfg.Rules[0].Matcher == nil, true},
		{"rules[0].backends[0].weight", cfg.Rules[0].Backends[0].Weight, 1},
		{"rules[0].backends[0].enabled", cfg.Rules[0].Backends[0].Enabled, true},
		{"rules[0].backends[0].priority", cfg.Rules[0].Backends[0].Priority, 0},
		{"rules[0].backends[0].backup", cfg.Rules[0].Backends[0].Backup, false},
		{"rules[0].discovery[0].type", cfg.Rules[0].Discovery[0].Type, "a"},
		{"rules[0].discovery[0].resolver", cfg.Rules[0].Discovery[0].Resolver, ""},
		{"rules[0].discovery[0].min_ttl", cfg.Rules[0].Discovery[0].MinTTL.D(), 5 * time.Second},
		{"rules[0].discovery[0].max_ttl", cfg.Rules[0].Discovery[0].MaxTTL.D(), 5 * time.Minute},
		{"rules[0].discovery[0].timeout", cfg.Rules[0].Discovery[0].Timeout.D(), 2 * time.Second},
		{"rules[0].discovery[0].empty_grace", cfg.Rules[0].Discovery[0].EmptyGrace.D(), 30 * time.Second},
		{"rules[0].discovery[0].weight", cfg.Rules[0].Discovery[0].Weight, 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: default %v, want %v", c.key, c.got, c.want)
		}
	}
	if cfg.Routers["rr"].Config == nil {
		t.Error("routers.rr.config: default is nil, want an empty table")
	}

	// A config without [redis] has no Redis; one with an empty [redis] has
	// every Redis default (not zero values, which would not validate).
	noRedis, err := Parse("x.toml", []byte(`[[rules]]
name = "r"
[[rules.backends]]
id = "b"
address = "127.0.0.1:9001"`))
	if err != nil {
		t.Fatal(err)
	}
	if noRedis.Redis != nil {
		t.Errorf("no [redis] section, but Redis = %+v", noRedis.Redis)
	}
}

// TestShippedConfigShowsDefaults checks the repository's config.toml: it
// loads, and where it claims to show a key's default, the value is the default.
func TestShippedConfigShowsDefaults(t *testing.T) {
	shipped, err := Load("../../config.toml")
	if err != nil {
		t.Fatal(err)
	}
	def, err := Parse("minimal.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	got, want := shipped.Server, def.Server
	// The shipped file binds loopback, not 0.0.0.0; its comments say so.
	got.TCPBind, got.UDPBind = want.TCPBind, want.UDPBind
	if got != want {
		t.Errorf("config.toml [server] differs from the defaults it claims to show:\n got  %+v\n want %+v", shipped.Server, def.Server)
	}
	if shipped.Logging != def.Logging {
		t.Errorf("config.toml [logging] = %+v, defaults %+v", shipped.Logging, def.Logging)
	}
	if len(shipped.Rules) == 0 {
		t.Fatal("config.toml has no rules")
	}
	for i, r := range shipped.Rules {
		for j, b := range r.Backends {
			if !strings.HasPrefix(b.Address, "127.") {
				t.Errorf("rules[%d].backends[%d].address = %q, want a loopback address", i, j, b.Address)
			}
		}
	}
}
