package store

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
)

// TestClusterStore: on a cluster of three masters every script runs (its
// keys declared, all in the hash tag's slot), and a Syncer follows changes
// by pub/sub alone (no periodic resync within the test).
func TestClusterStore(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	st, err := Open(Options{URL: c.URL(), KeyPrefix: "{fleet}:", ConnectionTimeout: 2 * time.Second, CommandTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f := &syncFixture{logs: newLogRec(), applied: make(chan *Snapshot, 100)}
	f.y = &Syncer{Store: st, Log: slog.New(f.logs), Resync: time.Hour,
		ApplyState: func(s *Snapshot, source string) error { f.applied <- s; return nil }}
	if snap, _ := f.y.Start(context.Background()); snap == nil || !f.y.Connected() {
		t.Fatalf("start on the cluster: %v", f.logs.lines)
	}
	f.run(t)
	f.logs.wait(t, 0, "subscribed and resynced")
	ctx := context.Background()
	if _, _, err := st.AddBackend(ctx, "web", "a", "127.0.0.1:9001", 1, 0); err != nil {
		t.Fatal(err)
	}
	if snap := f.next(t); ids(snap.Backends) != "web/a@127.0.0.1:9001" {
		t.Fatalf("after add: %s", ids(snap.Backends))
	}
	yes := true
	if _, err := st.SetState(ctx, State{Rule: "other", ID: "b", Draining: &yes}); err != nil {
		t.Fatal(err)
	}
	if snap := f.next(t); len(snap.States) != 1 || snap.States[0].Rule != "other" {
		t.Fatalf("after state: %+v", snap.States)
	}
	if _, err := st.PushConfig(ctx, []byte("# x\n"), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ResetState(ctx, "other", "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RemoveBackend(ctx, "web", "a"); err != nil {
		t.Fatal(err)
	}
	for {
		snap := f.next(t)
		if len(snap.Backends) == 0 && len(snap.States) == 0 && snap.ConfigVersion > 0 {
			break
		}
	}
	// Every key of the fleet is on one node: one slot.
	var n int
	for _, node := range c.Nodes {
		ks, err := node.Client().Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(ks) > 0 {
			n++
		}
		for _, k := range ks {
			if !strings.HasPrefix(k, "{fleet}:") {
				t.Errorf("key %q outside the prefix", k)
			}
		}
	}
	if n != 1 {
		t.Fatalf("the fleet's keys are on %d nodes, want 1", n)
	}
}

// TestSentinelStoreFailover: writes before and after SENTINEL FAILOVER go
// to the master of the moment, and a Syncer follows the new master without
// being restarted: it subscribes on the new master at once, so a change
// made there reaches it by pub/sub (no periodic resync in the test).
func TestSentinelStoreFailover(t *testing.T) {
	begin := time.Now()
	sn := redistest.StartSentinel(t)
	t.Logf("sentinel set up in %v", time.Since(begin))
	st, err := Open(Options{URL: sn.URL(), KeyPrefix: "fleet:", ConnectionTimeout: 2 * time.Second, CommandTimeout: 2 * time.Second,
		WriteRetry: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f := newSyncer(t, sn.URL(), "")
	f.y.Resync = time.Hour // what reaches it comes by pub/sub
	if snap, _ := f.y.Start(context.Background()); snap == nil {
		t.Fatalf("start: %v", f.logs.lines)
	}
	f.run(t)
	f.logs.wait(t, 0, "subscribed and resynced")
	ctx := context.Background()
	if _, _, err := st.AddBackend(ctx, "web", "a", "127.0.0.1:9001", 1, 0); err != nil {
		t.Fatal(err)
	}
	if snap := f.next(t); ids(snap.Backends) != "web/a@127.0.0.1:9001" {
		t.Fatalf("before the failover: %s", ids(snap.Backends))
	}
	begin = time.Now()
	next := sn.Failover()
	t.Logf("failover to %s done in %v", next, time.Since(begin))
	f.logs.wait(t, 0, "the sentinels switched the master", "master="+next)
	if _, _, err := st.AddBackend(ctx, "web", "b", "127.0.0.1:9002", 1, 0); err != nil {
		t.Fatalf("add after the failover: %v", err)
	}
	for {
		if snap := f.next(t); strings.Contains(ids(snap.Backends), "web/b@") {
			if ids(snap.Backends) != "web/a@127.0.0.1:9001,web/b@127.0.0.1:9002" {
				t.Fatalf("after the failover: %s", ids(snap.Backends))
			}
			break
		}
	}
}

// TestSentinelMasterKilled: the master killed, a change made at once is
// retried (no connection, then the sentinels' new master) until it lands
// on the replica the sentinels promote; the Syncer follows it there.
func TestSentinelMasterKilled(t *testing.T) {
	sn := redistest.StartSentinel(t)
	sn.WaitPeers()
	var retries int
	st, err := Open(Options{URL: sn.URL(), KeyPrefix: "fleet:", ConnectionTimeout: time.Second, CommandTimeout: time.Second,
		WriteRetry: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.OnRetry = func(error, time.Duration) { retries++ }
	f := newSyncer(t, sn.URL(), "")
	if snap, _ := f.y.Start(context.Background()); snap == nil {
		t.Fatalf("start: %v", f.logs.lines)
	}
	f.run(t)
	f.logs.wait(t, 0, "subscribed and resynced")
	ctx := context.Background()
	if _, _, err := st.AddBackend(ctx, "web", "a", "127.0.0.1:9001", 1, 0); err != nil {
		t.Fatal(err)
	}
	f.next(t)
	old := sn.MasterAddr()
	sn.Data[0].Kill()
	if _, _, err := st.AddBackend(ctx, "web", "b", "127.0.0.1:9002", 1, 0); err != nil {
		t.Fatalf("add while the master is gone: %v", err)
	}
	if next := sn.MasterAddr(); next == old || retries == 0 {
		t.Fatalf("the add landed on %q (was %q) after %d retries", next, old, retries)
	}
	t.Logf("the add was retried %d times until the new master took it", retries)
	for {
		if snap := f.next(t); strings.Contains(ids(snap.Backends), "web/b@") {
			break
		}
	}
}
