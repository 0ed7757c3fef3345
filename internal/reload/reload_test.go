package reload

import (
	"bytes"
	"context"
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

func TestReloadSkipsRepeatedInvalidContent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	eng := engine.New(log)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	defer eng.Shutdown(context.Background())
	r := &Reloader{Engine: eng, Path: path, Log: log}
	r.Seed(cfg.Raw)

	if err := r.Reload("file", true); err != nil {
		t.Fatalf("unchanged content: %v", err)
	}
	if _, v := eng.Config(); v != 1 {
		t.Fatalf("unchanged content reloaded: version %d", v)
	}
	os.WriteFile(path, []byte("[server\n"), 0o644)
	if err := r.Reload("file", true); err == nil {
		t.Fatal("invalid content applied")
	}
	// The same invalid content again (another file in the directory
	// changed): not re-read and re-logged on every event.
	if err := r.Reload("file", true); err != nil {
		t.Fatalf("repeated invalid content: %v", err)
	}
	if n := strings.Count(logs.String(), "reload failed"); n != 1 {
		t.Fatalf("%d failure logs, want 1:\n%s", n, logs.String())
	}
	// SIGHUP always tries.
	if err := r.Reload("signal", false); err == nil {
		t.Fatal("invalid content applied on signal")
	}
	os.WriteFile(path, []byte(good+"\n# edited\n"), 0o644)
	if err := r.Reload("file", true); err != nil {
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
