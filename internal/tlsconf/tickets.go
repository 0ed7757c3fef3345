package tlsconf

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"sync"
	"time"
)

// TicketKeySource shares session ticket keys between instances, so that a
// ticket one instance issued resumes on any other. Time is cut into
// periods of the rotation's length, numbered from the Unix epoch, and each
// period of a scope (a rule) has one key: the first instance to ask for a
// period stores its proposal, and every instance gets that one.
// store.Store implements it on Redis.
type TicketKeySource interface {
	// TicketKeys returns the key of each of periods in scope, storing
	// proposed[i] for periods[i] when it has none yet, each kept for ttl.
	TicketKeys(ctx context.Context, scope string, periods []int64, proposed [][32]byte, ttl time.Duration) ([][32]byte, error)
}

// ticketSourceTimeout bounds one call to the TicketKeySource.
const ticketSourceTimeout = 5 * time.Second

// ticketRefresh is how often keys are read again from the source (so an
// instance that fell back to local keys during an outage converges), and
// how soon a new period's key is taken into use at the latest.
const ticketRefresh = time.Minute

// ticketRetry is the wait after a failed refresh.
const ticketRetry = 5 * time.Second

// ticketer keeps a tls.Config's session ticket keys: the current period's
// encrypts, the next period's (so an instance whose clock runs ahead, or
// that already moved on, is understood) and the previous ones decrypt.
// Handshakes never wait for it: crypto/tls reads the keys it last set.
type ticketer struct {
	cfg   *tls.Config
	scope string
	src   TicketKeySource
	now   func() time.Time

	mu       sync.Mutex
	rotation time.Duration
	count    int
	keys     map[int64][32]byte
	shared   bool  // the keys in use came from src
	lastErr  error // of the last refresh from src

	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// newTicketer sets local keys on cfg at once, so that a new Server issues
// tickets from its first handshake, and starts the rotation, whose first
// refresh asks the source.
func newTicketer(cfg *tls.Config, scope string, src TicketKeySource, now func() time.Time, rotation time.Duration, count int) *ticketer {
	ctx, cancel := context.WithCancel(context.Background())
	t := &ticketer{cfg: cfg, scope: scope, src: src, now: now, keys: map[int64][32]byte{},
		rotation: rotation, count: count,
		kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	t.applyLocked(nil, nil) // not shared yet: nobody else can see t
	go t.loop(ctx)
	return t
}

// setPolicy sets the rotation and key count; a change re-keys at once
// (keys of periods of the old length mean nothing) and asks the source.
func (t *ticketer) setPolicy(rotation time.Duration, count int) {
	t.mu.Lock()
	changed := rotation != t.rotation || count != t.count
	if changed {
		if rotation != t.rotation {
			clear(t.keys)
		}
		t.rotation, t.count = rotation, count
		t.applyLocked(nil, nil)
	}
	t.mu.Unlock()
	if changed {
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
}

func (t *ticketer) stop() {
	t.cancel()
	<-t.done
}

func (t *ticketer) loop(ctx context.Context) {
	defer close(t.done)
	timer := time.NewTimer(0) // the first refresh at once
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-t.kick:
			timer.Stop()
		}
		wait := ticketRefresh
		if err := t.refresh(ctx); err != nil {
			wait = ticketRetry
		}
		if r := t.untilNextPeriod(); r < wait {
			wait = r
		}
		timer.Reset(wait)
	}
}

func (t *ticketer) untilNextPeriod() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now().UnixNano()
	rot := int64(t.rotation)
	return time.Duration(rot-now%rot) + time.Millisecond
}

// periods returns the periods whose keys are in use, the encrypting one first.
func (t *ticketer) periodsLocked() []int64 {
	p := t.now().UnixNano() / int64(t.rotation)
	ps := []int64{p, p + 1}
	for i := 1; i < t.count; i++ {
		ps = append(ps, p-int64(i))
	}
	return ps
}

// refresh asks the source for the current keys (when there is one) and
// sets them; without an answer it keeps the keys it had from the source,
// filling periods it has no key for with local random ones.
func (t *ticketer) refresh(ctx context.Context) error {
	t.mu.Lock()
	periods := t.periodsLocked()
	proposed := make([][32]byte, len(periods))
	for i, p := range periods {
		if k, ok := t.keys[p]; ok {
			proposed[i] = k
		} else {
			proposed[i] = randomKey()
		}
	}
	src := t.src
	t.mu.Unlock()
	if src == nil {
		t.mu.Lock()
		t.applyLocked(nil, nil)
		t.mu.Unlock()
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, ticketSourceTimeout)
	got, err := src.TicketKeys(cctx, t.scope, periods, proposed, t.ttl())
	cancel()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastErr = err
	if err != nil || len(got) != len(periods) {
		t.applyLocked(nil, nil)
		return err
	}
	t.applyLocked(periods, got)
	t.shared = true
	return nil
}

// ttl is how long a shared key must live: while it can still decrypt.
func (t *ticketer) ttl() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return time.Duration(t.count+2) * t.rotation
}

// applyLocked stores the given keys of periods, fills the periods in use
// that have none with local random keys, drops the others, and sets the
// keys on the config, the current period's first.
func (t *ticketer) applyLocked(periods []int64, keys [][32]byte) {
	for i, p := range periods {
		t.keys[p] = keys[i]
	}
	use := t.periodsLocked()
	inUse := map[int64]bool{}
	list := make([][32]byte, 0, len(use))
	for _, p := range use {
		k, ok := t.keys[p]
		if !ok {
			k = randomKey()
			t.keys[p] = k
			t.shared = false
		}
		inUse[p] = true
		list = append(list, k)
	}
	for p := range t.keys {
		if !inUse[p] {
			delete(t.keys, p)
		}
	}
	t.cfg.SetSessionTicketKeys(list)
}

func (t *ticketer) status() (shared bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.shared, t.lastErr
}

func randomKey() [32]byte {
	var k [32]byte
	_, _ = rand.Read(k[:]) // crypto/rand.Read never fails (it panics instead)
	return k
}

// RefreshTickets reads the ticket keys from the source now, as the
// rotation does every minute and at each period's start, and sets them.
// With the source unreachable the keys from its last answer stay in use,
// and periods it never answered for get local keys: a handshake never
// waits for, nor fails because of, the source. Without tickets it does
// nothing.
func (s *Server) RefreshTickets(ctx context.Context) error {
	s.mu.Lock()
	t := s.tickets
	s.mu.Unlock()
	if t == nil {
		return nil
	}
	return t.refresh(ctx)
}

// TicketStatus says whether the ticket keys in use are the shared ones,
// and the error of the last attempt to read them (nil when it worked or
// there is no source).
func (s *Server) TicketStatus() (shared bool, err error) {
	s.mu.Lock()
	t := s.tickets
	s.mu.Unlock()
	if t == nil {
		return false, nil
	}
	return t.status()
}
