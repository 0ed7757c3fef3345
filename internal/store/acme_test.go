package store

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
)

func acmeStorage(t *testing.T, s *Store, cache string, key []byte) *ACMEStorage {
	t.Helper()
	a, err := s.ACMEStorage(ACMEStorageOptions{Cache: cache, EncryptionKey: key})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestACMEStorageItems: what is stored is loaded back, listed, stat'ed and
// deleted as certmagic's FileStorage does; a missing key is fs.ErrNotExist.
func TestACMEStorageItems(t *testing.T) {
	srv := redistest.Start(t)
	a := acmeStorage(t, open(t, srv.URL(), "fleet:"), "", nil)
	ctx := context.Background()
	if _, err := a.Load(ctx, "nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key: %v, want fs.ErrNotExist", err)
	}
	items := map[string]string{
		"certificates/ca/a.test/a.test.crt": "CRT", "certificates/ca/a.test/a.test.key": "KEY",
		"certificates/ca/b.test/b.test.crt": "CRT2", "acme/ca/users/me/me.json": "{}",
	}
	for k, v := range items {
		if err := a.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range items {
		if got, err := a.Load(ctx, k); err != nil || string(got) != v {
			t.Errorf("Load(%s) = %q, %v", k, got, err)
		}
	}
	got, err := a.List(ctx, "certificates/ca", false)
	sort.Strings(got)
	if err != nil || strings.Join(got, " ") != "certificates/ca/a.test certificates/ca/b.test" {
		t.Errorf("List non-recursive = %v, %v", got, err)
	}
	got, _ = a.List(ctx, "certificates", true)
	if len(got) != 6 { // ca, a.test, b.test and the three files
		t.Errorf("List recursive = %v", got)
	}
	if !a.Exists(ctx, "certificates/ca/a.test") || !a.Exists(ctx, "acme/ca/users/me/me.json") || a.Exists(ctx, "certificates/zz") {
		t.Error("Exists wrong")
	}
	ki, err := a.Stat(ctx, "certificates/ca/a.test/a.test.crt")
	if err != nil || ki.Size != 3 || !ki.IsTerminal || time.Since(ki.Modified) > time.Minute {
		t.Errorf("Stat = %+v, %v", ki, err)
	}
	if ki, err := a.Stat(ctx, "certificates/ca"); err != nil || ki.IsTerminal {
		t.Errorf("Stat of a directory = %+v, %v", ki, err)
	}
	if err := a.Delete(ctx, "certificates/ca/a.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Load(ctx, "certificates/ca/a.test/a.test.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after deleting its directory: %v", err)
	}
	if _, err := a.Load(ctx, "certificates/ca/b.test/b.test.crt"); err != nil {
		t.Errorf("a sibling was deleted: %v", err)
	}
}

// TestACMEStorageEncryptsPrivateKeys: with an encryption key, a ".key"
// value is not in Redis as it is, reads back with the key, fails without
// it or with another, and cannot be moved to another name.
func TestACMEStorageEncryptsPrivateKeys(t *testing.T) {
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "fleet:")
	a := acmeStorage(t, s, "", []byte("the fleet's secret"))
	ctx := context.Background()
	pem := []byte("-----BEGIN EC PRIVATE KEY-----\nsecret\n-----END EC PRIVATE KEY-----\n")
	if err := a.Store(ctx, "certificates/ca/a.test/a.test.key", pem); err != nil {
		t.Fatal(err)
	}
	if err := a.Store(ctx, "certificates/ca/a.test/a.test.crt", []byte("public")); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	raw, err := rdb.HGet(ctx, "fleet:acme", "certificates/ca/a.test/a.test.key").Bytes()
	if err != nil || bytes.Contains(raw, []byte("secret")) || !bytes.HasPrefix(raw, []byte(encMagic)) {
		t.Fatalf("raw value in Redis: %q, %v; want it encrypted", raw, err)
	}
	if crt, _ := rdb.HGet(ctx, "fleet:acme", "certificates/ca/a.test/a.test.crt").Result(); crt != "public" {
		t.Errorf("certificate stored as %q; only private keys are encrypted", crt)
	}
	if got, err := a.Load(ctx, "certificates/ca/a.test/a.test.key"); err != nil || !bytes.Equal(got, pem) {
		t.Errorf("Load with the key = %q, %v", got, err)
	}
	if _, err := acmeStorage(t, s, "", nil).Load(ctx, "certificates/ca/a.test/a.test.key"); err == nil || !strings.Contains(err.Error(), "encryption_key_file") {
		t.Errorf("Load without a key: %v", err)
	}
	if _, err := acmeStorage(t, s, "", []byte("another")).Load(ctx, "certificates/ca/a.test/a.test.key"); err == nil {
		t.Error("Load with another key succeeded")
	}
	rdb.HSet(ctx, "fleet:acme", "certificates/ca/b.test/b.test.key", raw)
	if _, err := a.Load(ctx, "certificates/ca/b.test/b.test.key"); err == nil {
		t.Error("a value moved to another name decrypted")
	}
}

// TestACMEStorageLocalCopy: what was read or written is answered from the
// local directory (0700) when Redis does not answer, and a key Redis says
// is missing is missing even when the copy has it... until Redis is gone.
func TestACMEStorageLocalCopy(t *testing.T) {
	srv := redistest.Start(t)
	dir := filepath.Join(t.TempDir(), "acme")
	a := acmeStorage(t, open(t, srv.URL(), "fleet:"), dir, []byte("k"))
	ctx := context.Background()
	if err := a.Store(ctx, "certificates/ca/a.test/a.test.key", []byte("KEY")); err != nil {
		t.Fatal(err)
	}
	if err := a.Store(ctx, "certificates/ca/a.test/a.test.crt", []byte("CRT")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("cache directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	srv.Kill()
	if got, err := a.Load(ctx, "certificates/ca/a.test/a.test.key"); err != nil || string(got) != "KEY" {
		t.Errorf("Load with Redis down = %q, %v; want the local copy", got, err)
	}
	if !a.Exists(ctx, "certificates/ca/a.test/a.test.crt") {
		t.Error("Exists with Redis down: false")
	}
	if got, err := a.List(ctx, "certificates/ca", false); err != nil || len(got) != 1 {
		t.Errorf("List with Redis down = %v, %v", got, err)
	}
	if err := a.Store(ctx, "x", []byte("y")); err == nil {
		t.Error("Store with Redis down succeeded: writes go to Redis first")
	}
	if err := a.Lock(shortCtx(t), "x"); err == nil {
		t.Error("Lock with Redis down succeeded")
	}
}

func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestACMEStorageLock: one holder at a time across instances; the lock is
// refreshed past its TTL while held; Unlock frees it for the next at once;
// a holder that stops refreshing (killed) loses it within the TTL; an
// expired holder's Unlock does not release the new holder's lock.
func TestACMEStorageLock(t *testing.T) {
	srv := redistest.Start(t)
	a := acmeStorage(t, open(t, srv.URL(), "fleet:"), "", nil)
	b := acmeStorage(t, open(t, srv.URL(), "fleet:"), "", nil)
	ctx := context.Background()
	if err := a.Lock(ctx, "issue_cert_a.test"); err != nil {
		t.Fatal(err)
	}
	var got atomic.Bool
	done := make(chan error, 1)
	go func() {
		err := b.Lock(ctx, "issue_cert_a.test")
		got.Store(true)
		done <- err
	}()
	// Held past its TTL: the refresh keeps it.
	time.Sleep(ACMELockTTL + 2*time.Second)
	if got.Load() {
		t.Fatal("b took a lock a holds (did the refresh lapse?)")
	}
	if err := a.Unlock(ctx, "issue_cert_a.test"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("b did not get the lock a released")
	}
	// b "dies": its refresh stops without an unlock; a gets it after the TTL.
	b.mu.Lock()
	h := b.locks["issue_cert_a.test"]
	b.mu.Unlock()
	close(h.stop)
	<-h.done
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, 3*ACMELockTTL)
	defer cancel()
	if err := a.Lock(lctx, "issue_cert_a.test"); err != nil {
		t.Fatalf("a after b stopped refreshing: %v", err)
	}
	if d := time.Since(start); d > ACMELockTTL+2*time.Second {
		t.Errorf("the dead holder's lock lasted %v; want at most about %v", d, ACMELockTTL)
	}
	// b's late unlock must not free a's lock.
	b.mu.Lock()
	b.locks["issue_cert_a.test"] = &heldLock{token: h.token, stop: make(chan struct{}), done: h.done}
	b.mu.Unlock()
	_ = b.Unlock(ctx, "issue_cert_a.test")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	if n, _ := rdb.Exists(ctx, "fleet:acme-lock:issue_cert_a.test").Result(); n != 1 {
		t.Error("an expired holder's Unlock released the new holder's lock")
	}
	if err := a.Unlock(ctx, "issue_cert_a.test"); err != nil {
		t.Fatal(err)
	}
}
