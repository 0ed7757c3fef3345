package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
)

// Snapshot is the whole dynamic state at one version.
type Snapshot struct {
	// Epoch names the data set; a Redis that lost its data starts a new
	// one, and its versions start again.
	Epoch string `json:"epoch"`
	// Version is the global version the snapshot was read at.
	Version int64 `json:"version"`
	// ConfigVersion is the version of the stored config (0: none).
	ConfigVersion int64 `json:"config_version"`
	// Backends are the valid registrations, by rule then id.
	Backends []Registration `json:"backends"`
	// States are the valid shared states, by rule then id.
	States []State `json:"states"`

	// Problems are the entries that were rejected (not in Backends or
	// States), each naming its key.
	Problems []Problem `json:"-"`
	// Now is when it was read, by Redis's clock.
	Now time.Time `json:"-"`
	// NextExpiry is the earliest Expires of Backends (zero: none).
	NextExpiry time.Time `json:"-"`
}

// Newer reports whether s is newer than prev (nil: nothing yet): a later
// version of the same epoch, or another epoch. An older or equal snapshot is
// never applied over a newer one.
func (s *Snapshot) Newer(prev *Snapshot) bool {
	return prev == nil || s.Epoch != prev.Epoch || s.Version > prev.Version
}

// Problem is an entry of Redis that could not be used.
type Problem struct {
	Key, Field, Msg string
}

func (p Problem) String() string {
	return fmt.Sprintf("redis key %s field %q: %s", p.Key, p.Field, p.Msg)
}

type regJSON struct {
	Address   string `json:"address"`
	Weight    int    `json:"weight"`
	ExpiresMS int64  `json:"expires_ms"`
	Version   int64  `json:"version"`
}

// Snapshot reads the whole dynamic state, reaping the registrations that
// expired.
func (s *Store) Snapshot(ctx context.Context) (*Snapshot, error) {
	// Once, never retried here: Syncer has its own retry loop, and must
	// not wait at start-up for a Redis that is down.
	v, err := s.run(ctx, snapshotScript, s.keys("rules", "config"))
	if err != nil {
		return nil, s.wrap(err)
	}
	top, _ := v.([]any)
	if len(top) != 6 {
		return nil, fmt.Errorf("redis %s: unexpected snapshot reply %v", s.addr, v)
	}
	snap := &Snapshot{Backends: []Registration{}, States: []State{}}
	snap.Epoch, _ = top[0].(string)
	snap.Version, _ = top[1].(int64)
	nowMS, _ := top[2].(int64)
	snap.Now = time.UnixMilli(nowMS)
	if next, _ := top[3].(int64); next > 0 {
		snap.NextExpiry = time.UnixMilli(next)
	}
	snap.ConfigVersion, _ = top[4].(int64)
	rules, _ := top[5].([]any)
	for _, r := range rules {
		rr, _ := r.([]any)
		if len(rr) != 3 {
			continue
		}
		rule, _ := rr[0].(string)
		bs, _ := rr[1].([]any)
		for i := 0; i+1 < len(bs); i += 2 {
			id, _ := bs[i].(string)
			raw, _ := bs[i+1].(string)
			reg, err := decodeReg(rule, id, raw)
			if err != nil {
				snap.Problems = append(snap.Problems, Problem{Key: s.Key("backends:" + rule), Field: id, Msg: err.Error()})
				continue
			}
			snap.Backends = append(snap.Backends, reg)
		}
		ss, _ := rr[2].([]any)
		for i := 0; i+1 < len(ss); i += 2 {
			id, _ := ss[i].(string)
			raw, _ := ss[i+1].(string)
			st, err := decodeState(rule, id, raw)
			if err != nil {
				snap.Problems = append(snap.Problems, Problem{Key: s.Key("state:" + rule), Field: id, Msg: err.Error()})
				continue
			}
			snap.States = append(snap.States, st)
		}
	}
	sortRegs(snap.Backends)
	sort.Slice(snap.States, func(i, j int) bool {
		a, b := snap.States[i], snap.States[j]
		return a.Rule < b.Rule || a.Rule == b.Rule && a.ID < b.ID
	})
	sort.Slice(snap.Problems, func(i, j int) bool {
		a, b := snap.Problems[i], snap.Problems[j]
		return a.Key < b.Key || a.Key == b.Key && a.Field < b.Field
	})
	return snap, nil
}

// decodeReg decodes and checks one registration written by anything.
func decodeReg(rule, id, raw string) (Registration, error) {
	var j regJSON
	if err := strictJSON(raw, &j); err != nil {
		return Registration{}, err
	}
	if err := CheckRegistration(rule, id, j.Address, j.Weight, 0); err != nil {
		return Registration{}, err
	}
	if j.Version <= 0 {
		return Registration{}, fmt.Errorf("%w: missing version", ErrInvalid)
	}
	r := Registration{Rule: rule, ID: id, Address: j.Address, Weight: j.Weight, Version: j.Version}
	if j.ExpiresMS > 0 {
		r.Expires = time.UnixMilli(j.ExpiresMS)
	}
	return r, nil
}

func decodeState(rule, id, raw string) (State, error) {
	var j stateJSON
	if err := strictJSON(raw, &j); err != nil {
		return State{}, err
	}
	if j.Weight < 0 || j.Weight > config.MaxWeight {
		return State{}, fmt.Errorf("%w: weight must be from 1 to %d, got %d", ErrInvalid, config.MaxWeight, j.Weight)
	}
	if j.Version == nil || *j.Version <= 0 {
		return State{}, fmt.Errorf("%w: missing version", ErrInvalid)
	}
	return State{Rule: rule, ID: id, Draining: j.Draining, Enabled: j.Enabled, Weight: j.Weight, Version: *j.Version}, nil
}

// strictJSON decodes one JSON object with no unknown fields.
func strictJSON(raw string, v any) error {
	dec := json.NewDecoder(bytes.NewReader([]byte(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w JSON %q: %v", ErrInvalid, clip(raw), err)
	}
	if dec.More() {
		return fmt.Errorf("%w JSON %q: trailing data", ErrInvalid, clip(raw))
	}
	return nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
