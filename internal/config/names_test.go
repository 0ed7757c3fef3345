package config

import (
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"web", "a", "api-v2", "db_primary", "pod.ns.svc:5432", strings.Repeat("x", MaxNameLength)} {
		if err := CheckName("rule name", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for s, want := range map[string]string{
		"":                                "must not be empty",
		strings.Repeat("x", 129):          "129 bytes long; at most 128",
		"my web":                          `has ' ' at byte 2`,
		"a/b":                             `has '/' at byte 1`,
		"a\"b":                            `has '"' at byte 1`,
		"line\nbreak":                     `has '\n' at byte 4`,
		"caf\u00e9":                       "has a non-ASCII byte at byte 3",
		strings.Repeat("y", 50) + " tail": `"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy…"`,
	} {
		err := CheckName("rule name", s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.60q: %v, want %q", s, err, want)
		}
	}
}

// TestHugeNameIsRefusedBriefly: a 1 MiB rule name is refused with its line,
// and no message repeats it whole.
func TestHugeNameIsRefusedBriefly(t *testing.T) {
	huge := strings.Repeat("n", 1<<20)
	doc := "[[rules]]\nname = \"" + huge + "\"\nprotocol = \"tcp\"\nmax_sessions = 3\n[[rules.backends]]\nid = \"" + huge + "\"\naddress = \"127.0.0.1:1\"\n"
	_, err := Parse("big.toml", []byte(doc))
	if err == nil {
		t.Fatal("a 1 MiB name was accepted")
	}
	msg := err.Error()
	for _, want := range []string{"big.toml:2: rules[0].name: rule name is 1048576 bytes long", "big.toml:6: rules[0].backends[0].id: backend id is 1048576 bytes long"} {
		if !strings.Contains(msg, want) {
			t.Errorf("no %q in:\n%.3000s", want, msg)
		}
	}
	if len(msg) > 4096 {
		t.Errorf("the errors are %d bytes long: a message repeats the name", len(msg))
	}
}

func TestConfigWithoutEnabledRule(t *testing.T) {
	for doc, want := range map[string]string{
		"":                              "no rule: this config would serve nothing",
		"[server]\ntcp_bind = \":1\"\n": "no rule: this config would serve nothing",
		"[[rules]]\nname = \"a\"\nenabled = false\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:1\"\n": "no enabled rule: all 1 rules have enabled = false",
	} {
		_, err := Parse("x.toml", []byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", doc, err, want)
		}
		if _, err := ParseFleet("x.toml", []byte(doc)); err == nil {
			t.Errorf("config push of %q accepted", doc)
		}
	}
	// The local file of an instance following Redis may have no rule.
	if _, err := Parse("x.toml", []byte("[redis]\nwatch_config = true\n")); err != nil {
		t.Errorf("a follower's file: %v", err)
	}
}

func TestUnterminatedWarns(t *testing.T) {
	doc := "[[rules]]\nname = \"a\"\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:1\"\n# cut"
	cfg, err := Parse("x.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0].String(), "x.toml:6: the last line does not end with a newline") {
		t.Fatalf("warnings: %v", cfg.Warnings)
	}
	if !Blank([]byte(" \n# c\n\t\n")) || Blank([]byte("a=1")) || !Unterminated([]byte("a=1")) || Unterminated([]byte("a=1\n")) || Unterminated(nil) {
		t.Fatal("Blank/Unterminated")
	}
}
