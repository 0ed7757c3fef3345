package faults

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

const unitFile = "../../deploy/dynamic-proxy.service"

// unitKeys parses a systemd unit into section → key → values (a key may
// repeat, as ExecReload does).
func unitKeys(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: not a key=value line in a section: %q", path, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

// TestSystemdUnit checks deploy/dynamic-proxy.service.
//
// Fault: a deployment that runs the proxy as root, with the default
// descriptor limit, writable config or no way to reload.
// Must hold: the unit has every hardening key the deployment advice names
// (a dedicated user, LimitNOFILE ≥ 65536, CAP_NET_BIND_SERVICE as the only
// capability, NoNewPrivileges, ProtectSystem=strict, ProtectHome,
// PrivateTmp, the config read-only, ExecReload sending SIGHUP to
// $MAINPID after validating the config, Restart=on-failure); its
// ExecStart and ExecStartPre command lines are ones the binary accepts;
// `systemd-analyze verify` accepts it without a single warning; and
// `systemd-analyze security --offline` rates its exposure at most 2.0
// ("OK"). systemd-analyze comes with systemd, which `make test` installs;
// the test is skipped only where systemd cannot exist (not Linux).
func TestSystemdUnit(t *testing.T) {
	u := unitKeys(t, unitFile)
	svc := u["Service"]
	one := func(k string) string {
		if len(svc[k]) != 1 {
			t.Errorf("[Service] %s: %d values, want 1", k, len(svc[k]))
			return ""
		}
		return svc[k][0]
	}
	for k, want := range map[string]string{
		"NoNewPrivileges":       "yes",
		"ProtectSystem":         "strict",
		"ProtectHome":           "yes",
		"PrivateTmp":            "yes",
		"AmbientCapabilities":   "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
		"Restart":               "on-failure",
		"User":                  "dynamic-proxy",
		"ReadOnlyPaths":         "/etc/dynamic-proxy",
		"KillSignal":            "SIGTERM",
	} {
		if got := one(k); got != want {
			t.Errorf("[Service] %s = %q, want %q", k, got, want)
		}
	}
	if n, err := strconv.Atoi(one("LimitNOFILE")); err != nil || n < 65536 {
		t.Errorf("LimitNOFILE = %q, want at least 65536", svc["LimitNOFILE"])
	}
	reload := svc["ExecReload"]
	if len(reload) == 0 || !regexp.MustCompile(`^(/bin/|/usr/bin/)?kill -HUP \$MAINPID$`).MatchString(reload[len(reload)-1]) {
		t.Errorf("ExecReload = %q; want it to end with kill -HUP $MAINPID", reload)
	}
	if u["Install"]["WantedBy"] == nil {
		t.Error("no [Install] WantedBy")
	}

	// The command lines are ones the binary accepts: run them on a good
	// config (validate) and check the flags parse.
	cfg := harness.WriteConfig(t, server("")+noHealth+tcpRule("web", harness.FreePort(t), "a=127.0.0.1:9"))
	for _, k := range []string{"ExecStartPre", "ExecReload", "ExecStart"} {
		for _, line := range svc[k] {
			f := strings.Fields(line)
			if !strings.HasSuffix(f[0], "/dynamic-proxy") {
				continue
			}
			args := f[1:]
			for i := range args {
				if args[i] == "/etc/dynamic-proxy/config.toml" {
					args[i] = cfg
				}
			}
			if k == "ExecStart" {
				args = append(args, "--validate") // do not serve; only parse the flags and the config
			}
			if out, err := exec.Command(binary, args...).CombinedOutput(); err != nil {
				t.Errorf("%s=%s: %v\n%s", k, line, err, out)
			}
		}
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if runtime.GOOS != "linux" {
			t.Skip("systemd-analyze needs Linux")
		}
		t.Fatal("systemd-analyze is missing: install systemd (make test does)")
	}
	// Verify a copy whose binary path exists here.
	dir := t.TempDir()
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "dynamic-proxy.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/dynamic-proxy", binary)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err = exec.Command(analyze, "security", "--offline=yes", "--threshold=20", unit).CombinedOutput()
	last := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(last, '\n'); i >= 0 {
		last = last[i+1:]
	}
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 (%v):\n%s", err, out)
	}
	t.Logf("systemd-analyze verify: clean; security: %s", last)
}
