package e2e

// The first run: the README's quick start on the shipped config.toml while
// another program (a Prometheus server, say) holds 127.0.0.1:9090, and the
// one error line an occupied metrics or admin port gives.

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// holdTCP listens on addr until the test ends. A port some other program
// already holds is held just the same, so EADDRINUSE is not a failure.
func holdTCP(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	switch {
	case err == nil:
		t.Cleanup(func() { ln.Close() })
	case errors.Is(err, syscall.EADDRINUSE):
		t.Logf("%s is already held by another program", addr)
	default:
		t.Fatal(err)
	}
}

// skipUnlessFree skips the test when one of the fixed ports the quick start
// uses is taken on this machine: the test runs the shipped config as is.
func skipUnlessFree(t *testing.T, tcp, udp []string) {
	t.Helper()
	var busy []string
	for _, a := range tcp {
		if ln, err := net.Listen("tcp", a); err != nil {
			busy = append(busy, "tcp "+a)
		} else {
			ln.Close()
		}
	}
	for _, a := range udp {
		if pc, err := net.ListenPacket("udp", a); err != nil {
			busy = append(busy, "udp "+a)
		} else {
			pc.Close()
		}
	}
	if len(busy) > 0 {
		t.Skipf("the shipped config.toml's ports are taken on this machine: %s", strings.Join(busy, ", "))
	}
}

// buildEcho builds tools/echo, the quick start's backends and client.
func buildEcho(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "echo")
	build := exec.Command("go", "build", "-o", bin, "../../tools/echo")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./tools/echo: %v\n%s", err, out)
	}
	return bin
}

// startEchoTool runs the echo tool as a backend (what `make echo` runs) and
// waits until it says it is listening. It is killed when the test ends.
func startEchoTool(t *testing.T, bin, listen, name string) {
	t.Helper()
	cmd := exec.Command(bin, "-listen", listen, "-name", name)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	up := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var seen []string
		for sc.Scan() {
			seen = append(seen, sc.Text())
			if strings.Contains(sc.Text(), "listening on "+listen) {
				up <- ""
				io.Copy(io.Discard, stderr)
				return
			}
		}
		up <- strings.Join(seen, "\n")
	}()
	select {
	case out := <-up:
		if out != "" {
			t.Fatalf("echo %s exited:\n%s", name, out)
		}
	case <-time.After(harness.Deadline):
		t.Fatalf("echo %s did not start within %v", name, harness.Deadline)
	}
}

// echoClient runs the quick start's client command and returns its output.
func echoClient(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("echo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fetchOK(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: harness.Deadline}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", url, resp.StatusCode, err, body)
	}
	return string(body)
}

// TestQuickStartBesidePrometheus is the README's quick start — the echo
// backends, `make run` (the binary on the shipped config.toml, unchanged),
// the TCP and UDP client commands, metrics, admin and Ctrl-C — while
// 127.0.0.1:9090 and :9091, the ports of a Prometheus server and a
// Pushgateway, are held.
func TestQuickStartBesidePrometheus(t *testing.T) {
	holdTCP(t, "127.0.0.1:9090")
	holdTCP(t, "127.0.0.1:9091")
	skipUnlessFree(t,
		[]string{"127.0.0.1:8000", "127.0.0.1:8070", "127.0.0.1:8071", "127.0.0.1:9001", "127.0.0.1:9002"},
		[]string{"127.0.0.1:8053", "127.0.0.1:9001", "127.0.0.1:9002"})
	echo := buildEcho(t)
	startEchoTool(t, echo, "127.0.0.1:9001", "web1")
	startEchoTool(t, echo, "127.0.0.1:9002", "web2")
	config, err := filepath.Abs("../../config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(config); err != nil {
		t.Fatal(err)
	}
	p := Start(t, config)
	if line := p.WaitLog("metrics listening"); !strings.Contains(line, "address=127.0.0.1:8070") {
		t.Errorf("metrics line %q, want address=127.0.0.1:8070", line)
	}
	if line := p.WaitLog("admin API listening"); !strings.Contains(line, "address=127.0.0.1:8071") {
		t.Errorf("admin line %q, want address=127.0.0.1:8071", line)
	}

	// TCP: round robin over web1 and web2.
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		got[echoClient(t, echo, "-dial", "127.0.0.1:8000", "-msg", "hi")] = true
	}
	if !got["hello from web1\nhi\n"] || !got["hello from web2\nhi\n"] {
		t.Errorf("two TCP clients got %v, want one answer from web1 and one from web2", got)
	}
	// UDP: the "dns" rule on port 8053.
	if out := echoClient(t, echo, "-dial", "127.0.0.1:8053", "-udp-dial", "-msg", "ping"); out != "web1: ping\n" && out != "web2: ping\n" {
		t.Errorf("UDP client got %q, want web1 or web2 answering \"ping\"", out)
	}
	if body := fetchOK(t, "http://127.0.0.1:8070/metrics"); !strings.Contains(body, `dynamic_proxy_requests_total{protocol="udp",rule="dns"} 1`) {
		t.Errorf("metrics do not count the UDP request:\n%s", body)
	}
	if body := fetchOK(t, "http://127.0.0.1:8071/api/v1/status"); !strings.Contains(body, `"dns"`) {
		t.Errorf("admin status does not list the dns rule:\n%s", body)
	}

	p.Signal(syscall.SIGINT) // Ctrl-C
	if code := p.Wait(); code != 0 {
		t.Errorf("exit %d after SIGINT", code)
	}
}

// TestObserveBindInUse: a metrics or admin address that is taken — the
// default one or one set in the file — stops start-up with one line that
// names the key to change, exit 1.
func TestObserveBindInUse(t *testing.T) {
	held := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln.Addr().String()
	}
	// rawConfig writes the config as is: without the harness's free
	// [metrics] and [admin] binds, the defaults apply.
	rawConfig := func(t *testing.T, toml string) string {
		p := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(p, []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := proxyConfig(harness.FreePort(t), "127.0.0.1:9", "")
	for _, tc := range []struct {
		name, key, addr, extra string
		hold                   func(t *testing.T) string
	}{
		{name: "metrics default", key: "metrics", addr: "127.0.0.1:8070"},
		{name: "admin default", key: "admin", addr: "127.0.0.1:8071", extra: "[metrics]\nbind = \"127.0.0.1:0\"\n"},
		{name: "metrics set", key: "metrics", hold: held, extra: "[metrics]\nbind = %q\n[admin]\nbind = \"\"\n"},
		{name: "admin set", key: "admin", hold: held, extra: "[metrics]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = %q\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, extra := tc.addr, tc.extra
			if tc.hold != nil {
				addr = tc.hold(t)
				extra = fmt.Sprintf(extra, addr)
			} else {
				holdTCP(t, addr)
			}
			line := startFails(t, "-c", rawConfig(t, base+extra))
			want := fmt.Sprintf("%s.bind %s: address already in use; set [%s] bind to another address", tc.key, addr, tc.key)
			if !strings.Contains(line, want) {
				t.Errorf("error line %q\nwant it to contain %q", line, want)
			}
		})
	}
}
