package store

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
)

// TestSyncLimits: two instances see each other's open connections and
// admissions through SyncLimits, a counter recreated after it expired
// starts again, and an instance that stops syncing stops counting after
// its ttl (the sorted set and its hash).
func TestSyncLimits(t *testing.T) {
	srv := redistest.Start(t)
	a := open(t, srv.URL(), srv.Prefix)
	b := open(t, srv.URL(), srv.Prefix)
	ctx := context.Background()
	const ttl, rateTTL = 400 * time.Millisecond, time.Minute

	live, err := a.SyncLimits(ctx, "A", nil, []LimitItem{
		{Field: "web/10.0.0.1", Conns: 2, StoreConns: true, Delta: 3},
		{Field: "web", Conns: -1, Delta: 3},
	}, ttl, rateTTL)
	if err != nil || !slices.Equal(live, []string{"A"}) {
		t.Fatalf("first sync: live %v, %v", live, err)
	}
	items := []LimitItem{
		{Field: "web/10.0.0.1", Conns: 1, StoreConns: true, Delta: 1},
		{Field: "web", Conns: -1, Delta: 1},
		{Field: "web/10.0.0.2", Conns: 0, Delta: -1}, // read only
	}
	live, err = b.SyncLimits(ctx, "B", []string{"A"}, items, ttl, rateTTL)
	if err != nil || len(live) != 2 {
		t.Fatalf("B's sync: live %v, %v", live, err)
	}
	if items[0].Others != 2 || items[0].Total != 4 || items[1].Others != 0 || items[1].Total != 4 || items[2].Others != 0 || items[2].Total != 0 {
		t.Fatalf("B sees %+v", items)
	}
	// A closes one, reads B's.
	items = []LimitItem{{Field: "web/10.0.0.1", Conns: 1, StoreConns: true, Delta: 0}}
	if _, err := a.SyncLimits(ctx, "A", live, items, ttl, rateTTL); err != nil || items[0].Others != 1 || items[0].Total != 4 {
		t.Fatalf("A sees %+v, %v", items, err)
	}
	// Many items: several pipelined script calls (limitChunk each).
	many := make([]LimitItem, 2*limitChunk+3)
	for i := range many {
		many[i] = LimitItem{Field: "bulk/" + string(rune('a'+i%26)) + time.Duration(i).String(), Conns: -1, Delta: int64(i % 3)}
	}
	if _, err := b.SyncLimits(ctx, "B", live, many, ttl, rateTTL); err != nil || many[len(many)-1].Total != int64((len(many)-1)%3) {
		t.Fatalf("chunked sync: last %+v, %v", many[len(many)-1], err)
	}
	// B stops syncing: within its ttl it is gone from A's view.
	deadline := time.Now().Add(10 * time.Second)
	for {
		items = []LimitItem{{Field: "web/10.0.0.1", Conns: 1, Delta: -1}}
		live, err = a.SyncLimits(ctx, "A", []string{"A", "B"}, items, ttl, rateTTL)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Equal(live, []string{"A"}) && items[0].Others == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B still counts: live %v, others %d", live, items[0].Others)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Every key is under the prefix (one hash slot on a cluster).
	keys, err := srv.Client().Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if len(k) < len(srv.Prefix) || k[:len(srv.Prefix)] != srv.Prefix {
			t.Errorf("key %q is not under the prefix %q", k, srv.Prefix)
		}
	}
}
