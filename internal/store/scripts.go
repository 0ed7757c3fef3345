package store

import "github.com/redis/go-redis/v9"

// The Lua scripts below are the only writers (and the only snapshot reader)
// of the keys under the prefix, so that every change is atomic: the data,
// the global version (INCR) and the event on the pub/sub channel change
// together. Times are Redis's own clock (TIME), so the hosts' clocks never
// matter for expiry. Every script takes the key prefix as ARGV[1] and a
// proposed epoch as ARGV[2] (set only when Redis has none: a Redis that lost
// its data gets a new epoch, which tells instances that versions restarted).
//
// Every script declares the keys it touches in KEYS (KEYS[1] version,
// KEYS[2] epoch, then its own), so that a Redis Cluster routes it to the
// node of their slot. The snapshot also reads the per-rule hashes of every
// rule in P rules, which it cannot name before it runs: it builds them from
// the prefix, and they are in the same slot because a cluster's prefix holds
// a {…} hash tag (config.HasHashTag), which makes every key of a fleet hash
// the same.
//
// Keys (P is the prefix):
//
//	P version            the global version, INCR on every change
//	P epoch              random id of this data set
//	P rules              set of rule names with registrations or state
//	P backends:RULE      hash id -> {"address","weight","expires_ms","version"}
//	P state:RULE         hash id -> {"draining","enabled","weight","version"}
//	P config             hash toml, version, pushed_ms, source
//	P events             pub/sub channel: "VERSION KIND DETAIL"

const luaPrelude = `
local p = ARGV[1]
redis.call('SETNX', KEYS[2], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function bump(kind, detail)
  local v = redis.call('INCR', KEYS[1])
  redis.call('PUBLISH', p..'events', v..' '..kind..' '..detail)
  return v
end
`

// addScript registers or renews a backend. ARGV: prefix, epoch, rule, id,
// address, weight, ttl_ms (0: none); KEYS[3] rules, KEYS[4] backends:RULE.
// A renewal of an unchanged registration only moves its expiry: no new
// version, no event. Returns {version, changed}.
var addScript = redis.NewScript(luaPrelude + `
local rule, id, addr, weight, ttl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local key = KEYS[4]
local expires = 0
if ttl > 0 then expires = now + ttl end
local old = redis.call('HGET', key, id)
if old then
  local ok, o = pcall(cjson.decode, old)
  if ok and type(o) == 'table' and o.address == addr and tonumber(o.weight) == weight and tonumber(o.version) then
    local oe = tonumber(o.expires_ms) or 0
    if oe == 0 or oe > now then
      o.expires_ms = expires
      redis.call('HSET', key, id, cjson.encode(o))
      return {tonumber(o.version), 0}
    end
  end
end
local v = bump('backend', rule..'/'..id)
redis.call('HSET', key, id, cjson.encode({address = addr, weight = weight, expires_ms = expires, version = v}))
redis.call('SADD', KEYS[3], rule)
return {v, 1}
`)

// removeScript removes a registration and its shared state. ARGV: prefix,
// epoch, rule, id; KEYS[3] backends:RULE, KEYS[4] state:RULE. Returns the
// new version, or 0 when it was not registered.
var removeScript = redis.NewScript(luaPrelude + `
local rule, id = ARGV[3], ARGV[4]
if redis.call('HDEL', KEYS[3], id) == 0 then return 0 end
redis.call('HDEL', KEYS[4], id)
return bump('removed', rule..'/'..id)
`)

// stateScript merges a change into a backend's shared runtime state.
// ARGV: prefix, epoch, rule, id, change (a JSON object of draining, enabled,
// weight); KEYS[3] rules, KEYS[4] state:RULE. Returns the new version.
var stateScript = redis.NewScript(luaPrelude + `
local rule, id = ARGV[3], ARGV[4]
local key = KEYS[4]
local cur = {}
local old = redis.call('HGET', key, id)
if old then
  local ok, o = pcall(cjson.decode, old)
  if ok and type(o) == 'table' then cur = o end
end
for k, v in pairs(cjson.decode(ARGV[5])) do cur[k] = v end
local v = bump('state', rule..'/'..id)
cur.version = v
redis.call('HSET', key, id, cjson.encode(cur))
redis.call('SADD', KEYS[3], rule)
return v
`)

// resetScript deletes a backend's shared runtime state. ARGV: prefix,
// epoch, rule, id; KEYS[3] state:RULE. Returns the new version, or 0 when
// there was none.
var resetScript = redis.NewScript(luaPrelude + `
local rule, id = ARGV[3], ARGV[4]
if redis.call('HDEL', KEYS[3], id) == 0 then return 0 end
return bump('reset', rule..'/'..id)
`)

// pushScript stores a config. ARGV: prefix, epoch, toml, source; KEYS[3]
// config. Returns the new version.
var pushScript = redis.NewScript(luaPrelude + `
local v = bump('config', ARGV[4])
redis.call('HSET', KEYS[3], 'toml', ARGV[3], 'version', v, 'pushed_ms', now, 'source', ARGV[4])
return v
`)

// snapshotScript reads the whole dynamic state at one version. It first
// reaps expired registrations (with their state), as one change with one
// event, so that what an instance applies only ever changes with the
// version. ARGV: prefix, epoch; KEYS[3] rules, KEYS[4] config (and, built
// from the prefix, backends:RULE and state:RULE of each rule). Returns {epoch, version, now_ms,
// next_expiry_ms (-1: none), config_version, {{rule, backends, states}...}}.
var snapshotScript = redis.NewScript(luaPrelude + `
local out, reaped, nextexp = {}, {}, -1
for _, r in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local bk, sk = p..'backends:'..r, p..'state:'..r
  local b, keep = redis.call('HGETALL', bk), {}
  for i = 1, #b, 2 do
    local ok, o = pcall(cjson.decode, b[i+1])
    local exp = 0
    if ok and type(o) == 'table' then exp = tonumber(o.expires_ms) or 0 end
    if exp > 0 and exp <= now then
      redis.call('HDEL', bk, b[i])
      redis.call('HDEL', sk, b[i])
      table.insert(reaped, r..'/'..b[i])
    else
      if exp > 0 and (nextexp < 0 or exp < nextexp) then nextexp = exp end
      table.insert(keep, b[i])
      table.insert(keep, b[i+1])
    end
  end
  local s = redis.call('HGETALL', sk)
  if #keep == 0 and #s == 0 then
    redis.call('SREM', KEYS[3], r)
  else
    table.insert(out, {r, keep, s})
  end
end
local v
if #reaped > 0 then
  v = bump('expired', table.concat(reaped, ','))
else
  v = tonumber(redis.call('GET', KEYS[1]) or '0')
end
local cv = tonumber(redis.call('HGET', KEYS[4], 'version') or '0')
return {redis.call('GET', KEYS[2]), v, now, nextexp, cv, out}
`)
