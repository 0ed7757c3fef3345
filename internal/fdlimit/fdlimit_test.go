package fdlimit

import (
	"strings"
	"testing"
)

func TestReserve(t *testing.T) {
	for _, c := range []struct{ limit, want int64 }{
		{0, 8}, {64, 8}, {128, 8}, {256, 16}, {1024, 64}, {4096, 256}, {20000, 256}, {1 << 20, 256},
	} {
		if got := Reserve(c.limit); got != c.want {
			t.Errorf("Reserve(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
}

func TestPlan(t *testing.T) {
	for _, c := range []struct {
		name         string
		maxConns     int
		fixed, limit int64
		capped       int
		warn         bool
	}{
		{"fits", 1000, 300, 20000, 1000, false},
		{"exactly", 9850, 300, 20000, 9850, false},
		{"default here", 10000, 300, 20000, 9850, true},
		{"no limit configured", 0, 300, 20000, 0, false},
		{"unknown limit", 10000, 300, 0, 10000, false},
		{"fixed beyond the limit", 10, 100, 64, 1, true},
	} {
		p := NewPlan(c.maxConns, c.fixed, c.limit)
		if p.Capped != c.capped || p.IsCapped() != c.warn || (p.Warning() != "") != c.warn {
			t.Errorf("%s: NewPlan(%d, %d, %d) = %+v (warning %q); want capped at %d, warning %v",
				c.name, c.maxConns, c.fixed, c.limit, p, p.Warning(), c.capped, c.warn)
		}
	}
	w := NewPlan(10000, 300, 20000).Warning()
	for _, s := range []string{"max_connections 10000", "about 20300 descriptors", "RLIMIT_NOFILE) is 20000", "capped at 9850"} {
		if !strings.Contains(w, s) {
			t.Errorf("warning %q does not say %q", w, s)
		}
	}
}
