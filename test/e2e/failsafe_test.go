package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// failsafeConfig is two rules on two ports, with a block of comments
// between them: large enough (pad bytes) that a write cut short by a full
// disk can stop between the rules.
func failsafeConfig(portA, portB int, a, b string, pad int, tag string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "# %s\n[server]\ntcp_bind = \"127.0.0.1:0\"\n[health_check]\nenabled = false\n[metrics]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n", tag)
	fmt.Fprintf(&s, "[[rules]]\nname = \"a\"\n[[rules.backends]]\nid = \"a1\"\naddress = %q\n[rules.matcher]\ntype = \"port\"\nport = %d\n", a, portA)
	for s.Len() < pad {
		s.WriteString("# ------------------------------------------------------------------ padding to cross a page\n")
	}
	fmt.Fprintf(&s, "[[rules]]\nname = \"b\"\n[[rules.backends]]\nid = \"b1\"\naddress = %q\n[rules.matcher]\ntype = \"port\"\nport = %d\n", b, portB)
	return s.String()
}

// clientLoad greets through addrs in a loop until stop is called, and
// returns how many greetings succeeded and failed per address.
func clientLoad(addrs ...string) (stop func() (ok, failed map[string]int64)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	oks := make([]atomic.Int64, len(addrs))
	fails := make([]atomic.Int64, len(addrs))
	var lastErr atomic.Value
	for i, addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, err := harness.Greeting(addr); err != nil {
					fails[i].Add(1)
					lastErr.Store(err.Error())
				} else {
					oks[i].Add(1)
				}
			}
		}()
	}
	return func() (map[string]int64, map[string]int64) {
		close(done)
		wg.Wait()
		ok, failed := map[string]int64{}, map[string]int64{}
		for i, a := range addrs {
			ok[a], failed[a] = oks[i].Load(), fails[i].Load()
		}
		return ok, failed
	}
}

// mountTiny mounts a small tmpfs for the disk-full case, or reports why it
// cannot.
func mountTiny(t *testing.T) (string, error) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir, nil
}

// TestConfigWritesNeverEmptyTheProxy: under client load, a config file
// truncated, emptied, left with no rule, half-written or cut short by a full
// disk is never applied: every client is served, both listeners stay, and
// the next good write is applied.
func TestConfigWritesNeverEmptyTheProxy(t *testing.T) {
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	portA, portB := harness.FreePort(t), harness.FreePort(t)
	addrA, addrB := fmt.Sprintf("127.0.0.1:%d", portA), fmt.Sprintf("127.0.0.1:%d", portB)
	dir, mountErr := mountTiny(t)
	if mountErr != nil {
		t.Logf("%v: the disk-full case writes under prlimit --fsize instead", mountErr)
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "config.toml")
	version := 0
	good := func() string {
		version++
		return failsafeConfig(portA, portB, a.Addr, b.Addr, 0, fmt.Sprintf("version %d", version))
	}
	if err := os.WriteFile(path, []byte(good()), 0o644); err != nil {
		t.Fatal(err)
	}
	p := Start(t, path, "--log-level", "debug")
	stop := clientLoad(addrA, addrB)
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	restore := func() {
		t.Helper()
		from := p.NumLines()
		if err := os.WriteFile(path, []byte(good()), 0o644); err != nil {
			t.Fatal(err)
		}
		p.WaitLogFrom(from, "config reloaded", "trigger=file")
	}

	step := func(name string, write func() error, wantLog ...string) {
		t.Helper()
		from := p.NumLines()
		if err := write(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		p.WaitLogFrom(from, wantLog...)
		for _, addr := range []string{addrA, addrB} {
			if _, err := harness.Greeting(addr); err != nil {
				t.Fatalf("after %s: %s no longer served: %v", name, addr, err)
			}
		}
		restore()
	}
	step("truncate", func() error { return os.Truncate(path, 0) },
		"config file is empty: taken as not written yet")
	step("an empty write", func() error { return os.WriteFile(path, []byte("\n# nothing yet\n"), 0o644) },
		"config file is empty: taken as not written yet")
	step("a config with no rule", func() error {
		return os.WriteFile(path, []byte("[server]\ntcp_bind = \"127.0.0.1:0\"\n"), 0o644)
	}, "reload failed", "no rule: this config would serve nothing")
	// SIGHUP and the admin API on the same file refuse it too.
	from := p.NumLines()
	os.WriteFile(path, []byte("[server]\ntcp_bind = \"127.0.0.1:0\"\n"), 0o644)
	p.WaitLogFrom(from, "reload failed", "trigger=file", "no rule")
	from = p.NumLines()
	p.Signal(syscall.SIGHUP)
	p.WaitLogFrom(from, "reload failed", "trigger=signal", "no rule")
	res, err := http.Post(p.AdminURL()+"/api/v1/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "no rule") {
		t.Fatalf("POST /api/v1/reload on a file with no rule: %s %s", res.Status, body)
	}
	restore()
	whole := good()
	version--
	cut := strings.Index(whole, "[[rules.backends]]\nid = \"b1\"")
	step("a write that stopped mid-line", func() error { return os.WriteFile(path, []byte(whole[:cut+25]), 0o644) },
		"config file does not end with a newline: taken as not written yet")
	step("a write that stopped at a line's end", func() error { return os.WriteFile(path, []byte(whole[:cut+19]), 0o644) },
		"reload failed", `rules[1].backends[0].id: missing`)

	// A full disk: the write stops at a page, inside the comments between
	// the two rules, and leaves a valid TOML file with rule "a" only.
	padded := failsafeConfig(portA, portB, a.Addr, b.Addr, 8000, "padded")
	if padded[4095] == '\n' || !strings.Contains(padded[:4096], "name = \"a\"") || strings.Contains(padded[:4096], "name = \"b\"") {
		t.Fatal("the padded config does not put a page boundary mid-line between the rules")
	}
	step("a write cut short by a full disk", func() error {
		if mountErr != nil {
			// RLIMIT_FSIZE stops the writer at 4096 bytes, as a full disk would.
			src := filepath.Join(t.TempDir(), "padded.toml")
			os.WriteFile(src, []byte(padded), 0o644)
			cmd := exec.Command("prlimit", "--fsize=4096", "cp", src, path)
			if err := cmd.Run(); err == nil {
				return errors.New("cp under --fsize=4096 succeeded")
			}
			return nil
		}
		filler, err := os.Create(filepath.Join(dir, "filler"))
		if err != nil {
			return err
		}
		defer func() { filler.Close(); os.Remove(filler.Name()) }()
		chunk := make([]byte, 4096)
		for {
			if _, err := filler.Write(chunk); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					return err
				}
				break
			}
		}
		// O_TRUNC frees the file's one page, and the write fills it.
		if err := os.WriteFile(path, []byte(padded), 0o644); !errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("the write to a full disk returned %v, want ENOSPC", err)
		}
		if data, _ := os.ReadFile(path); len(data) == 0 || len(data) >= len(padded) {
			return fmt.Errorf("the full disk left %d of %d bytes", len(data), len(padded))
		}
		return nil
	}, "config file does not end with a newline: taken as not written yet")

	ok, failed := stop()
	stopped = true
	for _, addr := range []string{addrA, addrB} {
		if failed[addr] != 0 || ok[addr] == 0 {
			t.Errorf("%s: %d clients served, %d failed; want 0 failed", addr, ok[addr], failed[addr])
		}
	}
	if n := p.Count("listeners closed"); n != 0 {
		t.Errorf("%d listeners-closed lines; want none", n)
	}
}

// TestLogBesideTheConfigTriggersNoReload: the proxy's stderr is a file in
// the config's directory. Its own log writes must not make the file watch
// reload (a loop the watch had when it reacted to the whole directory): only
// the two real changes are.
func TestLogBesideTheConfigTriggersNoReload(t *testing.T) {
	be := StartEcho(t, "be")
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	logPath := filepath.Join(dir, "proxy.log")
	cfg := harness.WithFreeObservePorts(proxyConfig(port, be.Addr, "") + "\n[logging]\naccess_log = true\n")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `exec "$0" -c "$1" --log-level debug 2>>"$2"`, binary, path, logPath)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	logged := func(subs ...string) int {
		data, _ := os.ReadFile(logPath)
		n := 0
		for _, line := range strings.Split(string(data), "\n") {
			if harness.ContainsAll(line, subs) {
				n++
			}
		}
		return n
	}
	waitLogged := func(n int, subs ...string) {
		t.Helper()
		harness.Eventually(t, fmt.Sprintf("%d log lines with %q in %s", n, subs, logPath), func() bool { return logged(subs...) >= n })
	}
	waitLogged(1, "dynamic-proxy started")
	change := func(n int) {
		t.Helper()
		if err := os.WriteFile(path, []byte(cfg+fmt.Sprintf("# change %d\n", n)), 0o644); err != nil {
			t.Fatal(err)
		}
		waitLogged(n, "config reloaded", "trigger=file")
	}
	change(1)
	for i := range 50 { // 50 access-log lines written into the watched directory
		if _, err := harness.Greeting(addr); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	waitLogged(50, `msg="connection closed"`)
	change(2)
	if n := logged("config file changed and settled"); n != 2 {
		t.Errorf("the watch reloaded %d times for 2 changes of the config (its own log is in the directory)", n)
	}
	if n := logged("reload failed"); n != 0 {
		t.Errorf("%d failed reloads", n)
	}
}

// TestValidateIsTheStartGate: every config that start-up refuses,
// --validate refuses too (exit 1, the same problem); a bad flag exits 2 in
// --validate mode as in every other; a 1 MiB rule name is refused with its
// file:line.
func TestValidateIsTheStartGate(t *testing.T) {
	be := StartEcho(t, "be")
	huge := strings.Repeat("n", 1<<20)
	resolver := fmt.Sprintf("resolver = %q", startDnsmasq(t)) // on loopback: knows only example.test
	refused := []struct {
		name, config, want string
	}{
		{"backend does not resolve", proxyConfig(harness.FreePort(t), "backend.invalid:80", resolver), "does not resolve"},
		{"no rule", "[server]\ntcp_bind = \"127.0.0.1:0\"\n", "no rule: this config would serve nothing"},
		{"empty file", "", "no rule: this config would serve nothing"},
		{"only disabled rules", strings.Replace(proxyConfig(harness.FreePort(t), be.Addr, ""), "name = \"web\"", "name = \"web\"\nenabled = false", 1), "no enabled rule"},
		{"1 MiB rule name", strings.Replace(proxyConfig(harness.FreePort(t), be.Addr, ""), "name = \"web\"", "name = \""+huge+"\"", 1), ":6: rules[0].name: rule name is 1048576 bytes long; at most 128 are allowed"},
		{"rule name with a space", strings.Replace(proxyConfig(harness.FreePort(t), be.Addr, ""), "name = \"web\"", "name = \"my web\"", 1), `rule name "my web" has ' ' at byte 2`},
		{"1 MiB backend id", strings.Replace(proxyConfig(harness.FreePort(t), be.Addr, ""), "id = \"web1\"", "id = \""+huge+"\"", 1), "rules[0].backends[0].id: backend id is 1048576 bytes long"},
		{"malformed", "[server\n", "TOML syntax error"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.toml")
			data := c.config
			if data != "" {
				data = harness.WithFreeObservePorts(data)
			}
			if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, mode := range [][]string{{"-c", path}, {"-c", path, "--validate"}} {
				_, errOut, code := Run(t, mode...)
				if code != 1 || !strings.Contains(errOut, c.want) {
					t.Errorf("%v: exit %d; want 1 and %q in:\n%.2000s", mode, code, c.want, errOut)
				}
				if len(errOut) > 64<<10 {
					t.Errorf("%v: %d bytes of errors (the name is repeated)", mode, len(errOut))
				}
			}
		})
	}
	good := harness.WriteConfig(t, proxyConfig(harness.FreePort(t), be.Addr, ""))
	for _, flags := range [][]string{{"--log-level", "verbose"}, {"--log-format", "xml"}, {"--no-such-flag"}} {
		args := append([]string{"-c", good, "--validate"}, flags...)
		if _, errOut, code := Run(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, errOut)
		}
		// Flags come first: a bad flag is exit 2 even when the config is bad.
		args = append([]string{"-c", filepath.Join(t.TempDir(), "missing.toml"), "--validate"}, flags...)
		if _, errOut, code := Run(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, errOut)
		}
	}
	if out, errOut, code := Run(t, "-c", good, "--validate"); code != 0 || !strings.Contains(out, ": ok") {
		t.Errorf("a good config: exit %d\n%s%s", code, out, errOut)
	}
}
