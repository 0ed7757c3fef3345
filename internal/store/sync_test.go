package store

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
)

// logRec records log lines and lets a test wait for one.
type logRec struct {
	mu     sync.Mutex
	lines  []string
	notify chan struct{}
}

func newLogRec() *logRec { return &logRec{notify: make(chan struct{})} }

func (l *logRec) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRec) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRec) WithGroup(string) slog.Handler            { return l }
func (l *logRec) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	close(l.notify)
	l.notify = make(chan struct{})
	l.mu.Unlock()
	return nil
}

// wait returns the first line from index from on containing every sub,
// and the index after it.
func (l *logRec) wait(t *testing.T, from int, subs ...string) (string, int) {
	t.Helper()
	timeout := time.After(deadline)
	for {
		l.mu.Lock()
		lines, ch := l.lines, l.notify
		l.mu.Unlock()
		for i := from; i < len(lines); i++ {
			ok := true
			for _, s := range subs {
				ok = ok && strings.Contains(lines[i], s)
			}
			if ok {
				return lines[i], i + 1
			}
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("no log line with %q within %v; log:\n%s", subs, deadline, strings.Join(lines, "\n"))
		}
	}
}

func (l *logRec) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

// syncFixture is a Syncer whose applied snapshots arrive on a channel.
type syncFixture struct {
	y       *Syncer
	logs    *logRec
	applied chan *Snapshot
	stop    func()
}

func newSyncer(t *testing.T, url, cache string) *syncFixture {
	t.Helper()
	f := &syncFixture{logs: newLogRec(), applied: make(chan *Snapshot, 100)}
	f.y = &Syncer{Store: open(t, url, "fleet:"), Log: slog.New(f.logs), CacheFile: cache, Resync: 5 * time.Second,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		ApplyState: func(s *Snapshot, source string) error { f.applied <- s; return nil }}
	return f
}

func (f *syncFixture) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.y.Run(ctx) }()
	var once sync.Once
	f.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(f.stop)
}

// next waits for the next applied snapshot.
func (f *syncFixture) next(t *testing.T) *Snapshot {
	t.Helper()
	select {
	case s := <-f.applied:
		return s
	case <-time.After(deadline):
		t.Fatalf("no snapshot applied within %v; log:\n%s", deadline, strings.Join(f.logs.lines, "\n"))
		return nil
	}
}

func TestSyncerFollowsRedis(t *testing.T) {
	srv := redistest.Start(t)
	w := open(t, srv.URL(), "fleet:")
	ctx := context.Background()
	cache := filepath.Join(t.TempDir(), "cache.json")
	f := newSyncer(t, srv.URL(), cache)
	if snap, _ := f.y.Start(ctx); snap == nil || snap.Version != 0 || !f.y.Connected() {
		t.Fatalf("start: %+v connected %v", snap, f.y.Connected())
	}
	f.run(t)
	f.logs.wait(t, 0, "redis: subscribed and resynced")

	start := time.Now()
	if _, _, err := w.AddBackend(ctx, "web", "x", "127.0.0.1:9001", 1, 0); err != nil {
		t.Fatal(err)
	}
	snap := f.next(t)
	t.Logf("registration applied %v after the add (pub/sub)", time.Since(start))
	if ids(snap.Backends) != "web/x@127.0.0.1:9001" {
		t.Fatalf("applied %s", ids(snap.Backends))
	}

	// A TTL ends a registration with no event from anyone: the syncer reads
	// again at the expiry.
	if _, _, err := w.AddBackend(ctx, "web", "short", "127.0.0.1:9002", 1, time.Second); err != nil {
		t.Fatal(err)
	}
	if got := ids(f.next(t).Backends); got != "web/short@127.0.0.1:9002,web/x@127.0.0.1:9001" {
		t.Fatalf("applied %s", got)
	}
	added := time.Now()
	snap = f.next(t)
	t.Logf("expired registration removed %v after it was added with ttl 1s", time.Since(added))
	if ids(snap.Backends) != "web/x@127.0.0.1:9001" {
		t.Fatalf("after expiry: %s", ids(snap.Backends))
	}

	// Bad entries are logged once, naming their key; the rest applies.
	w.rdb.HSet(ctx, "fleet:backends:web", "broken", "not json")
	if _, _, err := w.AddBackend(ctx, "web", "y", "127.0.0.1:9003", 1, 0); err != nil {
		t.Fatal(err)
	}
	if got := ids(f.next(t).Backends); got != "web/x@127.0.0.1:9001,web/y@127.0.0.1:9003" {
		t.Fatalf("applied %s", got)
	}
	f.logs.wait(t, 0, "rejected an entry", "key=fleet:backends:web", "field=broken")
	if _, _, err := w.AddBackend(ctx, "web", "z", "127.0.0.1:9004", 1, 0); err != nil {
		t.Fatal(err)
	}
	last := f.next(t)
	if n := f.logs.count("field=broken"); n != 1 {
		t.Errorf("the bad entry was logged %d times, want once", n)
	}
	// Once Run has returned, the cache holds exactly what was applied last.
	f.stop()
	c, err := readCache(cache, "fleet:")
	if err != nil || c.State.Version != last.Version || ids(c.State.Backends) != ids(last.Backends) {
		t.Fatalf("cache %+v %v, want version %d %s", c.State, err, last.Version, ids(last.Backends))
	}
}

// TestSyncerSurvivesRedisRestart: Redis killed, a change made while the
// syncer is cut off, Redis back: the change arrives; nothing older is
// applied over what was.
func TestSyncerSurvivesRedisRestart(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	ctx := context.Background()
	f := newSyncer(t, srv.URL(), "")
	f.y.Start(ctx)
	f.run(t)
	_, at := f.logs.wait(t, 0, "redis: subscribed and resynced")
	w := open(t, srv.URL(), "fleet:")
	if _, _, err := w.AddBackend(ctx, "web", "x", "127.0.0.1:9001", 1, 0); err != nil {
		t.Fatal(err)
	}
	before := f.next(t)

	srv.Kill()
	_, at = f.logs.wait(t, at, "redis: unreachable; traffic continues on the last known state")
	if f.y.Connected() {
		t.Fatal("Connected() while Redis is down")
	}
	if a := f.y.Applied(); a != before {
		t.Fatal("the applied state changed while Redis was down")
	}
	srv.Restart()
	// The change is made before the syncer is back (it retries every
	// 200ms at most): it must still arrive.
	if _, _, err := w.AddBackend(ctx, "web", "late", "127.0.0.1:9002", 1, 0); err != nil {
		t.Fatal(err)
	}
	after := f.next(t)
	if ids(after.Backends) != "web/late@127.0.0.1:9002,web/x@127.0.0.1:9001" || after.Epoch != before.Epoch {
		t.Fatalf("after restart: %s epoch %s (was %s)", ids(after.Backends), after.Epoch, before.Epoch)
	}
	f.logs.wait(t, at, "redis: reachable again; resynced")
	select {
	case s := <-f.applied:
		t.Fatalf("an extra snapshot was applied: version %d", s.Version)
	default:
	}
}

// TestSyncerStartsFromCache: Redis down at start-up → the cached state,
// then Redis back with the same data → nothing re-applied (not newer), and
// later changes do apply.
func TestSyncerStartsFromCache(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	ctx := context.Background()
	cache := filepath.Join(t.TempDir(), "cache.json")
	w := open(t, srv.URL(), "fleet:")
	if _, _, err := w.AddBackend(ctx, "web", "x", "127.0.0.1:9001", 1, 0); err != nil {
		t.Fatal(err)
	}
	first := newSyncer(t, srv.URL(), cache)
	if snap, _ := first.y.Start(ctx); snap == nil || len(snap.Backends) != 1 {
		t.Fatalf("first start: %+v", snap)
	}
	srv.Kill()

	f := newSyncer(t, srv.URL(), cache)
	snap, _ := f.y.Start(ctx)
	if snap == nil || ids(snap.Backends) != "web/x@127.0.0.1:9001" || f.y.Connected() {
		t.Fatalf("start from cache: %+v connected %v", snap, f.y.Connected())
	}
	f.logs.wait(t, 0, "unreachable at start-up; serving the file config and the cached dynamic state", "cache_file="+cache)

	f.run(t)
	srv.Restart()
	f.logs.wait(t, 0, "redis: reachable again; resynced")
	select {
	case s := <-f.applied:
		t.Fatalf("re-applied a snapshot that is not newer: version %d", s.Version)
	default:
	}
	if _, err := w.RemoveBackend(ctx, "web", "x"); err != nil {
		t.Fatal(err)
	}
	if got := f.next(t); len(got.Backends) != 0 {
		t.Fatalf("after remove: %s", ids(got.Backends))
	}

	// A damaged or foreign cache is not used.
	cache = filepath.Join(t.TempDir(), "other.json")
	os.WriteFile(cache, []byte("{"), 0o600)
	if _, err := readCache(cache, "fleet:"); err == nil {
		t.Fatal("damaged cache accepted")
	}
	good, _ := json.Marshal(cacheFile{Prefix: "other:", State: &Snapshot{}})
	os.WriteFile(cache, good, 0o600)
	if _, err := readCache(cache, "fleet:"); err == nil || !strings.Contains(err.Error(), `key_prefix "other:"`) {
		t.Fatalf("foreign cache: %v", err)
	}
	bad, _ := json.Marshal(cacheFile{Prefix: "fleet:", State: &Snapshot{Backends: []Registration{{Rule: "web", ID: "x", Address: "nowhere", Weight: 1}}}})
	os.WriteFile(cache, bad, 0o600)
	if _, err := readCache(cache, "fleet:"); err == nil || !strings.Contains(err.Error(), "invalid address") {
		t.Fatalf("cache with a bad backend: %v", err)
	}
}

func TestSyncerFollowsConfig(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	w := open(t, srv.URL(), "fleet:")
	v1, err := w.PushConfig(ctx, []byte("# one\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	f := newSyncer(t, srv.URL(), filepath.Join(t.TempDir(), "c.json"))
	f.y.WatchConfig = true
	configs := make(chan *StoredConfig, 10)
	f.y.ApplyConfig = func(c *StoredConfig) { configs <- c }
	_, sc := f.y.Start(ctx)
	if sc == nil || sc.Version != v1 || string(sc.TOML) != "# one\n" {
		t.Fatalf("start: %+v", sc)
	}
	f.run(t)
	f.logs.wait(t, 0, "redis: subscribed and resynced")
	v2, err := w.PushConfig(ctx, []byte("# two\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-configs:
		if c.Version != v2 || string(c.TOML) != "# two\n" {
			t.Fatalf("got %+v", c)
		}
	case <-time.After(deadline):
		t.Fatal("the new config did not arrive")
	}
	c, err := readCache(f.y.CacheFile, "fleet:")
	if err != nil || c.Config == nil || c.Config.Version != v2 || c.Config.TOML != "# two\n" {
		t.Fatalf("cached config %+v %v", c, err)
	}
}

// TestResyncHealsMissedEvent: a change whose announcement never came (here
// written without one) is applied at the next periodic resync.
func TestResyncHealsMissedEvent(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	f := newSyncer(t, srv.URL(), "")
	f.y.Resync = 300 * time.Millisecond
	f.y.Start(ctx)
	f.run(t)
	f.logs.wait(t, 0, "redis: subscribed and resynced")
	w := open(t, srv.URL(), "fleet:")
	start := time.Now()
	v := w.rdb.Incr(ctx, "fleet:version").Val()
	w.rdb.HSet(ctx, "fleet:backends:web", "quiet", fmt.Sprintf(`{"address":"127.0.0.1:9009","weight":1,"expires_ms":0,"version":%d}`, v))
	w.rdb.SAdd(ctx, "fleet:rules", "web")
	snap := f.next(t)
	t.Logf("unannounced change applied %v later (resync every %v)", time.Since(start), f.y.Resync)
	if ids(snap.Backends) != "web/quiet@127.0.0.1:9009" || snap.Version != v {
		t.Fatalf("applied %s at version %d", ids(snap.Backends), snap.Version)
	}
}

// TestSyncerRetriesOftenAfterLongOutage: with the default backoff, however
// many attempts an outage takes, the wait between two never grows past
// DefaultMaxBackoff (500ms), so an instance is back on Redis about half a
// second after Redis is, and a change made then reaches it at once. (With
// the earlier 5s cap, the fifth wait was 1.6s and a 4s outage's first
// change took 2.2s.)
func TestSyncerRetriesOftenAfterLongOutage(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	ctx := context.Background()
	f := newSyncer(t, srv.URL(), "")
	f.y.MinBackoff, f.y.MaxBackoff = 0, 0 // the defaults
	f.y.Start(ctx)
	f.run(t)
	f.logs.wait(t, 0, "redis: subscribed and resynced")
	w := open(t, srv.URL(), "fleet:")
	if _, _, err := w.AddBackend(ctx, "web", "x", "127.0.0.1:9001", 1, 0); err != nil {
		t.Fatal(err)
	}
	f.next(t)

	srv.Kill()
	var waits []string
	at := 0
	for len(waits) < 6 {
		var line string
		line, at = f.logs.wait(t, at, "redis: ", "unreachable", "retry_in=")
		waits = append(waits, line[strings.Index(line, "retry_in=")+len("retry_in="):])
	}
	if got := strings.Join(waits, " "); !strings.HasPrefix(got, "100ms 200ms 400ms 500ms 500ms 500ms") {
		t.Fatalf("waits between attempts while Redis is down: %s, want 100ms 200ms 400ms then 500ms each", got)
	}
	srv.Restart()
	start := time.Now()
	if _, _, err := w.AddBackend(ctx, "web", "late", "127.0.0.1:9002", 1, 0); err != nil {
		t.Fatal(err)
	}
	for {
		if s := f.next(t); strings.Contains(ids(s.Backends), "web/late@") {
			break
		}
	}
	t.Logf("the first change after an outage of %d attempts reached the syncer %v after it was made", len(waits), time.Since(start))
}
