package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/store"
)

// limitsTimeout bounds one sync of the fleet-wide limits: a stuck Redis
// holds only this goroutine, never an accept (the limits fall back to the
// local share after proxy.FleetStaleAfter).
const limitsTimeout = time.Second

// limitsRateTTL is how long an unused admissions counter stays in Redis.
const limitsRateTTL = 10 * time.Second

// instanceID names this process in the limits' keys: host, pid and a
// random part (a restarted instance is a new one).
func instanceID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b)
}

// syncLimits syncs the fleet-wide access limits every
// proxy.FleetSyncPeriod until ctx ends, while any rule has some.
func (f *Follower) syncLimits(ctx context.Context) {
	t := time.NewTicker(proxy.FleetSyncPeriod)
	defer t.Stop()
	var peers []string
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !f.limits.Active() {
			continue
		}
		r := f.limits.Collect()
		items := make([]store.LimitItem, len(r.Items))
		for i, it := range r.Items {
			items[i] = store.LimitItem{Field: it.Key, Conns: it.Conns, StoreConns: it.ConnsChanged, Delta: it.Delta}
		}
		sctx, cancel := context.WithTimeout(ctx, limitsTimeout)
		live, err := f.store.SyncLimits(sctx, f.id, peers, items, proxy.FleetStaleAfter, limitsRateTTL)
		cancel()
		if err == nil {
			for i := range items {
				r.Items[i].Others, r.Items[i].Total = items[i].Others, items[i].Total
			}
			r.Instances, peers = len(live), live
		}
		f.limits.Apply(r, err)
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			failing = true
			f.log.Warn("redis: fleet-wide access limits not synced; each falls back to this instance's share",
				"instances", f.limits.Instances(), "err", err.Error())
		case err == nil && failing:
			failing = false
			f.log.Info("redis: fleet-wide access limits synced again", "instances", len(live))
		}
	}
}
