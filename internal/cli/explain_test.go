package cli

import (
	"bytes"
	"net"
	"strings"
	"testing"
)

// TestExplainFlags: the command's usage, its required flags, and an
// instance that cannot be asked.
func TestExplainFlags(t *testing.T) {
	run := func(args ...string) (int, string, string) {
		var o, e bytes.Buffer
		code := Run(append([]string{"explain"}, args...), &o, &e)
		return code, o.String(), e.String()
	}
	if code, out, _ := run("--help"); code != 0 || !strings.Contains(out, "--client IP:PORT") {
		t.Errorf("--help: %d %q", code, out)
	}
	if code, _, errOut := run("--port", "443"); code != 2 || !strings.Contains(errOut, "--client and --port are required") {
		t.Errorf("no --client: %d %q", code, errOut)
	}
	if code, _, errOut := run("--client", "1.2.3.4:5", "--port", "443", "--bogus"); code != 2 || !strings.Contains(errOut, "see --help") {
		t.Errorf("unknown flag: %d %q", code, errOut)
	}
	for _, bad := range [][]string{
		{"--client", "nonsense", "--port", "443"},
		{"--client", "1.2.3.4", "--port", "443"},
		{"--client", "1.2.3.4:5", "--port", "0"},
		{"--client", "1.2.3.4:5", "--port", "http"},
		{"--client", "1.2.3.4:5", "--port", "443", "--protocol", "sctp"},
	} {
		if code, _, errOut := run(bad...); code != 2 || !strings.Contains(errOut, "want ") {
			t.Errorf("%v: %d %q", bad, code, errOut)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	code, _, errOut := run("--client", "1.2.3.4:5", "--port", "443", "--admin", addr, "-c", t.TempDir()+"/none.toml")
	if code != 1 || !strings.Contains(errOut, "cannot ask the running instance at "+addr) {
		t.Errorf("nothing at --admin: %d %q", code, errOut)
	}
}
