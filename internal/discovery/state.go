package discovery

import (
	"slices"
	"time"
)

// Bounds are a name's refresh settings.
type Bounds struct {
	MinTTL, MaxTTL time.Duration // the refresh interval follows the TTL within these
	EmptyGrace     time.Duration // how long an empty answer must last before it applies
}

// Refresh is the interval before the next refresh after an answer with
// TTL ttl: the TTL, but at least MinTTL and at most MaxTTL.
func (b Bounds) Refresh(ttl time.Duration) time.Duration {
	return min(max(ttl, b.MinTTL), b.MaxTTL)
}

// State is what one name knows: the answer in effect and how the last
// refreshes went. Observe moves it; it has no clock and no goroutine of its
// own, so the rules (TTL bounds, keep the last good answer on a failure,
// the empty-answer grace) are tested without a DNS server.
type State struct {
	Applied    []Endpoint // the endpoints in effect
	Answered   bool       // some answer was applied (Applied may be empty)
	AnsweredAt time.Time  // when the answer in effect (or the last one like it) came
	TTL        time.Duration
	Rcode      string    // of the last answer
	Next       time.Time // when the next refresh is due
	EmptySince time.Time // an empty answer has been seen since; zero: not now
	LastError  string    // of the last refresh; "" when it succeeded
	ErrorSince time.Time // failing since; zero when the last refresh succeeded
	Refreshes  int64     // refreshes that got an answer
	Failures   int64     // refreshes that failed
}

// Outcome is what one refresh did.
type Outcome int

const (
	Unchanged    Outcome = iota // the answer in effect stays (same endpoints)
	Changed                     // a new answer is in effect
	Kept                        // the refresh failed: the last good answer stays
	EmptyPending                // empty, not applied yet: the grace runs
)

func (o Outcome) String() string {
	return [...]string{"unchanged", "changed", "kept", "empty_pending"}[o]
}

// Observe records the result of a refresh made at now and returns what it
// did; s.Next is when to refresh again.
func (s *State) Observe(now time.Time, a Answer, err error, b Bounds) Outcome {
	if err != nil {
		s.Failures++
		s.LastError = err.Error()
		if s.ErrorSince.IsZero() {
			s.ErrorSince = now
		}
		s.Next = now.Add(b.MinTTL) // retry soon, not at a TTL we never got
		return Kept
	}
	s.Refreshes++
	s.LastError, s.ErrorSince = "", time.Time{}
	s.Rcode, s.TTL = a.Rcode, a.TTL
	s.Next = now.Add(b.Refresh(a.TTL))
	if a.Empty() && s.Answered && len(s.Applied) > 0 {
		if s.EmptySince.IsZero() {
			s.EmptySince = now
		}
		if until := s.EmptySince.Add(b.EmptyGrace); now.Before(until) {
			// Ask again by the end of the grace, so a lasting empty
			// answer applies on time.
			if until.Before(s.Next) {
				s.Next = until
			}
			return EmptyPending
		}
	}
	s.EmptySince = time.Time{}
	s.AnsweredAt = now
	if s.Answered && slices.Equal(s.Applied, a.Endpoints) {
		return Unchanged
	}
	s.Applied, s.Answered = slices.Clone(a.Endpoints), true
	return Changed
}
