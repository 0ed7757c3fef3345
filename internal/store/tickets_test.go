package store

import (
	"context"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
)

// TestTicketKeysFirstProposalWins: the first instance's proposal for a
// period is every instance's key; a later proposal for the same period
// changes nothing; keys expire after the ttl asked for and are scoped by
// rule and prefix.
func TestTicketKeysFirstProposalWins(t *testing.T) {
	srv := redistest.Start(t)
	a := open(t, srv.URL(), "{fleet}:")
	b := open(t, srv.URL(), "{fleet}:")
	other := open(t, srv.URL(), "{other}:")
	ctx := context.Background()
	k := func(x byte) [32]byte { var k [32]byte; k[0], k[31] = x, x; return k }

	got, err := a.TicketKeys(ctx, "web", []int64{10, 11}, [][32]byte{k(1), k(2)}, time.Hour)
	if err != nil || got[0] != k(1) || got[1] != k(2) {
		t.Fatalf("first: %v, %v", got, err)
	}
	got, err = b.TicketKeys(ctx, "web", []int64{11, 12, 10}, [][32]byte{k(9), k(3), k(9)}, time.Hour)
	if err != nil || got[0] != k(2) || got[1] != k(3) || got[2] != k(1) {
		t.Errorf("second instance: %v, %v; want the first's keys for 10 and 11, its own for 12", got, err)
	}
	if got, _ := b.TicketKeys(ctx, "api", []int64{10}, [][32]byte{k(7)}, time.Hour); got[0] != k(7) {
		t.Errorf("another rule shares the key of period 10: %v", got)
	}
	if got, _ := other.TicketKeys(ctx, "web", []int64{10}, [][32]byte{k(8)}, time.Hour); got[0] != k(8) {
		t.Errorf("another prefix shares the key of period 10: %v", got)
	}
	rdb := srv.Client() // a cluster's client, when DP_TEST_REDIS=cluster
	ttl, err := rdb.PTTL(ctx, "{fleet}:tls-ticket:web:10").Result()
	if err != nil || ttl <= 0 || ttl > time.Hour {
		t.Errorf("PTTL of a key = %v, %v; want within the hour asked for", ttl, err)
	}
	if _, err := a.TicketKeys(ctx, "web", []int64{1}, nil, time.Hour); err == nil {
		t.Error("mismatched periods and proposals accepted")
	}
}
