package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const deadline = redistest.Deadline

// open returns a Store on srv with a prefix of its own.
func open(t *testing.T, url, prefix string) *Store {
	t.Helper()
	s, err := Open(Options{URL: url, KeyPrefix: prefix, ConnectionTimeout: 2 * time.Second, CommandTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func snapshot(t *testing.T, s *Store) *Snapshot {
	t.Helper()
	snap, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func ids(rs []Registration) string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Rule+"/"+r.ID+"@"+r.Address)
	}
	return strings.Join(out, ",")
}

func TestRegistrationsAndVersions(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "t1:")
	ctx := context.Background()

	empty := snapshot(t, s)
	if empty.Version != 0 || len(empty.Backends) != 0 || empty.Epoch == "" {
		t.Fatalf("fresh snapshot = %+v", empty)
	}
	v1, changed, err := s.AddBackend(ctx, "web", "a", "127.0.0.1:9001", 2, 0)
	if err != nil || !changed || v1 != 1 {
		t.Fatalf("add: v=%d changed=%v err=%v", v1, changed, err)
	}
	v2, _, err := s.AddBackend(ctx, "web", "b", "127.0.0.1:9002", 1, time.Minute)
	if err != nil || v2 != 2 {
		t.Fatalf("add b: v=%d err=%v", v2, err)
	}
	// A renewal with the same address and weight changes nothing.
	v3, changed, err := s.AddBackend(ctx, "web", "b", "127.0.0.1:9002", 1, time.Minute)
	if err != nil || changed || v3 != 2 {
		t.Fatalf("renew: v=%d changed=%v err=%v, want 2 false", v3, changed, err)
	}
	// A change of weight is a change.
	v4, changed, err := s.AddBackend(ctx, "web", "b", "127.0.0.1:9002", 3, time.Minute)
	if err != nil || !changed || v4 != 3 {
		t.Fatalf("reweight: v=%d changed=%v err=%v", v4, changed, err)
	}
	snap := snapshot(t, s)
	if got := ids(snap.Backends); got != "web/a@127.0.0.1:9001,web/b@127.0.0.1:9002" {
		t.Fatalf("backends = %s", got)
	}
	if snap.Version != 3 || snap.Epoch != empty.Epoch {
		t.Fatalf("version %d epoch %q, want 3 %q", snap.Version, snap.Epoch, empty.Epoch)
	}
	if b := snap.Backends[1]; b.Weight != 3 || b.Version != 3 || b.Expires.IsZero() || snap.NextExpiry != b.Expires {
		t.Fatalf("b = %+v next expiry %v", b, snap.NextExpiry)
	}
	if !snap.Newer(empty) || snap.Newer(snap) || empty.Newer(snap) {
		t.Fatal("Newer: a snapshot must be newer than an older version of its epoch only")
	}

	if _, err := s.RemoveBackend(ctx, "web", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveBackend(ctx, "web", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v, want ErrNotFound", err)
	}
	if got := ids(snapshot(t, s).Backends); got != "web/b@127.0.0.1:9002" {
		t.Fatalf("after remove: %s", got)
	}

	// Two prefixes on one Redis are two fleets.
	other := open(t, srv.URL(), "t2:")
	if snap := snapshot(t, other); len(snap.Backends) != 0 || snap.Version != 0 {
		t.Fatalf("other prefix sees %+v", snap)
	}
}

func TestAddRejectsBadInput(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "bad:")
	for _, c := range []struct {
		rule, id, addr string
		weight         int
		ttl            time.Duration
		want           string
	}{
		{"", "a", "127.0.0.1:1", 1, 0, "missing rule"},
		{"web", "", "127.0.0.1:1", 1, 0, "missing backend id"},
		{"web", "a", "127.0.0.1", 1, 0, "want host:port"},
		{"web", "a", "127.0.0.1:0", 1, 0, "port must be from 1"},
		{"web", "a", "127.0.0.1:1", 0, 0, "weight must be from 1"},
		{"web", "a", "127.0.0.1:1", 1, 10 * time.Millisecond, "ttl must be"},
	} {
		_, _, err := s.AddBackend(context.Background(), c.rule, c.id, c.addr, c.weight, c.ttl)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("add(%q,%q,%q,%d,%v) = %v, want %q", c.rule, c.id, c.addr, c.weight, c.ttl, err, c.want)
		}
	}
	if snap := snapshot(t, s); snap.Version != 0 {
		t.Fatalf("a refused add changed Redis: version %d", snap.Version)
	}
}

// TestTTLReap checks that an expired registration leaves every snapshot
// (with its state) as one new version announced on the channel, and that
// a renewal keeps it.
func TestTTLReap(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "ttl:")
	ctx := context.Background()
	ev, err := s.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	if _, _, err := s.AddBackend(ctx, "web", "short", "127.0.0.1:9001", 1, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AddBackend(ctx, "web", "kept", "127.0.0.1:9002", 1, 0); err != nil {
		t.Fatal(err)
	}
	tru := true
	if _, err := s.SetState(ctx, State{Rule: "web", ID: "short", Draining: &tru}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1 backend web/short", "2 backend web/kept", "3 state web/short"} {
		if got, _, err := ev.Next(ctx, deadline); err != nil || got != want {
			t.Fatalf("event %q %v, want %q", got, err, want)
		}
	}
	snap := snapshot(t, s)
	if len(snap.Backends) != 2 || len(snap.States) != 1 || snap.NextExpiry.IsZero() {
		t.Fatalf("before expiry: %+v", snap)
	}
	// Wait (by Redis's clock, which the expiry is in) until it has passed.
	until := snap.NextExpiry.Sub(snap.Now)
	timer := time.NewTimer(until + 10*time.Millisecond)
	<-timer.C
	snap = snapshot(t, s)
	if got := ids(snap.Backends); got != "web/kept@127.0.0.1:9002" || len(snap.States) != 0 {
		t.Fatalf("after expiry: backends %s states %+v", got, snap.States)
	}
	if snap.Version != 4 {
		t.Fatalf("the reap is one change: version %d, want 4", snap.Version)
	}
	if got, _, err := ev.Next(ctx, deadline); err != nil || got != "4 expired web/short" {
		t.Fatalf("event %q %v, want the expiry", got, err)
	}
	if again := snapshot(t, s); again.Version != 4 {
		t.Fatalf("nothing to reap, yet version moved to %d", again.Version)
	}
}

func TestStateMerges(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "st:")
	ctx := context.Background()
	tru, fls := true, false
	if _, err := s.SetState(ctx, State{Rule: "web", ID: "a", Weight: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetState(ctx, State{Rule: "web", ID: "a", Draining: &tru}); err != nil {
		t.Fatal(err)
	}
	v, err := s.SetState(ctx, State{Rule: "web", ID: "a", Enabled: &fls})
	if err != nil {
		t.Fatal(err)
	}
	snap := snapshot(t, s)
	if len(snap.States) != 1 {
		t.Fatalf("states %+v", snap.States)
	}
	st := snap.States[0]
	if st.Weight != 7 || st.Draining == nil || !*st.Draining || st.Enabled == nil || *st.Enabled || st.Version != v {
		t.Fatalf("merged state = %+v (draining %v enabled %v), want weight 7, draining, disabled, version %d", st, st.Draining, st.Enabled, v)
	}
	if _, err := s.SetState(ctx, State{Rule: "web", ID: "a"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty change: %v", err)
	}
	if _, err := s.ResetState(ctx, "web", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ResetState(ctx, "web", "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second reset: %v", err)
	}
	if snap := snapshot(t, s); len(snap.States) != 0 {
		t.Fatalf("after reset: %+v", snap.States)
	}
}

// TestBadDataRejected writes broken entries straight into Redis: each is
// reported naming its key, and the rest still comes through.
func TestBadDataRejected(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "dp:")
	ctx := context.Background()
	if _, _, err := s.AddBackend(ctx, "web", "good", "127.0.0.1:9001", 1, 0); err != nil {
		t.Fatal(err)
	}
	r := s.rdb
	r.HSet(ctx, "dp:backends:web", "notjson", "{oops")
	r.HSet(ctx, "dp:backends:web", "badaddr", `{"address":"nowhere","weight":1,"expires_ms":0,"version":5}`)
	r.HSet(ctx, "dp:backends:web", "badweight", `{"address":"127.0.0.1:1","weight":0,"expires_ms":0,"version":5}`)
	r.HSet(ctx, "dp:state:web", "good", `{"draining":"yes","version":6}`)
	snap := snapshot(t, s)
	if got := ids(snap.Backends); got != "web/good@127.0.0.1:9001" {
		t.Fatalf("backends %s", got)
	}
	want := []string{
		`redis key dp:backends:web field "badaddr": invalid address "nowhere"`,
		`redis key dp:backends:web field "badweight": weight must be from 1`,
		`redis key dp:backends:web field "notjson": invalid JSON "{oops"`,
		`redis key dp:state:web field "good": invalid JSON`,
	}
	if len(snap.Problems) != len(want) {
		t.Fatalf("problems %v", snap.Problems)
	}
	for i, w := range want {
		if !strings.HasPrefix(snap.Problems[i].String(), w) {
			t.Errorf("problem %d = %q, want prefix %q", i, snap.Problems[i], w)
		}
	}
}

func TestConfigPushAndShow(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "cfg:")
	ctx := context.Background()
	if c, err := s.Config(ctx); err != nil || c != nil {
		t.Fatalf("no config yet: %v %v", c, err)
	}
	v, err := s.PushConfig(ctx, []byte("[server]\n"), "me@host:/x.toml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Config(ctx)
	if err != nil || c == nil || c.Version != v || string(c.TOML) != "[server]\n" || c.Source != "me@host:/x.toml" || c.PushedAt.IsZero() {
		t.Fatalf("stored config %+v %v", c, err)
	}
	if snap := snapshot(t, s); snap.ConfigVersion != v || snap.Version != v {
		t.Fatalf("snapshot config version %d version %d, want %d", snap.ConfigVersion, snap.Version, v)
	}
	if got := c.Name("cfg:"); got != "redis:cfg:config@1" {
		t.Fatalf("name %q", got)
	}
}

// TestACLUserFromURL connects as a Redis 6 ACL user named in the URL, and
// checks that a wrong password is refused.
func TestACLUserFromURL(t *testing.T) {
	srv := redistest.Start(t)
	admin := open(t, srv.URL(), "acl:")
	ctx := context.Background()
	if err := admin.rdb.Do(ctx, "ACL", "SETUSER", "fleet", "on", ">s3cret", "~acl:*", "&acl:*", "+@read", "+@write", "+@scripting", "+@pubsub", "+ping", "+time").Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.rdb.Do(ctx, "ACL", "SETUSER", "default", "off").Err(); err != nil {
		t.Fatal(err)
	}
	good := open(t, "redis://fleet:s3cret@"+srv.Addr, "acl:")
	// The permissions docs/notes/redis.md lists are enough for everything.
	if _, _, err := good.AddBackend(ctx, "web", "a", "127.0.0.1:9001", 1, time.Minute); err != nil {
		t.Fatalf("as ACL user fleet: %v", err)
	}
	tru := true
	if _, err := good.SetState(ctx, State{Rule: "web", ID: "a", Draining: &tru}); err != nil {
		t.Fatal(err)
	}
	if _, err := good.PushConfig(ctx, []byte("#\n"), "t"); err != nil {
		t.Fatal(err)
	}
	if c, err := good.Config(ctx); err != nil || c == nil {
		t.Fatalf("config: %v %v", c, err)
	}
	if snap, err := good.Snapshot(ctx); err != nil || len(snap.Backends) != 1 || len(snap.States) != 1 {
		t.Fatalf("snapshot: %+v %v", snap, err)
	}
	ev, err := good.Subscribe(ctx)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	ev.Close()
	if _, err := good.RemoveBackend(ctx, "web", "a"); err != nil {
		t.Fatal(err)
	}
	// A key outside the user's pattern is refused: the user really is fleet.
	other := open(t, "redis://fleet:s3cret@"+srv.Addr, "other:")
	if _, _, err := other.AddBackend(ctx, "web", "a", "127.0.0.1:9001", 1, 0); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("outside its keys: %v, want an ACL refusal", err)
	}
	bad := open(t, "redis://fleet:wrong@"+srv.Addr, "acl:")
	if err := bad.Ping(ctx); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("wrong password: %v", err)
	}
	// The password key overrides the URL's.
	over, err := Open(Options{URL: "redis://fleet:wrong@" + srv.Addr, Password: "s3cret", KeyPrefix: "acl:"})
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	if err := over.Ping(ctx); err != nil {
		t.Fatalf("password key over the URL's: %v", err)
	}
}

func TestOpenOptions(t *testing.T) {
	s, err := Open(Options{URL: "rediss://u:p@cache.example:6390/3", DB: 0, PoolSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	o := s.rdb.(*redis.Client).Options()
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "cache.example" || o.Username != "u" || o.Password != "p" || o.DB != 3 || o.PoolSize != 7 || o.Addr != "cache.example:6390" {
		t.Fatalf("rediss options: tls %v user %q db %d pool %d addr %s", o.TLSConfig, o.Username, o.DB, o.PoolSize, o.Addr)
	}
	s2, err := Open(Options{URL: "redis://h/1", DB: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if o := s2.rdb.(*redis.Client).Options(); o.TLSConfig != nil || o.DB != 4 || o.Addr != "h:6379" {
		t.Fatalf("redis options: tls %v db %d addr %s", o.TLSConfig, o.DB, o.Addr)
	}
	s3, err := Open(Options{URL: "rediss+cluster://u:p@n1:7000,n2:7001", KeyPrefix: "{f}:", PoolSize: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if o := s3.rdb.(*redis.ClusterClient).Options(); strings.Join(o.Addrs, ",") != "n1:7000,n2:7001" || o.Username != "u" || o.Password != "p" ||
		o.TLSConfig == nil || o.TLSConfig.ServerName != "" || o.PoolSize != 5 || s3.Kind() != "cluster" || s3.Addr() != "cluster n1:7000,n2:7001" {
		t.Fatalf("cluster options: %+v, %s", o, s3.Addr())
	}
	s4, err := Open(Options{URL: "redis+sentinel://:p@s1:26379,s2:26379/mymaster/2", SentinelPassword: "sp"})
	if err != nil {
		t.Fatal(err)
	}
	defer s4.Close()
	if o := s4.rdb.(*redis.Client).Options(); o.Password != "p" || o.DB != 2 || s4.Kind() != "sentinel" || s4.Addr() != "sentinel master mymaster at s1:26379,s2:26379" {
		t.Fatalf("sentinel options: %+v, %s", o, s4.Addr())
	}
	if _, err := Open(Options{URL: "redis+cluster://n1:7000", KeyPrefix: "fleet:"}); err == nil || !strings.Contains(err.Error(), "hash tag") {
		t.Errorf("cluster without a hash tag: %v", err)
	}
	for _, bad := range []string{"http://h:1", "redis://h:1/x", "unix:///tmp/r.sock", "redis+sentinel://s:1", "redis://a:1,b:2"} {
		if _, err := Open(Options{URL: bad}); err == nil {
			t.Errorf("Open(%q) accepted", bad)
		}
	}
}
