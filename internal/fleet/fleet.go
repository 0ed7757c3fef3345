// Package fleet is the part of a serving instance that follows Redis
// ([redis]): it hands the engine the dynamic state (backends registered at
// runtime, shared runtime state) as it changes, with watch_config reloads
// the config pushed there, and is the store the admin API shares changes
// and registers backends through. The fleet commands that write to Redis
// (config push, backend add, ...) are internal/cli's.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/reload"
	"github.com/dynamic-proxy/dynamic-proxy/internal/store"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// adminWriteRetry is how long a change made through the admin API (a
// drain...) is retried while Redis shows it did not run (a Sentinel
// failover in progress): long enough for a failover, short enough for an
// HTTP request.
const adminWriteRetry = 5 * time.Second

// Follower follows Redis for a serving instance with a [redis] section.
// It is also the store the admin API shares runtime changes and registers
// backends through (admin.Fleet).
type Follower struct {
	log    *slog.Logger
	store  *store.Store
	syncer *store.Syncer
	eng    *engine.Engine
	watch  bool // the config comes from Redis

	limits *proxy.FleetLimits // the fleet-wide access limits' counts (limits.go)
	id     string             // this instance in the limits' keys

	pushed     atomic.Pointer[store.StoredConfig] // the stored config, when watching
	rl         atomic.Pointer[reload.Reloader]
	cancel     context.CancelFunc
	done       chan struct{}
	limitsDone chan struct{}
}

// Start connects to Redis (or reads the cache file when Redis is
// down), hands the dynamic state to the engine before its first Apply and,
// with watch_config, returns the stored config merged with the instance's
// own keys instead of cfg. Without [redis] it returns (nil, cfg, nil).
func Start(cfg *config.Config, fromRedis bool, eng *engine.Engine, log *slog.Logger, setLevel func(string)) (*Follower, *config.Config, error) {
	if cfg.Redis == nil {
		if fromRedis {
			return nil, nil, fmt.Errorf("--config-from-redis needs a [redis] section in %s", cfg.File)
		}
		return nil, cfg, nil
	}
	r := cfg.Redis
	o := store.OptionsFrom(r)
	o.WriteRetry = adminWriteRetry
	st, err := store.Open(o)
	if err != nil {
		return nil, nil, err
	}
	cache := r.CacheFile
	if cache != "" && !filepath.IsAbs(cache) {
		cache = filepath.Join(filepath.Dir(cfg.File), cache)
	}
	if cache != "" {
		if err := store.CheckCacheDir(cache); err != nil {
			st.Close()
			return nil, nil, err
		}
	}
	f := &Follower{log: log, store: st, eng: eng, watch: r.WatchConfig || fromRedis, limits: proxy.NewFleetLimits(), id: instanceID()}
	eng.SetFleetLimits(f.limits)
	f.syncer = &store.Syncer{Store: st, Log: log, CacheFile: cache, Resync: r.ResyncInterval.D(), WatchConfig: f.watch,
		ApplyState: f.applyState, ApplyConfig: f.applyConfig}
	snap, sc := f.syncer.Start(context.Background())
	if snap != nil {
		source := "cache"
		if f.syncer.Connected() {
			source = "redis"
		}
		_ = eng.SetDynamic(toDynamic(snap, source)) // before the first Apply: cannot fail
	}
	if f.watch {
		if sc == nil {
			log.Warn("redis: taking the config from Redis, but none was pushed yet (dynamic-proxy config push); serving the file's until one is", "file", cfg.File)
		} else {
			f.pushed.Store(sc)
			merged, err := config.ParseWithLocal(sc.Name(st.Prefix()), sc.TOML, cfg)
			if err != nil {
				log.Error("redis: the stored config does not load here; serving the file's", "version", sc.Version, "err", err.Error())
			} else {
				log.Info("redis: serving the stored config", "version", sc.Version, "pushed_by", sc.Source, "pushed_at", sc.PushedAt.UTC())
				for _, w := range merged.Warnings {
					log.Warn("config warning", "problem", w.String())
				}
				cfg = merged
				setLevel(cfg.Logging.Level)
			}
		}
	}
	return f, cfg, nil
}

// Started follows Redis in the background, once the reloader exists and
// until ctx ends (the instance shuts down).
func (f *Follower) Started(ctx context.Context, rl *reload.Reloader) {
	if f == nil {
		return
	}
	f.rl.Store(rl)
	if f.watch {
		rl.Load = f.load
	}
	ctx, cancel := context.WithCancel(ctx)
	f.cancel, f.done = cancel, make(chan struct{})
	f.limitsDone = make(chan struct{})
	go func() {
		defer close(f.done)
		f.syncer.Run(ctx)
	}()
	go func() {
		defer close(f.limitsDone)
		f.syncLimits(ctx)
	}()
}

// Close stops following Redis (nil: nothing to stop).
func (f *Follower) Close() {
	if f == nil {
		return
	}
	if f.cancel != nil {
		f.cancel()
		<-f.done
		<-f.limitsDone
	}
	f.store.Close()
}

// load is the reloader's Load with watch_config: the stored config with
// the local file's own keys, or the file alone while none was pushed.
func (f *Follower) load(path string) (*config.Config, error) {
	local, err := config.LoadFollower(path) // its rules may all come from Redis
	if err != nil {
		return nil, err
	}
	sc := f.pushed.Load()
	if sc == nil || local.Redis == nil {
		return local, nil
	}
	return config.ParseWithLocal(sc.Name(f.store.Prefix()), sc.TOML, local)
}

func (f *Follower) applyState(snap *store.Snapshot, source string) error {
	return f.eng.SetDynamic(toDynamic(snap, source))
}

func (f *Follower) applyConfig(sc *store.StoredConfig) {
	f.pushed.Store(sc)
	f.log.Info("redis: new config version", "version", sc.Version, "pushed_by", sc.Source, "pushed_at", sc.PushedAt.UTC())
	if rl := f.rl.Load(); rl != nil {
		_, _ = rl.Reload("redis", false) // logs its outcome
	}
}

func toDynamic(s *store.Snapshot, source string) *engine.Dynamic {
	d := &engine.Dynamic{Version: s.Version, Source: source,
		Backends: make([]engine.DynamicBackend, len(s.Backends)), States: make([]engine.BackendState, len(s.States))}
	for i, b := range s.Backends {
		d.Backends[i] = engine.DynamicBackend{Rule: b.Rule, ID: b.ID, Address: b.Address, Weight: b.Weight, Expires: b.Expires}
	}
	for i, st := range s.States {
		d.States[i] = engine.BackendState{Rule: st.Rule, ID: st.ID, Draining: st.Draining, Enabled: st.Enabled, Weight: st.Weight, Version: st.Version}
	}
	return d
}

// ShareState implements admin.Fleet.
func (f *Follower) ShareState(ctx context.Context, s engine.BackendState) error {
	_, err := f.store.SetState(ctx, store.State{Rule: s.Rule, ID: s.ID, Draining: s.Draining, Enabled: s.Enabled, Weight: s.Weight})
	return err
}

// Register implements admin.Fleet.
func (f *Follower) Register(ctx context.Context, b engine.DynamicBackend, ttl time.Duration) error {
	_, _, err := f.store.AddBackend(ctx, b.Rule, b.ID, b.Address, b.Weight, ttl)
	return err
}

// Deregister implements admin.Fleet.
func (f *Follower) Deregister(ctx context.Context, rule, id string) error {
	_, err := f.store.RemoveBackend(ctx, rule, id)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("rule %q has no registered backend %q: %w", rule, id, engine.ErrUnknownBackend)
	}
	return err
}

// Registrations implements admin.Fleet.
func (f *Follower) Registrations(ctx context.Context) ([]engine.DynamicBackend, error) {
	snap, err := f.store.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return toDynamic(snap, "redis").Backends, nil
}

// TicketKeys is the fleet's store as the source of the TLS session ticket
// keys every instance shares; nil without [redis] (each instance then has
// its own keys).
func (f *Follower) TicketKeys() tlsconf.TicketKeySource {
	if f == nil || f.store == nil {
		return nil
	}
	return f.store
}

// Store is the fleet's Redis store; nil without [redis].
func (f *Follower) Store() *store.Store {
	if f == nil {
		return nil
	}
	return f.store
}
