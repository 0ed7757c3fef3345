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
// so that every instance uses the first instance's key. KEYS: one per
// period, P tls-ticket:RULE:PERIOD (64 hex digits, expiring after ttl_ms);
// ARGV: ttl_ms, then the proposed hex key of each period in order. The keys
// are declared, and share the prefix's hash tag, so a Redis Cluster routes
// the script.
//
// They are not part of the versioned state (no INCR, no event): they are
// read where they are used, by the rotation of each terminating rule.
var ticketScript = redis.NewScript(`
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i+1], 'NX', 'PX', ttl)
  out[#out+1] = redis.call('GET', KEYS[i])
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
	keys := make([]string, len(periods))
	args := []any{max(ttl.Milliseconds(), 1)}
	for i, p := range periods {
		keys[i] = fmt.Sprintf("%stls-ticket:%s:%d", s.prefix, scope, p)
		args = append(args, hex.EncodeToString(proposed[i][:]))
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	v, err := ticketScript.Run(ctx, s.rdb, keys, args...).Result()
	if err != nil {
		return nil, s.wrap(err)
	}
	list, ok := v.([]any)
	if !ok || len(list) != len(periods) {
		return nil, fmt.Errorf("redis %s: ticket keys: unexpected reply %v", s.addr, v)
	}
	out := make([][32]byte, len(list))
	for i, x := range list {
		str, _ := x.(string)
		b, err := hex.DecodeString(str)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("redis %s: ticket key %s is not 64 hex digits", s.addr, keys[i])
		}
		copy(out[i][:], b)
	}
	return out, nil
}
