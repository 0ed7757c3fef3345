package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// cacheFile is the cache's content: the last dynamic state and stored
// config an instance applied, for a start-up while Redis is down.
type cacheFile struct {
	Comment string        `json:"comment"`
	Prefix  string        `json:"key_prefix"`
	Written time.Time     `json:"written"`
	State   *Snapshot     `json:"state"`
	Config  *cachedConfig `json:"config,omitempty"`
}

type cachedConfig struct {
	Epoch    string    `json:"epoch"`
	Version  int64     `json:"version"`
	TOML     string    `json:"toml"`
	PushedAt time.Time `json:"pushed_at"`
	Source   string    `json:"source"`
}

func (c *cachedConfig) stored() *StoredConfig {
	return &StoredConfig{Version: c.Version, TOML: []byte(c.TOML), PushedAt: c.PushedAt, Source: c.Source}
}

// writeCache replaces the cache file atomically: a temporary file in the
// same directory, synced, then renamed over it. path "" writes nothing.
func writeCache(path, prefix string, snap *Snapshot, cfg *StoredConfig, cfgEpoch string) error {
	if path == "" || snap == nil {
		return nil
	}
	c := cacheFile{Comment: "dynamic-proxy: the last state read from Redis; rewritten on every change",
		Prefix: prefix, Written: time.Now().UTC(), State: snap}
	if cfg != nil {
		c.Config = &cachedConfig{Epoch: cfgEpoch, Version: cfg.Version, TOML: string(cfg.TOML), PushedAt: cfg.PushedAt, Source: cfg.Source}
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// readCache reads and checks the cache file.
func readCache(path, prefix string) (*cacheFile, error) {
	if path == "" {
		return nil, errors.New("no cache file")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c cacheFile
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s: invalid JSON: %w", path, err)
	}
	if c.State == nil {
		return nil, fmt.Errorf("%s: no state", path)
	}
	if c.Prefix != prefix {
		return nil, fmt.Errorf("%s: written for key_prefix %q, not %q", path, c.Prefix, prefix)
	}
	// Check the entries as if read from Redis: a damaged file must not
	// bring a bad backend in.
	regs := c.State.Backends[:0]
	for _, r := range c.State.Backends {
		if err := CheckRegistration(r.Rule, r.ID, r.Address, r.Weight, 0); err != nil {
			return nil, fmt.Errorf("%s: backend %s/%s: %w", path, r.Rule, r.ID, err)
		}
		regs = append(regs, r)
	}
	c.State.Backends = regs
	for _, s := range c.State.States {
		if s.Rule == "" || s.ID == "" || s.Weight < 0 || s.Version <= 0 {
			return nil, fmt.Errorf("%s: invalid state entry %+v", path, s)
		}
	}
	return &c, nil
}

// CheckCacheDir reports whether the cache file can be written where path
// says, so that a typo fails at start-up rather than at the first change.
func CheckCacheDir(path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("redis.cache_file %q: %w", path, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("redis.cache_file %q: %s is not a directory", path, dir)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fmt.Errorf("redis.cache_file %q: is a directory", path)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".check*")
	if err != nil {
		return fmt.Errorf("redis.cache_file %q: cannot write in %s: %w", path, dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}
