package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// limitScript is one instance's sync of the fleet-wide access limits: it
// stores what this instance has open, adds what it admitted, and reads the
// others'. It is not part of the versioned state (no INCR, no event). Keys
// (P the prefix), all declared in KEYS:
//
//	P limit:instances      sorted set: instance id -> Redis time (ms) of its last sync
//	P limit:conns:ID       hash "RULE/IP" -> that instance's open connections; expires ttl_ms after its last sync
//	P limit:rate:KEY       admissions counter of KEY ("RULE" or "RULE/IP") by the whole fleet; expires rate_ttl_ms after its last sync
//
// KEYS: instances, this instance's conns hash, the conns hashes of the
// other instances seen by the last sync (M of them), then one rate counter
// per item that has one, in order. ARGV: id, ttl_ms, rate_ttl_ms, M, then
// per item: field, conns ("" none, "?" read only, else the count to
// store; 0 deletes), delta ("" none, else the count to add). An instance
// that stops syncing leaves the sorted set and its hash expires after
// ttl_ms, so it stops counting. Returns {live ids, others' conns per item,
// fleet counter per item}.
var limitScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl, rttl, m = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 4)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local others, totals = {}, {}
local r = 2 + m
local n = (#ARGV - 4) / 3
for i = 0, n - 1 do
  local f, c, d = ARGV[5 + 3*i], ARGV[6 + 3*i], ARGV[7 + 3*i]
  local o = 0
  if c ~= '' then
    if c == '0' then
      redis.call('HDEL', KEYS[2], f)
    elseif c ~= '?' then
      redis.call('HSET', KEYS[2], f, c)
    end
    for j = 3, 2 + m do
      o = o + (tonumber(redis.call('HGET', KEYS[j], f)) or 0)
    end
  end
  others[i + 1] = o
  local tot = 0
  if d ~= '' then
    r = r + 1
    tot = redis.call('INCRBY', KEYS[r], d)
    redis.call('PEXPIRE', KEYS[r], rttl)
  end
  totals[i + 1] = tot
end
redis.call('PEXPIRE', KEYS[2], ttl)
return {live, others, totals}
`)

// LimitItem is one counter of a limits sync (proxy.FleetItem's fields).
// Conns < 0: none; else this instance's open connections, stored when
// Store is set. Delta < 0: no rate counter; else added to the fleet's.
// SyncLimits fills Others and Total.
type LimitItem struct {
	Field      string
	Conns      int
	StoreConns bool
	Delta      int64
	Others     int
	Total      int64
}

// limitChunk bounds the items of one script call; the calls of a sync are
// pipelined.
const limitChunk = 500

// SyncLimits runs one sync of the fleet-wide limits for instance id: peers
// are the other instances the last sync saw (their hashes are read), ttl
// how long this instance counts after its last sync, rateTTL how long an
// unused counter lives. It returns the instances now live, id included.
func (s *Store) SyncLimits(ctx context.Context, id string, peers []string, items []LimitItem, ttl, rateTTL time.Duration) ([]string, error) {
	others := make([]string, 0, len(peers))
	for _, p := range peers {
		if p != id {
			others = append(others, s.Key("limit:conns:"+p))
		}
	}
	base := append([]string{s.Key("limit:instances"), s.Key("limit:conns:" + id)}, others...)
	exec := func() ([]*redis.Cmd, error) {
		pipe := s.rdb.Pipeline()
		var cmds []*redis.Cmd
		for start := 0; start == 0 || start < len(items); start += limitChunk {
			keys := append([]string(nil), base...)
			args := []any{id, max(ttl.Milliseconds(), 1), max(rateTTL.Milliseconds(), 1), len(others)}
			for _, it := range items[start:min(start+limitChunk, len(items))] {
				c, d := "", ""
				switch {
				case it.Conns < 0:
				case it.StoreConns:
					c = strconv.Itoa(it.Conns)
				default:
					c = "?"
				}
				if it.Delta >= 0 {
					d = strconv.FormatInt(it.Delta, 10)
					keys = append(keys, s.Key("limit:rate:"+it.Field))
				}
				args = append(args, it.Field, c, d)
			}
			cmds = append(cmds, limitScript.EvalSha(ctx, pipe, keys, args...))
		}
		_, err := pipe.Exec(ctx)
		return cmds, err
	}
	cmds, err := exec()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// A pipeline cannot fall back to EVAL per call as Script.Run does:
		// load the script (on every node of a cluster it is routed to) and run again.
		if err = limitScript.Load(ctx, s.rdb).Err(); err == nil {
			cmds, err = exec()
		}
	}
	if err != nil {
		return nil, s.wrap(err)
	}
	var live []string
	for ci, cmd := range cmds {
		v, _ := cmd.Result()
		reply, ok := v.([]any)
		if !ok || len(reply) != 3 {
			return nil, fmt.Errorf("redis %s: limits sync: unexpected reply %v", s.addr, v)
		}
		ids, _ := reply[0].([]any)
		os, _ := reply[1].([]any)
		ts, _ := reply[2].([]any)
		chunk := items[ci*limitChunk : min((ci+1)*limitChunk, len(items))]
		if len(os) != len(chunk) || len(ts) != len(chunk) {
			return nil, fmt.Errorf("redis %s: limits sync: %d/%d answers for %d items", s.addr, len(os), len(ts), len(chunk))
		}
		if ci == 0 {
			for _, x := range ids {
				if str, ok := x.(string); ok {
					live = append(live, str)
				}
			}
		}
		for i := range chunk {
			o, _ := os[i].(int64)
			t, _ := ts[i].(int64)
			chunk[i].Others, chunk[i].Total = int(o), t
		}
	}
	return live, nil
}
