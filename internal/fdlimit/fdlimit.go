// Package fdlimit reads the process's descriptor limit and counts the
// descriptors it has open, and sizes the reserve that the data path leaves
// free for the admin API, /metrics and health checks (docs/operations.md).
package fdlimit

import "fmt"

// Reserve is how many descriptors the data path leaves free below a limit:
// a sixteenth of it, at least 8 and at most 256 (256 from a limit of 4096
// up; 16 at a limit of 256).
func Reserve(limit int64) int64 {
	return min(max(limit/16, 8), 256)
}

// Plan is what a configuration's TCP connections need of the descriptor
// limit.
type Plan struct {
	MaxConnections int   // server.max_connections as configured (0: no limit)
	Fixed          int64 // descriptors besides the connections (at least): listeners, event loops, the process's own, the reserve
	Limit          int64 // RLIMIT_NOFILE (soft); 0: unknown
	Capped         int   // the max_connections to run with: MaxConnections, or less when the limit cannot give it
}

// Needed is the descriptors MaxConnections connections take (2 each: the
// client's socket and the backend's) plus the fixed ones.
func (p Plan) Needed() int64 { return 2*int64(p.MaxConnections) + p.Fixed }

// NewPlan caps maxConns at what limit leaves once fixed descriptors are
// taken. maxConns 0 (no limit) and an unknown limit (0) are left as they
// are: the data path's descriptor budget still keeps the reserve free.
func NewPlan(maxConns int, fixed, limit int64) Plan {
	p := Plan{MaxConnections: maxConns, Fixed: fixed, Limit: limit, Capped: maxConns}
	if maxConns > 0 && limit > 0 && p.Needed() > limit {
		p.Capped = int(max((limit-fixed)/2, 1))
	}
	return p
}

// IsCapped reports whether the limit cannot give MaxConnections.
func (p Plan) IsCapped() bool { return p.Capped != p.MaxConnections }

// Warning says why max_connections was capped ("" when it was not).
func (p Plan) Warning() string {
	if !p.IsCapped() {
		return ""
	}
	return fmt.Sprintf("server.max_connections %d needs about %d descriptors (2 per connection, plus at least %d for listeners, event loops, the process itself and the reserve); "+
		"the descriptor limit (RLIMIT_NOFILE) is %d: capped at %d; raise the limit (systemd LimitNOFILE=, ulimit -n) or lower server.max_connections",
		p.MaxConnections, p.Needed(), p.Fixed, p.Limit, p.Capped)
}
