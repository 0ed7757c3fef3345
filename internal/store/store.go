// Package store is dynamic-proxy's Redis provider, and the only code that
// talks to Redis. It keeps what a fleet of proxy instances shares: the
// config pushed by "dynamic-proxy config push", backends registered at
// runtime (with an optional TTL), and the runtime state (drain, enable,
// disable, weight) of backends. Every change is one atomic Lua script that
// also moves a global version and announces itself on a pub/sub channel;
// Syncer follows it from an instance (pub/sub for speed, a periodic full
// resync to heal a missed message) and keeps a cache file for start-ups
// while Redis is down. Redis is never on the data path: instances apply
// snapshots of it to in-memory state.
package store

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
)

// Options say how to reach Redis; OptionsFrom fills them from [redis].
type Options struct {
	// URL is a redis.url: redis://[user:password@]host:port[/db],
	// redis+sentinel://host:port,.../MASTER[/db] or
	// redis+cluster://host:port,... (rediss… for TLS); see
	// config.ParseRedisURL. The user name is a Redis 6 ACL user.
	URL string
	// Password, when not empty, overrides the URL's password.
	Password string
	// SentinelUsername and SentinelPassword authenticate to the sentinels.
	SentinelUsername, SentinelPassword string
	// DB, when not 0, overrides the URL's database.
	DB int
	// PoolSize is the maximum number of connections (0: go-redis default).
	PoolSize int
	// ConnectionTimeout bounds a dial; CommandTimeout each command's reply.
	ConnectionTimeout, CommandTimeout time.Duration
	// KeyPrefix starts every key, so that several fleets can share a Redis.
	// A cluster needs a {…} hash tag in it (config.HasHashTag).
	KeyPrefix string
	// WriteRetry is how long a change is retried while Redis answers with
	// an error that shows it was not made (no connection, a failover in
	// progress: READONLY, LOADING, MASTERDOWN, CLUSTERDOWN, TRYAGAIN); 0:
	// never. See Store.write.
	WriteRetry time.Duration
}

// OptionsFrom returns the options of a [redis] section.
func OptionsFrom(r *config.Redis) Options {
	return Options{URL: r.URL, Password: r.Password, SentinelUsername: r.SentinelUsername, SentinelPassword: r.SentinelPassword,
		DB: r.DB, PoolSize: r.PoolSize, ConnectionTimeout: r.ConnectionTimeout.D(), CommandTimeout: r.CommandTimeout.D(), KeyPrefix: r.KeyPrefix}
}

// Errors for errors.Is.
var (
	ErrNotFound = errors.New("not registered")
	ErrInvalid  = errors.New("invalid")
)

// Store is a connection pool to one Redis (a server, the master a Sentinel
// set names, or a cluster) and one key prefix.
type Store struct {
	rdb     redis.UniversalClient
	kind    string // config.RedisStandalone, RedisSentinel or RedisCluster
	prefix  string
	addr    string        // what Redis is, for messages: host:port, "sentinel master M at a,b", "cluster a,b"
	timeout time.Duration // bound of one operation: dial + command
	retry   time.Duration // Options.WriteRetry
	epoch   string        // proposed when Redis has none

	// Sentinel only: what Switches needs.
	master, sentinelUser, sentinelPassword string
	sentinels                              []string
	tls                                    *tls.Config
	swOnce                                 sync.Once
	switches                               chan string
	closers                                []func() error

	// OnRetry, when set, is told of each failed attempt of a change that
	// will be tried again, and of the wait before it.
	OnRetry func(err error, wait time.Duration)
}

var setLogger sync.Once

// Open returns a Store for o. It does not connect: the first command does.
func Open(o Options) (*Store, error) {
	t, err := config.ParseRedisURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("redis.url: %w", err)
	}
	ro, err := redis.ParseURL(t.URL)
	if err != nil {
		return nil, fmt.Errorf("redis.url %q: %w", o.URL, err)
	}
	if o.Password != "" {
		ro.Password = o.Password
	}
	if o.DB != 0 {
		ro.DB = o.DB
	}
	if o.PoolSize > 0 {
		ro.PoolSize = o.PoolSize
	}
	if o.ConnectionTimeout <= 0 {
		o.ConnectionTimeout = 5 * time.Second
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 3 * time.Second
	}
	if t.Kind == config.RedisCluster && !config.HasHashTag(o.KeyPrefix) {
		return nil, fmt.Errorf("redis.key_prefix %q: a cluster needs a {…} hash tag in the prefix, so that all of the fleet's keys share one slot (e.g. %q)", o.KeyPrefix, config.DefaultClusterKeyPrefix)
	}
	ro.DialTimeout = o.ConnectionTimeout
	ro.ReadTimeout, ro.WriteTimeout = o.CommandTimeout, o.CommandTimeout
	ro.ContextTimeoutEnabled = true
	ro.MaxRetries = 1
	ro.Protocol = 2 // RESP2: any Redis from 5 up
	ro.DisableIdentity = true
	ro.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	setLogger.Do(func() { redis.SetLogger(quietLogger{}) })
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	s := &Store{kind: t.Kind, prefix: o.KeyPrefix, addr: ro.Addr, timeout: o.ConnectionTimeout + o.CommandTimeout,
		retry: o.WriteRetry, epoch: hex.EncodeToString(b)}
	if ro.TLSConfig != nil && t.Kind != config.RedisStandalone {
		// Each node is verified under its own name, not the first address's.
		ro.TLSConfig.ServerName = ""
	}
	switch t.Kind {
	case config.RedisSentinel:
		s.addr = fmt.Sprintf("sentinel master %s at %s", t.Master, strings.Join(t.Addrs, ","))
		s.master, s.sentinels, s.sentinelUser, s.sentinelPassword, s.tls = t.Master, t.Addrs, o.SentinelUsername, o.SentinelPassword, ro.TLSConfig
		s.rdb = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: t.Master, SentinelAddrs: t.Addrs,
			SentinelUsername: o.SentinelUsername, SentinelPassword: o.SentinelPassword,
			Username: ro.Username, Password: ro.Password, DB: ro.DB, TLSConfig: ro.TLSConfig,
			Protocol: ro.Protocol, DisableIdentity: true, PoolSize: ro.PoolSize,
			MaxRetries: ro.MaxRetries, DialTimeout: ro.DialTimeout, ReadTimeout: ro.ReadTimeout, WriteTimeout: ro.WriteTimeout,
			ContextTimeoutEnabled: true,
		})
	case config.RedisCluster:
		s.addr = "cluster " + strings.Join(t.Addrs, ",")
		s.rdb = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: t.Addrs, Username: ro.Username, Password: ro.Password, TLSConfig: ro.TLSConfig,
			Protocol: ro.Protocol, DisableIdentity: true, PoolSize: ro.PoolSize,
			MaxRetries: ro.MaxRetries, DialTimeout: ro.DialTimeout, ReadTimeout: ro.ReadTimeout, WriteTimeout: ro.WriteTimeout,
			ContextTimeoutEnabled: true, MaintNotificationsConfig: ro.MaintNotificationsConfig,
		})
	default:
		s.rdb = redis.NewClient(ro)
	}
	return s, nil
}

// quietLogger drops go-redis's own log lines (pool and reconnect chatter):
// every error reaches the caller, which logs it once with context.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// Close closes the connections.
func (s *Store) Close() error {
	for _, c := range s.closers {
		c()
	}
	return s.rdb.Close()
}

// Addr says which Redis this is: host:port, "sentinel master M at
// host:port,...", or "cluster host:port,...".
func (s *Store) Addr() string { return s.addr }

// Kind is config.RedisStandalone, RedisSentinel or RedisCluster.
func (s *Store) Kind() string { return s.kind }

// Prefix is the key prefix.
func (s *Store) Prefix() string { return s.prefix }

// Key returns a key under the prefix ("backends:web" -> "dynamic-proxy:backends:web").
func (s *Store) Key(name string) string { return s.prefix + name }

// Channel is the pub/sub channel that announces changes.
func (s *Store) Channel() string { return s.prefix + "events" }

func (s *Store) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	return s.wrap(s.rdb.Ping(ctx).Err())
}

func (s *Store) wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("redis %s: %w", s.addr, err)
}

// keys names the keys a script declares: version and epoch (which every
// script may touch), then names, each under the prefix.
func (s *Store) keys(names ...string) []string {
	out := []string{s.Key("version"), s.Key("epoch")}
	for _, n := range names {
		out = append(out, s.Key(n))
	}
	return out
}

// run runs a script once.
func (s *Store) run(ctx context.Context, script *redis.Script, keys []string, args ...any) (any, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	return script.Run(ctx, s.rdb, keys, append([]any{s.prefix, s.epoch}, args...)...).Result()
}

// write runs a script that changes Redis, retrying it for up to
// Options.WriteRetry while Redis answers with an error that shows the
// script did not run (no connection to the master, a failover in progress).
// A script whose outcome is unknown (the connection broke or timed out after
// it was sent) is retried only when it is idempotent (running it twice is
// running it once); otherwise the error says the change may have been made.
func (s *Store) write(ctx context.Context, idempotent bool, script *redis.Script, keys []string, args ...any) (any, error) {
	deadline := time.Now().Add(s.retry)
	wait := 100 * time.Millisecond
	unknown := 0 // attempts whose outcome is unknown
	for {
		v, err := s.run(ctx, script, keys, args...)
		if err == nil {
			return v, nil
		}
		notRun := notRun(err)
		if !notRun && !isRedisReply(err) {
			unknown++
		}
		// An unknown outcome is retried a few times only: past a broken
		// connection to a master that is going away, the next attempts
		// see it gone (notRun); the same failure again and again is not a
		// failover (e.g. plain redis:// to a TLS port).
		again := notRun || idempotent && unknown <= 2 && transient(err)
		if s.retry <= 0 || !again || ctx.Err() != nil || time.Until(deadline) < wait {
			if !idempotent && transient(err) {
				return nil, fmt.Errorf("redis %s: %w (the change may or may not have been made: look before repeating it)", s.addr, err)
			}
			return nil, s.wrap(err)
		}
		if s.OnRetry != nil {
			s.OnRetry(s.wrap(err), wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, s.wrap(err)
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// notRun reports whether err shows that a command was not run: no
// connection was made, or Redis refused it because it cannot take writes
// now (a replica, loading, a failover or resharding in progress).
func notRun(err error) bool {
	var op *net.OpError
	var cv *tls.CertificateVerificationError
	switch {
	case errors.As(err, &cv):
		return false // a TLS dial that reached the server and refused it
	case errors.As(err, &op) && op.Op == "dial", errors.Is(err, syscall.ECONNREFUSED):
		return true
	case redis.IsReadOnlyError(err), redis.IsLoadingError(err), redis.IsMasterDownError(err),
		redis.IsClusterDownError(err), redis.IsTryAgainError(err), redis.IsNoReplicasError(err):
		return true
	case strings.Contains(err.Error(), "all sentinels specified in configuration are unreachable"):
		return true
	}
	return false
}

// transient reports whether err may be a failover's: a connection that
// broke or timed out (not a refused certificate, not an error reply).
func transient(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.As(err, &ne) && ne.Timeout()
}

// isRedisReply reports whether err is an error reply of Redis (the command
// was answered), not a failure to get an answer.
func isRedisReply(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// Registration is a backend registered in Redis for a rule.
type Registration struct {
	Rule    string `json:"rule"`
	ID      string `json:"id"`
	Address string `json:"address"`
	Weight  int    `json:"weight"`
	// Expires is when the registration ends unless renewed, by Redis's
	// clock; zero: never.
	Expires time.Time `json:"expires"`
	// Version is the global version at which it last changed.
	Version int64 `json:"version"`
}

// CheckRegistration validates what AddBackend would store.
func CheckRegistration(rule, id, address string, weight int, ttl time.Duration) error {
	var errs []error
	if rule == "" {
		errs = append(errs, errors.New("missing rule name"))
	}
	if id == "" {
		errs = append(errs, errors.New("missing backend id"))
	}
	if rule != "" {
		if err := config.CheckName("rule name", rule); err != nil {
			errs = append(errs, err)
		}
	}
	if id != "" {
		if err := config.CheckName("backend id", id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := config.CheckBackendAddress(address); err != nil {
		errs = append(errs, err)
	}
	if weight < 1 || weight > config.MaxWeight {
		errs = append(errs, fmt.Errorf("weight must be from 1 to %d, got %d", config.MaxWeight, weight))
	}
	if ttl != 0 && ttl < MinTTL {
		errs = append(errs, fmt.Errorf("ttl must be 0 (no expiry) or at least %v, got %v", MinTTL, ttl))
	}
	if err := errors.Join(errs...); err != nil {
		return invalidError{err}
	}
	return nil
}

// invalidError is a validation error: errors.Is(err, ErrInvalid).
type invalidError struct{ err error }

func (e invalidError) Error() string        { return e.err.Error() }
func (e invalidError) Unwrap() error        { return e.err }
func (e invalidError) Is(target error) bool { return target == ErrInvalid }

// MinTTL is the shortest registration TTL.
const MinTTL = time.Second

// AddBackend registers (or renews) a backend of rule; with ttl > 0 it
// expires unless renewed within ttl. It returns the version of the
// registration and whether this call changed it (a renewal of the same
// address and weight changes nothing but the expiry, and announces nothing).
func (s *Store) AddBackend(ctx context.Context, rule, id, address string, weight int, ttl time.Duration) (version int64, changed bool, err error) {
	if err := CheckRegistration(rule, id, address, weight, ttl); err != nil {
		return 0, false, err
	}
	v, err := s.write(ctx, true, addScript, s.keys("rules", "backends:"+rule), rule, id, address, weight, ttl.Milliseconds())
	if err != nil {
		return 0, false, err
	}
	a, _ := v.([]any)
	if len(a) != 2 {
		return 0, false, fmt.Errorf("redis %s: unexpected reply %v", s.addr, v)
	}
	ver, _ := a[0].(int64)
	ch, _ := a[1].(int64)
	return ver, ch == 1, nil
}

// RemoveBackend removes a registration (and its shared state). It returns
// ErrNotFound when rule has no registered backend id.
func (s *Store) RemoveBackend(ctx context.Context, rule, id string) (int64, error) {
	v, err := s.write(ctx, false, removeScript, s.keys("backends:"+rule, "state:"+rule), rule, id)
	if err != nil {
		return 0, err
	}
	if n, _ := v.(int64); n > 0 {
		return n, nil
	}
	return 0, fmt.Errorf("rule %q: backend %q: %w", rule, id, ErrNotFound)
}

// State is the runtime state a fleet shares for one backend of a rule. A
// nil field (or Weight 0) was never set and leaves the backend's config
// value alone.
type State struct {
	Rule     string `json:"rule"`
	ID       string `json:"id"`
	Draining *bool  `json:"draining,omitempty"`
	Enabled  *bool  `json:"enabled,omitempty"`
	Weight   int    `json:"weight,omitempty"`
	Version  int64  `json:"version"`
}

type stateJSON struct {
	Draining *bool  `json:"draining,omitempty"`
	Enabled  *bool  `json:"enabled,omitempty"`
	Weight   int    `json:"weight,omitempty"`
	Version  *int64 `json:"version,omitempty"`
}

// SetState merges ch (its non-nil fields and a non-zero Weight) into the
// shared state of rule/id and returns the new version.
func (s *Store) SetState(ctx context.Context, ch State) (int64, error) {
	if ch.Rule == "" || ch.ID == "" {
		return 0, fmt.Errorf("%w: state needs a rule and a backend id", ErrInvalid)
	}
	if ch.Weight < 0 || ch.Weight > config.MaxWeight {
		return 0, fmt.Errorf("%w: weight must be from 1 to %d, got %d", ErrInvalid, config.MaxWeight, ch.Weight)
	}
	if ch.Draining == nil && ch.Enabled == nil && ch.Weight == 0 {
		return 0, fmt.Errorf("%w: empty state change", ErrInvalid)
	}
	js, _ := json.Marshal(stateJSON{Draining: ch.Draining, Enabled: ch.Enabled, Weight: ch.Weight})
	v, err := s.write(ctx, true, stateScript, s.keys("rules", "state:"+ch.Rule), ch.Rule, ch.ID, string(js))
	if err != nil {
		return 0, err
	}
	n, _ := v.(int64)
	return n, nil
}

// ResetState deletes the shared state of rule/id: every instance returns
// the backend to its config values. ErrNotFound when there was none.
func (s *Store) ResetState(ctx context.Context, rule, id string) (int64, error) {
	v, err := s.write(ctx, false, resetScript, s.keys("state:"+rule), rule, id)
	if err != nil {
		return 0, err
	}
	if n, _ := v.(int64); n > 0 {
		return n, nil
	}
	return 0, fmt.Errorf("rule %q: backend %q has no shared state: %w", rule, id, ErrNotFound)
}

// StoredConfig is the config pushed to Redis.
type StoredConfig struct {
	Version  int64
	TOML     []byte
	PushedAt time.Time // Redis's clock
	Source   string    // who pushed it: "user@host:/path/file.toml"
}

// Name is how messages about the stored config name it:
// "redis:PREFIXconfig@VERSION".
func (c *StoredConfig) Name(prefix string) string {
	return fmt.Sprintf("redis:%sconfig@%d", prefix, c.Version)
}

// PushConfig stores data (a config already validated by the caller) as the
// fleet's config and returns its version.
func (s *Store) PushConfig(ctx context.Context, data []byte, source string) (int64, error) {
	v, err := s.write(ctx, false, pushScript, s.keys("config"), string(data), source)
	if err != nil {
		return 0, err
	}
	n, _ := v.(int64)
	return n, nil
}

// Config returns the stored config, or nil when none was pushed.
func (s *Store) Config(ctx context.Context) (*StoredConfig, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	m, err := s.rdb.HGetAll(ctx, s.Key("config")).Result()
	if err != nil {
		return nil, s.wrap(err)
	}
	if len(m) == 0 {
		return nil, nil
	}
	var c StoredConfig
	if _, err := fmt.Sscan(m["version"], &c.Version); err != nil || c.Version <= 0 {
		return nil, fmt.Errorf("redis key %s field version: %w: %q is not a version", s.Key("config"), ErrInvalid, m["version"])
	}
	var ms int64
	if _, err := fmt.Sscan(m["pushed_ms"], &ms); err == nil {
		c.PushedAt = time.UnixMilli(ms)
	}
	c.TOML, c.Source = []byte(m["toml"]), m["source"]
	return &c, nil
}

// sortRegs orders registrations by rule, then id.
func sortRegs(rs []Registration) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Rule != rs[j].Rule {
			return rs[i].Rule < rs[j].Rule
		}
		return rs[i].ID < rs[j].ID
	})
}

// logAttrs is a helper for Syncer's log lines.
func logAttrs(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
