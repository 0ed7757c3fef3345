// Package harness runs the built dynamic-proxy binary for the end-to-end
// (test/e2e) and fault (test/faults) suites: it builds the binary, starts
// it on a config, follows its log so tests wait on events rather than
// sleeping, and stops it when the test ends. It also holds what every test
// that waits shares, unit tests included: Eventually (wait.go) and the
// Prometheus scraper (metrics.go).
package harness

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Deadline is the generous bound every wait in the suites uses.
const Deadline = 20 * time.Second

// Main is a suite's TestMain: it builds the binary into a temporary
// directory (with -race when the environment variable raceEnv is set),
// stores its path in *binary, runs the tests and exits with their status.
func Main(m *testing.M, suite, raceEnv string, binary *string) {
	dir, err := os.MkdirTemp("", "dp-"+suite+"-")
	if err != nil {
		panic(err)
	}
	*binary, err = Build(dir, os.Getenv(raceEnv) != "")
	if err != nil {
		fmt.Fprintln(os.Stderr, suite+": building the binary failed:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Build compiles cmd/dynamic-proxy (from a suite two levels below the
// module root) into dir, with -race when race is set, and returns its path.
func Build(dir string, race bool) (string, error) {
	return BuildVersion(dir, "dynamic-proxy", race, "")
}

// BuildVersion is Build into dir/name with internal/version.Version set
// to version by -ldflags -X (as the Makefile's LDFLAGS do; "": not set).
func BuildVersion(dir, name string, race bool, version string) (string, error) {
	bin := filepath.Join(dir, name)
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	if version != "" {
		args = append(args, "-ldflags", "-X github.com/dynamic-proxy/dynamic-proxy/internal/version.Version="+version)
	}
	build := exec.Command("go", append(args, "../../cmd/dynamic-proxy")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	return bin, build.Run()
}

// Proxy is a running dynamic-proxy process.
type Proxy struct {
	t      testing.TB
	Cmd    *exec.Cmd
	Config string // path of its config file

	mu     sync.Mutex
	lines  []string
	notify chan struct{}
	gone   chan struct{} // the process exited
	exited chan struct{} // the process exited and its log was read to the end
	err    error
}

// Launch runs argv (the binary, maybe under a wrapper such as prlimit) for
// the config at configPath without waiting for it to be ready. It is killed
// when the test ends if still running, and its log is shown if the test
// failed.
func Launch(t testing.TB, configPath string, argv ...string) *Proxy {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	// A pipe of our own rather than StderrPipe, which is closed when the
	// process exits: the process a binary upgrade starts inherits the
	// write end and logs on after the one started here has exited.
	stderr, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	p := &Proxy{t: t, Cmd: cmd, Config: configPath, notify: make(chan struct{}),
		gone: make(chan struct{}), exited: make(chan struct{})}
	err = cmd.Start()
	w.Close()
	if err != nil {
		stderr.Close()
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.gone)
	}()
	go func() {
		defer stderr.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.notify)
			p.notify = make(chan struct{})
			p.mu.Unlock()
		}
		<-p.gone
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.gone:
		default:
			cmd.Process.Kill()
			<-p.gone
		}
		select {
		case <-p.exited:
		case <-time.After(Deadline): // a process it started still holds the log
			stderr.Close()
			<-p.exited
		}
		// A race-built binary (E2E_RACE) reports a race on its stderr and
		// goes on: the test fails on it here, wherever the race was.
		if l := p.firstLine(raceReport); l >= 0 {
			t.Errorf("the proxy's race detector reported a data race (log line %d)", l+1)
		}
		if t.Failed() {
			log := p.Log()
			if len(log) > 20000 {
				log = "…" + log[len(log)-20000:]
			}
			t.Logf("proxy log:\n%s", log)
		}
	})
	return p
}

// raceReport starts the report of the race detector (-race).
const raceReport = "WARNING: DATA RACE"

// firstLine is the index of the first line logged that contains sub, -1
// when none does.
func (p *Proxy) firstLine(sub string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, l := range p.lines {
		if strings.Contains(l, sub) {
			return i
		}
	}
	return -1
}

// PID is the proxy's process id.
func (p *Proxy) PID() int { return p.Cmd.Process.Pid }

// Gone is closed when the process has exited (its log may still be read
// from a process it started: see Exited).
func (p *Proxy) Gone() <-chan struct{} { return p.gone }

// Exited is closed when the process has exited and its log was read to
// the end (the processes it started, by an upgrade, have exited too).
func (p *Proxy) Exited() <-chan struct{} { return p.exited }

// Log returns everything the process logged so far.
func (p *Proxy) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// Lines returns the log lines so far.
func (p *Proxy) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// NumLines is the number of log lines so far (a mark for WaitLogFrom).
func (p *Proxy) NumLines() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// Count is how many log lines so far contain every one of subs.
func (p *Proxy) Count(subs ...string) int {
	n := 0
	for _, l := range p.Lines() {
		if ContainsAll(l, subs) {
			n++
		}
	}
	return n
}

// WaitLog waits until a log line contains every one of subs and returns it.
func (p *Proxy) WaitLog(subs ...string) string {
	p.t.Helper()
	return p.WaitLogFrom(0, subs...)
}

// WaitLogFrom is WaitLog looking only at lines from index from on.
func (p *Proxy) WaitLogFrom(from int, subs ...string) string {
	p.t.Helper()
	deadline := time.After(Deadline)
	seen := from
	for {
		p.mu.Lock()
		lines, ch := p.lines, p.notify
		p.mu.Unlock()
		for ; seen < len(lines); seen++ {
			if ContainsAll(lines[seen], subs) {
				return lines[seen]
			}
		}
		select {
		case <-ch:
		case <-p.exited:
			all := p.Lines()
			for _, l := range all[min(seen, len(all)):] {
				if ContainsAll(l, subs) {
					return l
				}
			}
			p.t.Fatalf("proxy exited (%v) before logging %q", p.err, subs)
		case <-deadline:
			p.t.Fatalf("proxy did not log %q within %v", subs, Deadline)
		}
	}
}

// Signal sends sig to the process.
func (p *Proxy) Signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proxy) Wait() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(Deadline):
		p.t.Fatalf("proxy did not exit within %v", Deadline)
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return 0
}

// ContainsAll reports whether s contains every one of subs.
func ContainsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

var (
	metricsSection = regexp.MustCompile(`(?m)^\s*\[metrics\]`)
	adminSection   = regexp.MustCompile(`(?m)^\s*\[admin\]`)
	serverSection  = regexp.MustCompile(`(?m)^[ \t]*\[server\][^\n]*\n`)
	engineKey      = regexp.MustCompile(`(?m)^\s*engine\s*=`)
)

// EngineEnv names the environment variable that chooses the connection
// engine of every proxy the end-to-end tests start ([server] engine, set by
// WithFreeObservePorts): scripts/test.sh runs test/e2e once with the default
// and once with E2E_ENGINE=goroutine.
const EngineEnv = "E2E_ENGINE"

// Engine is the engine E2E_ENGINE asks for ("": the default).
func Engine() string { return os.Getenv(EngineEnv) }

// withEngine sets [server] engine to E2E_ENGINE in a config that does not
// choose one itself.
func withEngine(toml string) string {
	e := Engine()
	if e == "" || engineKey.MatchString(toml) {
		return toml
	}
	line := fmt.Sprintf("engine = %q\n", e)
	if loc := serverSection.FindStringIndex(toml); loc != nil {
		// An empty line just before [server] makes room for the key, so
		// that the lines below keep their numbers (tests check file:line).
		head := toml[:loc[0]]
		if h, ok := strings.CutSuffix(head, "\n\n"); ok {
			head = h + "\n"
		} else if head == "\n" {
			head = ""
		}
		return head + toml[loc[0]:loc[1]] + line + toml[loc[1]:]
	}
	return toml + "\n[server]\n" + line
}

// WithFreeObservePorts appends [metrics] and [admin] sections binding
// 127.0.0.1:0 to a config that has none of its own, so that proxies of
// several tests never collide on the default ports 8070 and 8071.
//
// It is also where the tests' configs get E2E_ENGINE's engine (withEngine).
func WithFreeObservePorts(toml string) string {
	toml = withEngine(toml)
	if !metricsSection.MatchString(toml) {
		toml += "\n[metrics]\nbind = \"127.0.0.1:0\"\n"
	}
	if !adminSection.MatchString(toml) {
		toml += "\n[admin]\nbind = \"127.0.0.1:0\"\n"
	}
	return toml
}

// WriteConfig writes a config (with WithFreeObservePorts) into a temp dir
// and returns its path.
func WriteConfig(t testing.TB, toml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(WithFreeObservePorts(toml)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// FreePort returns a port free for TCP and UDP on 127.0.0.1 a moment ago,
// below the usual ephemeral range so a TIME_WAIT socket cannot hold it.
func FreePort(t testing.TB) int {
	t.Helper()
	for i := 0; i < 1000; i++ {
		port := 20000 + int(time.Now().UnixNano()/1000%12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return port
	}
	t.Fatal("no free port")
	return 0
}

// Greeting dials addr and returns the first line the backend sends, or an
// error.
func Greeting(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, Deadline)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(Deadline))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

var addressRe = regexp.MustCompile(`address=(\S+)`)

// MetricsURL is the URL of the proxy's Prometheus endpoint.
func (p *Proxy) MetricsURL() string {
	p.t.Helper()
	m := addressRe.FindStringSubmatch(p.WaitLog("metrics listening"))
	if m == nil {
		p.t.Fatal("no address on the metrics line")
	}
	return "http://" + m[1] + "/metrics"
}

// AdminURL is the base URL of the admin API.
func (p *Proxy) AdminURL() string {
	p.t.Helper()
	m := addressRe.FindStringSubmatch(p.WaitLog("admin API listening"))
	if m == nil {
		p.t.Fatal("no address on the admin line")
	}
	return "http://" + m[1]
}
