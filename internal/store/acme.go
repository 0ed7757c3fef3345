package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
)

// ACME certificates, their keys and the ACME account on Redis: a
// certmagic.Storage shared by the fleet. Everything lives in two hashes
// under the prefix, so a cluster keeps them in the prefix's slot and one
// command reads or writes an item with its modification time:
//
//	P acme        field: certmagic's key ("certificates/CA/NAME/NAME.crt"), value: its bytes
//	P acme-mtime  field: the same key, value: Unix milliseconds of the last write
//	P acme-lock:NAME   a lock (SET NX PX): a random token, expiring unless refreshed
//
// They are not part of the versioned state (no INCR, no event): certmagic
// reads them when it needs them. Values of keys ending in ".key" (private
// keys of certificates and of the account) are encrypted with AES-256-GCM
// when an encryption key is set (ACMEStorageOptions.EncryptionKey), the key
// name bound as associated data, so a value cannot be moved to another name.

// ACME lock timing: a lock expires LockTTL after its last refresh, and its
// holder refreshes it every LockTTL/3 while it works, so a killed holder's
// lock is free within LockTTL and a live one's never lapses.
const (
	ACMELockTTL  = 10 * time.Second
	acmeLockPoll = 250 * time.Millisecond
)

// encMagic starts an encrypted value: version 1, then a 12-byte nonce and
// the AES-GCM sealed bytes.
const encMagic = "dp-enc1:"

// ACMEStorageOptions configure an ACMEStorage.
type ACMEStorageOptions struct {
	// Cache is the local directory that keeps a copy of everything read
	// from or written to Redis, read when Redis does not answer, so an
	// instance starts and serves its certificates while Redis is down.
	// "" keeps no copy.
	Cache string
	// EncryptionKey, when not empty, encrypts private keys at rest in
	// Redis: AES-256 with its SHA-256 as the key. Every instance of the
	// fleet needs the same one.
	EncryptionKey []byte
	// Log is told of the local copy's problems (nil: slog.Default).
	Log *slog.Logger
}

// ACMEStorage is a certmagic.Storage on Redis with a local copy.
type ACMEStorage struct {
	s     *Store
	local *certmagic.FileStorage // nil: no copy
	aead  cipher.AEAD            // nil: private keys stored as they are
	log   *slog.Logger

	mu    sync.Mutex
	locks map[string]*heldLock // held by this instance, by name
}

type heldLock struct {
	token string
	stop  chan struct{}
	done  chan struct{}
}

var _ certmagic.Storage = (*ACMEStorage)(nil)

// ACMEStorage returns the certmagic storage of the fleet's certificates on s.
func (s *Store) ACMEStorage(o ACMEStorageOptions) (*ACMEStorage, error) {
	st := &ACMEStorage{s: s, log: o.Log, locks: map[string]*heldLock{}}
	if st.log == nil {
		st.log = slog.Default()
	}
	if o.Cache != "" {
		if err := os.MkdirAll(o.Cache, 0o700); err != nil {
			return nil, fmt.Errorf("acme cache: %w", err)
		}
		st.local = &certmagic.FileStorage{Path: o.Cache}
	}
	if len(o.EncryptionKey) > 0 {
		k := sha256.Sum256(o.EncryptionKey)
		block, err := aes.NewCipher(k[:])
		if err != nil {
			return nil, err
		}
		if st.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
	}
	return st, nil
}

func (a *ACMEStorage) hash() string            { return a.s.Key("acme") }
func (a *ACMEStorage) mtimes() string          { return a.s.Key("acme-mtime") }
func (a *ACMEStorage) lockKey(n string) string { return a.s.Key("acme-lock:" + n) }

// secret reports whether key holds a private key.
func secret(key string) bool { return strings.HasSuffix(key, ".key") }

func (a *ACMEStorage) seal(key string, v []byte) ([]byte, error) {
	if a.aead == nil || !secret(key) {
		return v, nil
	}
	nonce := make([]byte, a.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := append([]byte(encMagic), nonce...)
	return a.aead.Seal(out, nonce, v, []byte(key)), nil
}

func (a *ACMEStorage) open(key string, v []byte) ([]byte, error) {
	rest, ok := strings.CutPrefix(string(v), encMagic)
	if !ok {
		return v, nil
	}
	if a.aead == nil {
		return nil, fmt.Errorf("acme storage: %s is encrypted and no encryption key is set ([acme] encryption_key_file)", key)
	}
	ns := a.aead.NonceSize()
	if len(rest) < ns {
		return nil, fmt.Errorf("acme storage: %s: encrypted value too short", key)
	}
	p, err := a.aead.Open(nil, []byte(rest[:ns]), []byte(rest[ns:]), []byte(key))
	if err != nil {
		return nil, fmt.Errorf("acme storage: %s: cannot decrypt (is the encryption key the fleet's?): %w", key, err)
	}
	return p, nil
}

// unreachable reports whether err says Redis did not answer (rather than
// answering "no such key"): the local copy is read then.
func unreachable(err error) bool {
	return err != nil && !errors.Is(err, redis.Nil) && !isRedisReply(err)
}

// Store writes value at key in Redis, then in the local copy.
func (a *ACMEStorage) Store(ctx context.Context, key string, value []byte) error {
	v, err := a.seal(key, value)
	if err != nil {
		return err
	}
	ctx, cancel := a.s.ctx(ctx)
	defer cancel()
	_, err = a.s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, a.hash(), key, v)
		p.HSet(ctx, a.mtimes(), key, time.Now().UnixMilli())
		return nil
	})
	if err != nil {
		return a.s.wrap(err)
	}
	a.cache(ctx, key, value)
	return nil
}

func (a *ACMEStorage) cache(ctx context.Context, key string, value []byte) {
	if a.local == nil {
		return
	}
	if old, err := a.local.Load(ctx, key); err == nil && string(old) == string(value) {
		return
	}
	if err := a.local.Store(ctx, key, value); err != nil {
		a.log.Warn("acme: cannot update the local copy of the certificate storage", "key", key, "err", err.Error())
	}
}

// Load reads key from Redis (refreshing the local copy), or from the local
// copy when Redis does not answer. A key that is in neither is
// fs.ErrNotExist.
func (a *ACMEStorage) Load(ctx context.Context, key string) ([]byte, error) {
	rctx, cancel := a.s.ctx(ctx)
	defer cancel()
	v, err := a.s.rdb.HGet(rctx, a.hash(), key).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, fs.ErrNotExist
	case unreachable(err) && a.local != nil:
		b, lerr := a.local.Load(ctx, key)
		if lerr != nil {
			return nil, fmt.Errorf("%w (and the local copy: %v)", a.s.wrap(err), lerr)
		}
		return b, nil
	case err != nil:
		return nil, a.s.wrap(err)
	}
	p, err := a.open(key, v)
	if err != nil {
		return nil, err
	}
	a.cache(ctx, key, p)
	return p, nil
}

// Delete removes key, and every key under it as a directory.
func (a *ACMEStorage) Delete(ctx context.Context, key string) error {
	keys, err := a.List(ctx, key, true)
	if err != nil {
		return err
	}
	keys = append(keys, key)
	rctx, cancel := a.s.ctx(ctx)
	defer cancel()
	if _, err := a.s.rdb.TxPipelined(rctx, func(p redis.Pipeliner) error {
		p.HDel(rctx, a.hash(), keys...)
		p.HDel(rctx, a.mtimes(), keys...)
		return nil
	}); err != nil {
		return a.s.wrap(err)
	}
	if a.local != nil {
		if err := a.local.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("acme: cannot delete from the local copy", "key", key, "err", err.Error())
		}
	}
	return nil
}

// Exists reports whether key is an item or a directory of items.
func (a *ACMEStorage) Exists(ctx context.Context, key string) bool {
	rctx, cancel := a.s.ctx(ctx)
	defer cancel()
	ok, err := a.s.rdb.HExists(rctx, a.hash(), key).Result()
	if err == nil && ok {
		return true
	}
	if unreachable(err) {
		return a.local != nil && a.local.Exists(ctx, key)
	}
	keys, err := a.List(ctx, key, true)
	return err == nil && len(keys) > 0
}

// List returns the keys under prefix: directly under it, or every one
// below it when recursive (directories included, as certmagic's
// FileStorage does).
func (a *ACMEStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	rctx, cancel := a.s.ctx(ctx)
	defer cancel()
	all, err := a.s.rdb.HKeys(rctx, a.hash()).Result()
	if unreachable(err) && a.local != nil {
		return a.local.List(ctx, prefix, recursive)
	}
	if err != nil {
		return nil, a.s.wrap(err)
	}
	dir := strings.TrimSuffix(prefix, "/") + "/"
	seen := map[string]bool{}
	var out []string
	for _, k := range all {
		rest, ok := strings.CutPrefix(k, dir)
		if !ok || rest == "" {
			continue
		}
		parts := strings.Split(rest, "/")
		n := 1
		if recursive {
			n = len(parts)
		}
		for i := 1; i <= n; i++ {
			p := path.Join(dir, strings.Join(parts[:i], "/"))
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	if len(out) == 0 {
		return nil, fs.ErrNotExist
	}
	return out, nil
}

// Stat describes key: its size and last write, or a directory.
func (a *ACMEStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	rctx, cancel := a.s.ctx(ctx)
	defer cancel()
	var size *redis.IntCmd
	var mt *redis.StringCmd
	_, err := a.s.rdb.Pipelined(rctx, func(p redis.Pipeliner) error {
		size = p.HStrLen(rctx, a.hash(), key)
		mt = p.HGet(rctx, a.mtimes(), key)
		return nil
	})
	if unreachable(err) {
		if a.local != nil {
			return a.local.Stat(ctx, key)
		}
		return certmagic.KeyInfo{}, a.s.wrap(err)
	}
	if n := size.Val(); n > 0 {
		ms, _ := strconv.ParseInt(mt.Val(), 10, 64)
		return certmagic.KeyInfo{Key: key, Size: n, Modified: time.UnixMilli(ms), IsTerminal: true}, nil
	}
	if keys, err := a.List(ctx, key, false); err == nil && len(keys) > 0 {
		return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
	}
	return certmagic.KeyInfo{}, fs.ErrNotExist
}

// The lock scripts act only when the lock still holds the caller's token,
// so an instance whose lock expired (and was taken by another) neither
// refreshes nor releases the new holder's.
var (
	acmeUnlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)
	acmeRefreshScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)
)

// Lock takes the fleet-wide lock name (SET NX PX), waiting until it is
// free or ctx ends; the lock is refreshed while held and expires ACMELockTTL
// after this instance stops refreshing it (it died, or lost Redis).
func (a *ACMEStorage) Lock(ctx context.Context, name string) error {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	key := a.lockKey(name)
	for {
		rctx, cancel := a.s.ctx(ctx)
		ok, err := a.s.rdb.SetNX(rctx, key, token, ACMELockTTL).Result()
		cancel()
		if err == nil && ok {
			break
		}
		if err != nil && ctx.Err() == nil {
			a.log.Debug("acme: lock: redis", "lock", name, "err", err.Error())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(acmeLockPoll):
		}
	}
	h := &heldLock{token: token, stop: make(chan struct{}), done: make(chan struct{})}
	a.mu.Lock()
	if old := a.locks[name]; old != nil { // a lock of ours that expired and was taken again
		close(old.stop)
	}
	a.locks[name] = h
	a.mu.Unlock()
	go a.refresh(key, h)
	return nil
}

func (a *ACMEStorage) refresh(key string, h *heldLock) {
	defer close(h.done)
	t := time.NewTicker(ACMELockTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			ctx, cancel := a.s.ctx(context.Background())
			n, err := acmeRefreshScript.Run(ctx, a.s.rdb, []string{key}, h.token, ACMELockTTL.Milliseconds()).Int()
			cancel()
			if err == nil && n == 0 {
				a.log.Warn("acme: a storage lock expired while held (Redis was unreachable?); another instance may take it", "lock", key)
				return
			}
		}
	}
}

// Unlock releases the lock name if this instance still holds it.
func (a *ACMEStorage) Unlock(ctx context.Context, name string) error {
	a.mu.Lock()
	h := a.locks[name]
	delete(a.locks, name)
	a.mu.Unlock()
	if h == nil {
		return fmt.Errorf("acme storage: unlock %q: not held", name)
	}
	close(h.stop)
	<-h.done
	rctx, cancel := a.s.ctx(ctx)
	defer cancel()
	if err := acmeUnlockScript.Run(rctx, a.s.rdb, []string{a.lockKey(name)}, h.token).Err(); err != nil {
		return a.s.wrap(err)
	}
	return nil
}

// String names the storage in certmagic's logs.
func (a *ACMEStorage) String() string { return "redis " + a.s.addr + " " + a.hash() }
