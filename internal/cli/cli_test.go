package cli

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/version"
)

// run runs the command in-process and returns its exit code and output.
func run(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = Run(args, &o, &e)
	return code, o.String(), e.String()
}

func writeConfig(t *testing.T, toml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	// The metrics and admin servers on free ports, not on their defaults
	// that another test or process may hold.
	toml += "\n[metrics]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n"
	if err := os.WriteFile(p, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// oneLine checks that s is exactly one line (a clear error, not a dump),
// with no sign of a panic, and contains every one of subs.
func oneLine(t *testing.T, s string, subs ...string) {
	t.Helper()
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
		t.Errorf("want exactly one line, got %q", s)
	}
	for _, bad := range []string{"panic", "goroutine ", ".go:"} {
		if strings.Contains(s, bad) {
			t.Errorf("output looks like a crash (%q): %q", bad, s)
		}
	}
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("output %q does not contain %q", s, sub)
		}
	}
}

// startError checks the stderr of a start that failed: ordinary log lines
// and exactly one error line, which contains every one of subs, and no
// sign of a panic.
func startError(t *testing.T, s string, subs ...string) {
	t.Helper()
	var errLines []string
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		if !strings.HasPrefix(line, "time=") {
			t.Errorf("not a log line: %q", line)
		}
		if strings.Contains(line, "level=ERROR") {
			errLines = append(errLines, line)
		}
	}
	if len(errLines) != 1 {
		t.Fatalf("want exactly one error line, got %d in %q", len(errLines), s)
	}
	oneLine(t, errLines[0]+"\n", subs...)
}

func TestHelp(t *testing.T) {
	for _, flag := range []string{"--help", "-h", "-help"} {
		code, out, errOut := run(flag)
		if code != 0 || errOut != "" {
			t.Errorf("%s: exit %d, stderr %q", flag, code, errOut)
		}
		for _, want := range []string{"Usage:", "-c, --config FILE", `default "config.toml"`, "--validate",
			"--log-level", "--log-format", "--version-info", "-h, --help", "SIGTERM", "SIGHUP"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: help lacks %q:\n%s", flag, want, out)
			}
		}
	}
}

func TestVersionInfo(t *testing.T) {
	code, out, _ := run("--version-info")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	// Without -ldflags: the build info fallback, never an empty field.
	for _, want := range []string{"dynamic-proxy ", "commit:", "built:", "go version: " + runtime.Version(),
		"platform:   " + runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(out, want) {
			t.Errorf("version info lacks %q:\n%s", want, out)
		}
	}
	// With the values -ldflags -X sets.
	saved := []string{version.Version, version.Commit, version.Date}
	t.Cleanup(func() { version.Version, version.Commit, version.Date = saved[0], saved[1], saved[2] })
	version.Version, version.Commit, version.Date = "v1.2.3", "abc1234", "2026-01-02T03:04:05Z"
	_, out, _ = run("--version-info")
	for _, want := range []string{"dynamic-proxy v1.2.3\n", "commit:     abc1234\n", "built:      2026-01-02T03:04:05Z\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("version info lacks %q:\n%s", want, out)
		}
	}
}

func TestBadFlags(t *testing.T) {
	code, _, errOut := run("--no-such-flag")
	if code != 2 || !strings.Contains(errOut, "no-such-flag") {
		t.Errorf("unknown flag: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = run("extra")
	if code != 2 {
		t.Errorf("stray argument: exit %d", code)
	}
	oneLine(t, errOut, `unexpected argument "extra"`)
}

const goodConfig = `
[server]
tcp_bind = "127.0.0.1:%d"
[routers.rr]
plugin = "round_robin"
[[rules]]
name = "web"
router = "rr"
[[rules.backends]]
id = "web1"
address = "127.0.0.1:9001"
[[rules.backends]]
id = "web2"
address = "[::1]:9002"
[rules.matcher]
type = "port"
port = 18000
[[rules]]
name = "fallback"
[[rules.backends]]
id = "f1"
address = "localhost:9003"
`

func TestValidateGood(t *testing.T) {
	p := writeConfig(t, fmt.Sprintf(goodConfig, 18080))
	code, out, errOut := run("--validate", "-c", p)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{p + ": ok\n", "listeners: 2\n", "tcp 127.0.0.1:18000 -> web\n",
		"tcp 127.0.0.1:18080 -> fallback\n", "rules: 2\n", "web: tcp, router rr (round_robin), 2 backends",
		"fallback: tcp, router round_robin (round_robin), 1 backends", "backends: 3\n", "routers: 1: rr (round_robin)\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	// --config and -c are the same flag.
	if code, _, _ := run("--validate", "--config", p); code != 0 {
		t.Errorf("--config: exit %d", code)
	}
}

// TestValidateBad: every problem, each with file:line and key path, exit 1.
// The problems are exactly those of the config package's golden file.
func TestValidateBad(t *testing.T) {
	const bad = "../config/testdata/bad/many_problems.toml"
	golden, err := os.ReadFile("../config/testdata/bad/many_problems.golden")
	if err != nil {
		t.Fatal(err)
	}
	// The golden file names the config as the config package sees it.
	want := strings.ReplaceAll(string(golden), "testdata/bad/", "../config/testdata/bad/")
	code, out, errOut := run("--validate", "-c", bad)
	if code != 1 || out != "" {
		t.Errorf("exit %d, stdout %q", code, out)
	}
	if errOut != "dynamic-proxy: invalid config:\n"+want {
		t.Errorf("stderr:\n%q\nwant:\n%q", errOut, want)
	}
	if n := strings.Count(errOut, bad+":"); n < 10 {
		t.Errorf("only %d problems carry file:line", n)
	}
	// Without --validate, an invalid config stops the start the same way.
	if code, _, errOut2 := run("-c", bad); code != 1 || errOut2 != errOut {
		t.Errorf("start on a bad config: exit %d, stderr %q", code, errOut2)
	}
}

func TestUnreadableConfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.toml")
	code, _, errOut := run("-c", missing)
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	oneLine(t, errOut, missing, "no such file")
	dir := t.TempDir()
	code, _, errOut = run("--validate", "-c", dir)
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	oneLine(t, errOut, dir, "is a directory")
	// The default is config.toml in the working directory.
	t.Chdir(t.TempDir())
	code, _, errOut = run()
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	oneLine(t, errOut, "config.toml")
}

func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	p := writeConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[[rules]]
name = "web"
[[rules.backends]]
id = "web1"
address = "127.0.0.1:9001"
`, port))
	code, _, errOut := run("-c", p)
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	startError(t, errOut, fmt.Sprintf("127.0.0.1:%d", port), "address already in use")
}

func TestUnresolvableBackend(t *testing.T) {
	// The DNS server asked is a loopback port where none listens: the
	// lookup fails without any traffic leaving the machine.
	p := writeConfig(t, `
[server]
tcp_bind = "127.0.0.1:0"
resolver = "127.0.0.1:1"
[[rules]]
name = "web"
[[rules.backends]]
id = "web1"
address = "backend.invalid:80"
`)
	code, _, errOut := run("-c", p)
	if code != 1 {
		t.Errorf("exit %d", code)
	}
	startError(t, errOut, "backend.invalid", "does not resolve", "web1")
}

func TestBadLogOverrides(t *testing.T) {
	p := writeConfig(t, fmt.Sprintf(goodConfig, 0))
	code, _, errOut := run("-c", p, "--log-level", "loud")
	if code != 2 {
		t.Errorf("exit %d", code)
	}
	oneLine(t, errOut, `"loud"`, "debug, info, warn or error")
	code, _, errOut = run("-c", p, "--log-format", "xml")
	if code != 2 {
		t.Errorf("exit %d", code)
	}
	oneLine(t, errOut, `"xml"`, "text or json")
}
