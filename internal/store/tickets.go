package store

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ticketScript returns the TLS session ticket key of each period of a
// rule, storing the caller's proposal for a period that has none (SET NX),
// so that every instance uses the first instance's key. ARGV: prefix,
// rule, ttl_ms, then period and proposed hex key pairs. Keys:
//
//	P tls-ticket:RULE:PERIOD   64 hex digits, expiring after ttl_ms
//
// They are not part of the versioned state (no INCR, no event): they are
// read where they are used, by the rotation of each terminating rule.
var ticketScript = redis.NewScript(`
local p, rule, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 2 do
  local key = p..'tls-ticket:'..rule..':'..ARGV[i]
  redis.call('SET', key, ARGV[i+1], 'NX', 'PX', ttl)
  out[#out+1] = redis.call('GET', key)
end
return out
`)

// TicketKeys implements tlsconf.TicketKeySource: the shared session ticket
// key of each period of rule scope, proposed[i] being stored for
// periods[i] when it has none yet, kept for ttl.
func (s *Store) TicketKeys(ctx context.Context, scope string, periods []int64, proposed [][32]byte, ttl time.Duration) ([][32]byte, error) {
	if len(periods) != len(proposed) {
		return nil, fmt.Errorf("ticket keys: %d periods, %d proposals", len(periods), len(proposed))
	}
	args := []any{s.prefix, scope, max(ttl.Milliseconds(), 1)}
	for i, p := range periods {
		args = append(args, p, hex.EncodeToString(proposed[i][:]))
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	v, err := ticketScript.Run(ctx, s.rdb, nil, args...).Result()
	if err != nil {
		return nil, s.wrap(err)
	}
	list, ok := v.([]any)
	if !ok || len(list) != len(periods) {
		return nil, fmt.Errorf("redis %s: ticket keys: unexpected reply %v", s.addr, v)
	}
	keys := make([][32]byte, len(list))
	for i, x := range list {
		str, _ := x.(string)
		b, err := hex.DecodeString(str)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("redis %s: ticket key %stls-ticket:%s:%d is not 64 hex digits", s.addr, s.prefix, scope, periods[i])
		}
		copy(keys[i][:], b)
	}
	return keys, nil
}
