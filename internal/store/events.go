package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"

	"github.com/redis/go-redis/v9"
)

// Events is a subscription to the change announcements.
type Events struct {
	s  *Store
	ps *redis.PubSub
}

// Subscribe subscribes to the events channel and waits until Redis
// confirms, so that no change made after it returns is missed.
func (s *Store) Subscribe(ctx context.Context) (*Events, error) {
	// Bounded like a command: finding the master (Sentinel) and dialing
	// it must not hang a session. The subscription outlives ctx.
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	ps := s.rdb.Subscribe(ctx)
	if err := ps.Subscribe(ctx, s.Channel()); err != nil {
		ps.Close()
		return nil, s.wrap(err)
	}
	msg, err := ps.ReceiveTimeout(ctx, s.timeout)
	if err != nil {
		ps.Close()
		return nil, s.wrap(err)
	}
	if _, ok := msg.(*redis.Subscription); !ok {
		ps.Close()
		return nil, fmt.Errorf("redis %s: unexpected reply to SUBSCRIBE: %v", s.addr, msg)
	}
	return &Events{s: s, ps: ps}, nil
}

// Next waits up to timeout for the next event and returns its payload
// ("VERSION KIND DETAIL"); timedOut is true when none came. Any error means
// the subscription is broken: Close it and subscribe again.
func (e *Events) Next(ctx context.Context, timeout time.Duration) (payload string, timedOut bool, err error) {
	for {
		msg, err := e.ps.ReceiveTimeout(ctx, timeout)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return "", true, nil
		case err != nil:
			return "", false, e.s.wrap(err)
		}
		switch m := msg.(type) {
		case *redis.Message:
			return m.Payload, false, nil
		case *redis.Subscription:
			// Subscribed again after go-redis reconnected by itself:
			// events may have been missed, so report one.
			return "resubscribed", false, nil
		}
	}
}

// Close ends the subscription; a Next in progress returns an error.
func (e *Events) Close() error { return e.ps.Close() }

// Switches returns a channel that receives the new master's address each
// time the sentinels announce a failover of the master (+switch-master),
// for a Store on Sentinel; nil otherwise. A subscription on the former
// master would hear nothing of the changes made on the new one until the
// sentinels make it a replica (seconds later), so Syncer subscribes again
// at once. It listens to every sentinel (any one of them may be down); the
// subscriptions end with Close.
func (s *Store) Switches() <-chan string {
	if s.kind != config.RedisSentinel {
		return nil
	}
	s.swOnce.Do(func() {
		s.switches = make(chan string, 1)
		for _, addr := range s.sentinels {
			sc := redis.NewSentinelClient(&redis.Options{Addr: addr, Username: s.sentinelUser, Password: s.sentinelPassword,
				TLSConfig: s.tls, DialTimeout: s.timeout, Protocol: 2, DisableIdentity: true})
			ps := sc.Subscribe(context.Background(), "+switch-master")
			s.closers = append(s.closers, ps.Close, sc.Close)
			go func() {
				for m := range ps.Channel() {
					// "MASTER OLD-IP OLD-PORT NEW-IP NEW-PORT"
					f := strings.Fields(m.Payload)
					if len(f) != 5 || f[0] != s.master {
						continue
					}
					select {
					case s.switches <- net.JoinHostPort(f[3], f[4]):
					default: // one already waits: the subscriber resubscribes once for both
					}
				}
			}()
		}
	})
	return s.switches
}
