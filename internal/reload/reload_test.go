package reload

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const good = `
[server]
tcp_bind = "127.0.0.1:0"
[health_check]
enabled = false
[[rules]]
name = "r"
[[rules.backends]]
id = "a"
address = "127.0.0.1:1"
`

// startReloader runs an engine on the config good, written to a file, and
// returns a Reloader for that file, the engine, the path and the log.
func startReloader(t *testing.T) (*Reloader, *engine.Engine, string, *bytes.Buffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	eng := engine.New(log)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Shutdown(context.Background()) })
	r := &Reloader{Engine: eng, Path: path, Log: log}
	r.Seed(cfg.Raw)
	return r, eng, path, logs
}

func TestReloadSkipsRepeatedInvalidContent(t *testing.T) {
	r, eng, path, logs := startReloader(t)

	if _, err := r.Reload("file", true); err != nil {
		t.Fatalf("unchanged content: %v", err)
	}
	if _, v := eng.Config(); v != 1 {
		t.Fatalf("unchanged content reloaded: version %d", v)
	}
	os.WriteFile(path, []byte("[server\ntcp_bind = \"127.0.0.1:0\"\n"), 0o644) // a syntax error, longer than config.MinSize
	if _, err := r.Reload("file", true); err == nil {
		t.Fatal("invalid content applied")
	}
	// The same invalid content again (another file in the directory
	// changed): not re-read and re-logged on every event.
	if _, err := r.Reload("file", true); err != nil {
		t.Fatalf("repeated invalid content: %v", err)
	}
	if n := strings.Count(logs.String(), "reload failed"); n != 1 {
		t.Fatalf("%d failure logs, want 1:\n%s", n, logs.String())
	}
	// SIGHUP always tries.
	if _, err := r.Reload("signal", false); err == nil {
		t.Fatal("invalid content applied on signal")
	}
	os.WriteFile(path, []byte(good+"\n# edited\n"), 0o644)
	if _, err := r.Reload("file", true); err != nil {
		t.Fatal(err)
	}
	if _, v := eng.Config(); v != 2 {
		t.Fatalf("good edit not applied: version %d", v)
	}
}

func TestWatchDebouncesBursts(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	os.WriteFile(path, []byte("a"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	fired := make(chan struct{}, 16)
	if err := Watch(ctx, path, 300*time.Millisecond, func() { calls.Add(1); fired <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ { // a burst of writes well inside the debounce
		os.WriteFile(path, []byte(strings.Repeat("x", i)), 0o644)
	}
	select {
	case <-fired:
	case <-time.After(20 * time.Second):
		t.Fatal("no reload after a burst of writes")
	}
	// A rename over the file (editors, config management) is seen too.
	tmp := path + ".tmp"
	os.WriteFile(tmp, []byte("renamed"), 0o644)
	os.Rename(tmp, path)
	select {
	case <-fired:
	case <-time.After(20 * time.Second):
		t.Fatal("no reload after a rename over the file")
	}
	if n := calls.Load(); n > 3 {
		t.Fatalf("%d reloads for two bursts", n)
	}
	cancel()
}

// TestWatchIgnoresNeighbours: writes to another file in the config's
// directory (the proxy's own log, say) schedule no reload; a write to the
// config file does, once.
func TestWatchIgnoresNeighbours(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	logPath := filepath.Join(dir, "proxy.log")
	os.WriteFile(path, []byte("a"), 0o644)
	type seen struct {
		name     string
		relevant bool
	}
	events := make(chan seen, 1024)
	eventSeen = func(name string, relevant bool) { events <- seen{name, relevant} }
	defer func() { eventSeen = nil }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fired := make(chan string, 16)
	if err := Watch(ctx, path, 50*time.Millisecond, func() {
		b, _ := os.ReadFile(path)
		fired <- string(b)
	}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		os.WriteFile(logPath, []byte(strings.Repeat("log line\n", i+1)), 0o644)
	}
	// Wait until the watch has seen the neighbour's events and taken them
	// as not the config's.
	deadline := time.After(20 * time.Second)
	for got := false; !got; {
		select {
		case e := <-events:
			if e.name == logPath {
				if e.relevant {
					t.Fatalf("an event on %s counted as a change to the config", e.name)
				}
				got = true
			}
		case <-deadline:
			t.Fatal("no event for the neighbour file")
		}
	}
	os.WriteFile(path, []byte("b"), 0o644)
	select {
	case content := <-fired:
		if content != "b" {
			t.Fatalf("reload ran on content %q, want the config write %q", content, "b")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no reload after a write to the config")
	}
	cancel()
	for {
		select {
		case e := <-events:
			if e.name == logPath && e.relevant {
				t.Fatalf("an event on %s counted as a change to the config", e.name)
			}
		default:
			if len(fired) != 0 {
				t.Fatalf("%d more reloads; want one", len(fired))
			}
			return
		}
	}
}

// TestWatchWaitsForTheWriteToSettle: a file written in pieces is reloaded
// once, on its whole content, never on a part of it, also when the rest
// arrives after the burst's quiet period (here: during the first read, as
// a slow writer's next piece would).
func TestWatchWaitsForTheWriteToSettle(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	os.WriteFile(path, []byte("old"), 0o644)
	half, whole := strings.Repeat("a", 500), strings.Repeat("a", 500)+strings.Repeat("b", 500)
	reads := 0
	settleRead = func(data []byte) {
		reads++
		if reads == 1 {
			if string(data) != half {
				t.Errorf("first read %d bytes, want the first piece's %d", len(data), len(half))
			}
			os.WriteFile(path, []byte(whole), 0o644) // the writer's second piece
		}
	}
	defer func() { settleRead = nil }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fired := make(chan string, 16)
	if err := Watch(ctx, path, 100*time.Millisecond, func() {
		b, _ := os.ReadFile(path)
		fired <- string(b)
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(half), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case content := <-fired:
		if content != whole {
			t.Fatalf("reloaded on %d bytes, want the whole %d", len(content), len(whole))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no reload")
	}
}

// TestWatchedNamesFollowsConfigMapLinks: with a Kubernetes ConfigMap's
// layout (config.toml -> ..data/config.toml, ..data -> ..2026_01/), the
// swap of ..data counts, a neighbour does not.
func TestWatchedNamesFollowsConfigMapLinks(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "..2026_01"), 0o755)
	os.WriteFile(filepath.Join(dir, "..2026_01", "config.toml"), []byte("a"), 0o644)
	os.Symlink("..2026_01", filepath.Join(dir, "..data"))
	path := filepath.Join(dir, "config.toml")
	os.Symlink(filepath.Join("..data", "config.toml"), path)
	names, dirs := watchedNames(path)
	for _, want := range []string{path, filepath.Join(dir, "..data"), filepath.Join(dir, "..data", "config.toml"), filepath.Join(dir, "..2026_01", "config.toml")} {
		if !names[want] {
			t.Errorf("%s is not watched: %v", want, names)
		}
	}
	if names[filepath.Join(dir, "proxy.log")] || names[dir] {
		t.Errorf("a neighbour or the directory itself is watched: %v", names)
	}
	if !dirs[dir] {
		t.Errorf("the config's directory is not watched: %v", dirs)
	}
}

// TestReloadBlankFile: a blank file from the watch is taken as not yet
// written (logged once, nothing applied); SIGHUP on it is refused with the
// reason. Both keep the running config.
func TestReloadBlankFile(t *testing.T) {
	r, eng, path, logs := startReloader(t)
	// A failed read first: it must leave nothing that makes a later blank
	// file be skipped for the wrong reason.
	os.Remove(path)
	if _, err := r.Reload("file", true); err == nil {
		t.Fatal("a missing file reloaded")
	}
	for _, blank := range []string{"", "\n  \n", "# only a comment\n"} {
		os.WriteFile(path, []byte(blank), 0o644)
		if _, err := r.Reload("file", true); err != nil {
			t.Fatalf("blank file %q from the watch: %v", blank, err)
		}
	}
	if n := strings.Count(logs.String(), "config file is empty"); n != 1 {
		t.Fatalf("%d 'empty' lines for three blank writes in a row; want 1:\n%s", n, logs.String())
	}
	// Shorter than any config can be: not written yet either.
	os.WriteFile(path, []byte("[[rules]]\n"), 0o644)
	if _, err := r.Reload("file", true); err != nil {
		t.Fatalf("a file shorter than any config from the watch: %v", err)
	}
	if !strings.Contains(logs.String(), "config file is shorter than any config") {
		t.Fatalf("no line for the short file:\n%s", logs.String())
	}
	// Cut short mid-line, as a full disk leaves it: not written yet either.
	os.WriteFile(path, []byte(strings.TrimSuffix(good, "\n")[:len(good)-8]), 0o644)
	if _, err := r.Reload("file", true); err != nil {
		t.Fatalf("a file cut short from the watch: %v", err)
	}
	if !strings.Contains(logs.String(), "does not end with a newline") {
		t.Fatalf("no line for the file cut short:\n%s", logs.String())
	}
	os.WriteFile(path, nil, 0o644)
	_, err := r.Reload("signal", false)
	if err == nil || !strings.Contains(err.Error(), "no rule") {
		t.Fatalf("SIGHUP on a blank file: %v", err)
	}
	if got, v := eng.Config(); v != 1 || len(got.Rules) != 1 {
		t.Fatalf("the running config changed: version %d", v)
	}
	if n := len(eng.Listeners()); n != 1 {
		t.Fatalf("%d listeners after the blank file; want the old one", n)
	}
}

// TestReloadReportsThePlan: the change Reload returns is the engine's, and
// its summary line carries it.
func TestReloadReportsThePlan(t *testing.T) {
	r, _, path, logs := startReloader(t)
	next := good + "weight = 4\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:2\"\n"
	os.WriteFile(path, []byte(next), 0o644)
	ch, err := r.Reload("signal", false)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ch.BackendsAdded, ",") != "r/b" || strings.Join(ch.BackendsReweighted, ",") != "r/a" || strings.Join(ch.RulesChanged, ",") != "r" {
		t.Fatalf("change %+v, want r changed, r/b added, r/a re-weighted", ch)
	}
	for _, want := range []string{`msg="config reloaded" trigger=signal version=2 changes="rules +0 -0 ~1; backends +1 -0; listeners +0 -0"`,
		"rules_changed=[r] backends_added=[r/b] backends_reweighted=[r/a]"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, logs.String())
		}
	}
}

// TestPreviewChangesNothing: a preview of the file or of given content
// reports the plan and leaves the engine, the log and the next reload as
// they were; an instance merging from Redis refuses given content.
func TestPreviewChangesNothing(t *testing.T) {
	r, eng, path, logs := startReloader(t)
	logs.Reset() // start-up's lines
	next := good + "weight = 4\n"
	ch, err := r.Preview([]byte(next))
	if err != nil || strings.Join(ch.BackendsReweighted, ",") != "r/a" {
		t.Fatalf("preview of content: %+v %v", ch, err)
	}
	if ch, err := r.Preview(nil); err != nil || !ch.Empty() {
		t.Fatalf("preview of the running file: %+v %v", ch, err)
	}
	if _, v := eng.Config(); v != 1 || logs.Len() != 0 {
		t.Fatalf("a preview changed the engine (version %d) or logged:\n%s", v, logs.String())
	}
	if _, err := r.Preview([]byte("[server]\nnope = 1\n")); err == nil {
		t.Error("an invalid config previewed")
	}
	os.WriteFile(path, []byte(next), 0o644)
	if ch, err := r.Reload("file", true); err != nil || strings.Join(ch.BackendsReweighted, ",") != "r/a" {
		t.Errorf("the reload after the previews: %+v %v", ch, err)
	}
	r.Load = config.Load
	if _, err := r.Preview([]byte(next)); !errors.Is(err, ErrPreviewMerged) {
		t.Errorf("content previewed on a merging instance: %v", err)
	}
}
