package store

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Syncer.
const (
	DefaultResync     = 5 * time.Second
	DefaultMinBackoff = 100 * time.Millisecond
	// DefaultMaxBackoff is short so that, however long Redis was away,
	// an instance is back on it (subscribed and resynced) within about
	// half a second of its return, and the first change made then reaches
	// it at once. Each attempt is one dial, cheap for Redis even from
	// hundreds of instances.
	DefaultMaxBackoff = 500 * time.Millisecond
	// coalesce is how long a burst of events may gather before one
	// snapshot is read for all of them.
	coalesce = 20 * time.Millisecond
)

// Syncer keeps one instance following the fleet's state in Redis: it
// subscribes to the events channel, reads a full snapshot after each burst
// of events, every Resync, and at the earliest registration expiry, and
// hands every newer snapshot to ApplyState. While Redis is unreachable the
// instance keeps what it last applied and Syncer retries with exponential
// backoff; on reconnection it resyncs. Every applied change is written to
// CacheFile, which Start reads when Redis is down at start-up.
type Syncer struct {
	Store *Store
	Log   *slog.Logger
	// CacheFile is the cache's path; "" keeps no cache.
	CacheFile string
	// Resync is the interval of full reads (default 5s).
	Resync time.Duration
	// WatchConfig makes Syncer follow the stored config too (ApplyConfig).
	WatchConfig bool
	// ApplyState applies a newer snapshot; source is "redis" or "cache".
	// On error the snapshot counts as not applied and is tried again at
	// the next read.
	ApplyState func(snap *Snapshot, source string) error
	// ApplyConfig is handed each newer stored config (WatchConfig only).
	ApplyConfig func(c *StoredConfig)
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts (defaults 100ms and 500ms).
	MinBackoff, MaxBackoff time.Duration

	mu        sync.Mutex
	applied   *Snapshot
	cfg       *StoredConfig
	cfgEpoch  string
	problems  map[string]bool
	connected bool
	down      error     // why Redis is unreachable (nil: it is not, or not tried)
	expiry    time.Time // local time of the earliest registration expiry
}

func (y *Syncer) log() *slog.Logger { return logAttrs(y.Log) }

// Start returns the state an instance starts with: read from Redis, or,
// when Redis does not answer (within connection_timeout + command_timeout),
// from the cache file (nil, nil when there is none). It applies nothing:
// the caller applies what it returns before serving, then calls Run.
func (y *Syncer) Start(ctx context.Context) (*Snapshot, *StoredConfig) {
	err := y.sync(ctx, false)
	if err == nil {
		y.mu.Lock()
		defer y.mu.Unlock()
		y.connected = true
		y.log().Info("redis: connected", "redis", y.Store.Addr(), "key_prefix", y.Store.Prefix(), "version", y.applied.Version,
			"backends", len(y.applied.Backends), "states", len(y.applied.States), "config_version", y.configVersion())
		return y.applied, y.cfg
	}
	y.mu.Lock()
	defer y.mu.Unlock()
	y.down = err
	c, cerr := readCache(y.CacheFile, y.Store.Prefix())
	switch {
	case y.CacheFile == "":
		y.log().Warn("redis: unreachable at start-up; serving the file config alone (no [redis] cache_file) and retrying in the background",
			"redis", y.Store.Addr(), "err", err.Error())
	case cerr != nil:
		y.log().Warn("redis: unreachable at start-up, and the cache file cannot be used; serving the file config alone and retrying in the background",
			"redis", y.Store.Addr(), "err", err.Error(), "cache_file", y.CacheFile, "cache_err", cerr.Error())
	default:
		y.applied = c.State
		if c.Config != nil {
			y.cfg, y.cfgEpoch = c.Config.stored(), c.Config.Epoch
		}
		y.log().Warn("redis: unreachable at start-up; serving the file config and the cached dynamic state, retrying in the background",
			"redis", y.Store.Addr(), "err", err.Error(), "cache_file", y.CacheFile, "version", c.State.Version,
			"backends", len(c.State.Backends), "states", len(c.State.States), "config_version", y.configVersion(), "cached_at", c.Written)
	}
	return y.applied, y.cfg
}

func (y *Syncer) configVersion() int64 {
	if y.cfg == nil {
		return 0
	}
	return y.cfg.Version
}

// Run follows Redis until ctx ends.
func (y *Syncer) Run(ctx context.Context) {
	lo, hi := y.MinBackoff, y.MaxBackoff
	if lo <= 0 {
		lo = DefaultMinBackoff
	}
	if hi < lo {
		hi = max(lo, DefaultMaxBackoff)
	}
	backoff := lo
	for ctx.Err() == nil {
		wasUp, err := y.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errSwitched) {
			backoff = lo
			continue // subscribe to the new master at once
		}
		if wasUp {
			backoff = lo
		}
		y.setDown(err, backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, hi)
	}
}

// session subscribes, resyncs, and follows events until an error.
func (y *Syncer) session(ctx context.Context) (wasUp bool, err error) {
	ev, err := y.Store.Subscribe(ctx)
	if err != nil {
		return false, err
	}
	defer ev.Close()
	stop := context.AfterFunc(ctx, func() { ev.Close() })
	defer stop()
	var switched atomic.Bool
	if sw := y.Store.Switches(); sw != nil {
		done := make(chan struct{})
		defer close(done)
		go func() {
			select {
			case addr := <-sw:
				y.log().Info("redis: the sentinels switched the master; subscribing to the new one and resyncing", "master", addr)
				switched.Store(true)
				ev.Close()
			case <-done:
			}
		}()
	}
	if err := y.sync(ctx, true); err != nil {
		return false, err
	}
	y.setUp()
	y.log().Debug("redis: subscribed and resynced", "channel", y.Store.Channel())
	resync := y.Resync
	if resync <= 0 {
		resync = DefaultResync
	}
	for {
		wait := resync
		y.mu.Lock()
		if !y.expiry.IsZero() {
			wait = min(wait, max(time.Until(y.expiry)+5*time.Millisecond, time.Millisecond))
		}
		y.mu.Unlock()
		_, timedOut, err := ev.Next(ctx, wait)
		if switched.Load() {
			return true, errSwitched
		}
		if err != nil {
			return true, err
		}
		if !timedOut {
			// Let a burst of events gather, then read once for all.
			deadline := time.Now().Add(5 * coalesce)
			for time.Now().Before(deadline) {
				_, idle, err := ev.Next(ctx, coalesce)
				if switched.Load() {
					return true, errSwitched
				}
				if err != nil {
					return true, err
				}
				if idle {
					break
				}
			}
		}
		if err := y.sync(ctx, true); err != nil {
			if switched.Load() {
				return true, errSwitched
			}
			return true, err
		}
	}
}

// errSwitched ends a session when Sentinel switched the master.
var errSwitched = errors.New("the master was switched")

// sync reads a snapshot (and the stored config when it is newer) and
// applies what is newer than what was applied; apply false only records it
// (Start).
func (y *Syncer) sync(ctx context.Context, apply bool) error {
	snap, err := y.Store.Snapshot(ctx)
	if err != nil {
		return err
	}
	local := time.Now()
	y.mu.Lock()
	y.reportProblems(snap.Problems)
	y.expiry = time.Time{}
	if !snap.NextExpiry.IsZero() {
		y.expiry = local.Add(snap.NextExpiry.Sub(snap.Now))
	}
	prev := y.applied
	y.mu.Unlock()

	changed := false
	if snap.Newer(prev) {
		if prev != nil && prev.Epoch != snap.Epoch {
			y.log().Warn("redis: its data was reset (new epoch, versions start again); following it",
				"old_epoch", prev.Epoch, "new_epoch", snap.Epoch, "old_version", prev.Version, "version", snap.Version)
		}
		ok := true
		if apply && y.ApplyState != nil {
			if err := y.ApplyState(snap, "redis"); err != nil {
				ok = false
				y.log().Error("redis: cannot apply the dynamic state; keeping the previous one", "version", snap.Version, "err", err.Error())
			}
		}
		if ok {
			y.mu.Lock()
			y.applied = snap
			y.mu.Unlock()
			changed = true
		}
	}
	var newCfg *StoredConfig
	if y.WatchConfig && snap.ConfigVersion > 0 {
		y.mu.Lock()
		want := y.cfg == nil || y.cfgEpoch != snap.Epoch || snap.ConfigVersion > y.cfg.Version
		y.mu.Unlock()
		if want {
			c, err := y.Store.Config(ctx)
			switch {
			case errors.Is(err, ErrInvalid):
				y.mu.Lock()
				y.reportProblems(append(snap.Problems, Problem{Key: y.Store.Key("config"), Field: "version", Msg: err.Error()}))
				y.mu.Unlock()
			case err != nil:
				return err
			case c != nil:
				y.mu.Lock()
				y.cfg, y.cfgEpoch = c, snap.Epoch
				y.mu.Unlock()
				newCfg, changed = c, true
			}
		}
	}
	if changed {
		y.mu.Lock()
		err := writeCache(y.CacheFile, y.Store.Prefix(), y.applied, y.cfg, y.cfgEpoch)
		y.mu.Unlock()
		if err != nil {
			y.log().Error("redis: cannot write the cache file", "cache_file", y.CacheFile, "err", err.Error())
		}
	}
	if newCfg != nil && apply && y.ApplyConfig != nil {
		y.ApplyConfig(newCfg)
	}
	return nil
}

// reportProblems logs each rejected entry once, when it first appears.
// Called with y.mu held.
func (y *Syncer) reportProblems(ps []Problem) {
	seen := make(map[string]bool, len(ps))
	for _, p := range ps {
		s := p.String()
		seen[s] = true
		if !y.problems[s] {
			y.log().Error("redis: rejected an entry; the rest still applies", "key", p.Key, "field", p.Field, "problem", p.Msg)
		}
	}
	y.problems = seen
}

func (y *Syncer) setUp() {
	y.mu.Lock()
	defer y.mu.Unlock()
	if !y.connected {
		v := int64(0)
		if y.applied != nil {
			v = y.applied.Version
		}
		if y.down != nil {
			y.log().Info("redis: reachable again; resynced", "redis", y.Store.Addr(), "version", v)
		} else {
			y.log().Info("redis: connected", "redis", y.Store.Addr(), "version", v)
		}
	}
	y.connected, y.down = true, nil
}

func (y *Syncer) setDown(err error, retry time.Duration) {
	y.mu.Lock()
	defer y.mu.Unlock()
	if y.connected || y.down == nil {
		y.log().Warn("redis: unreachable; traffic continues on the last known state, retrying with backoff",
			"redis", y.Store.Addr(), "err", err.Error(), "retry_in", retry)
	} else {
		y.log().Debug("redis: still unreachable", "err", err.Error(), "retry_in", retry)
	}
	y.connected, y.down = false, err
}

// Connected reports whether the last attempt to reach Redis worked.
func (y *Syncer) Connected() bool {
	y.mu.Lock()
	defer y.mu.Unlock()
	return y.connected
}

// Applied is the last snapshot applied (nil: none).
func (y *Syncer) Applied() *Snapshot {
	y.mu.Lock()
	defer y.mu.Unlock()
	return y.applied
}
