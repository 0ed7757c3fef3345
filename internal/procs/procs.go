// Package procs sizes GOMAXPROCS to the load.
//
// The proxy runs one event loop per worker thread. With GOMAXPROCS at the
// number of CPUs, the Go runtime gives a loop that becomes ready a thread
// of its own whenever a P is idle, so at a moderate load most readiness
// events cost a thread wake-up (a futex and a context switch) on top of
// the kernel's own work. Loops sharing fewer Ps spend less CPU per round
// trip and per connection at such a load (docs/BENCHMARKS.md has the
// figures).
//
// The Governor keeps GOMAXPROCS at what the load needs. Every interval it
// reads the process's CPU time: when the Ps in use were busy and the
// machine had an idle CPU, they double at once; when fewer Ps would have
// been at most half busy for a second, they shrink to that many. Without
// an idle CPU (a small machine shared with the clients or the backends)
// another P would add wake-ups, not throughput, so they do not grow. The
// loops stay as they are: loops outnumbering Ps take turns on them.
package procs

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"os"
	"runtime"
	"time"
)

const (
	// Grow is the busy fraction of the Ps in use above which they double.
	Grow = 0.85
	// ShrinkAt is the busy fraction that fewer Ps would have, below which
	// they shrink to that many. It is well under Grow, so that the step
	// down does not cross the threshold back up.
	ShrinkAt = 0.5
	// MinIdle is how many CPUs of the machine must have been idle for the
	// Ps to grow.
	MinIdle = 0.5
	// ShrinkAfter is how many intervals in a row the load must stay low
	// before the Ps shrink.
	ShrinkAfter = 10
	// DefaultInterval is how often the Governor measures.
	DefaultInterval = 100 * time.Millisecond
)

// Governor adjusts GOMAXPROCS between 1 and Max.
type Governor struct {
	Max int // the most Ps (the worker threads)
	Log *slog.Logger

	// How often it measures; cpu returns the process's CPU time and idle
	// the machine's idle CPU time; set sets GOMAXPROCS. New sets them,
	// tests replace them.
	interval  time.Duration
	cpu, idle func() time.Duration
	set       func(int)
	stat      *procStat
}

// New returns a Governor of up to max Ps that reads the real CPU times. It
// opens /proc/stat at once, so the process's descriptors do not change
// once it runs; Run closes it.
func New(max int, log *slog.Logger) *Governor {
	ps := &procStat{}
	ps.open()
	return &Governor{Max: max, Log: log, interval: DefaultInterval, cpu: processCPU, idle: ps.idle, stat: ps,
		set: func(n int) { runtime.GOMAXPROCS(n) }}
}

// Run governs until ctx ends, then gives the process its Max Ps back.
func (g *Governor) Run(ctx context.Context) {
	if g.stat != nil {
		defer g.stat.close()
	}
	if g.Max <= 1 {
		return
	}
	p := g.Max
	g.set(p)
	defer g.set(g.Max)
	t := time.NewTicker(g.interval)
	defer t.Stop()
	var s state
	lastCPU, lastIdle, lastT := g.cpu(), g.idle(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c, i, now := g.cpu(), g.idle(), time.Now()
			wall := now.Sub(lastT)
			if wall <= 0 {
				continue
			}
			used := float64(c-lastCPU) / float64(wall)
			spare := math.Inf(1)
			if i >= 0 && lastIdle >= 0 {
				spare = float64(i-lastIdle) / float64(wall)
			}
			lastCPU, lastIdle, lastT = c, i, now
			if np := s.next(p, g.Max, used, spare); np != p {
				if g.Log != nil {
					g.Log.Debug("worker threads in use changed", "from", p, "to", np,
						"cpus_busy", math.Round(used*100)/100, "cpus_idle", math.Round(spare*100)/100)
				}
				p = np
				g.set(p)
			}
		}
	}
}

// state is what the decision remembers between intervals.
type state struct {
	low  int     // intervals in a row with a low load
	peak float64 // the highest load among them
}

// next is the number of Ps to use after an interval in which the process
// kept used CPUs busy with p Ps and the machine had spare CPUs idle.
func (s *state) next(p, most int, used, spare float64) int {
	if used > Grow*float64(p) && p < most && spare >= MinIdle {
		*s = state{}
		return min(most, 2*p)
	}
	if p > 1 && used < ShrinkAt*float64(p-1) {
		s.low++
		s.peak = math.Max(s.peak, used)
		if s.low < ShrinkAfter {
			return p
		}
		// The fewest Ps that the window's peak keeps under ShrinkAt.
		n := max(1, int(math.Ceil(s.peak/ShrinkAt)))
		*s = state{}
		return min(n, p-1)
	}
	*s = state{}
	return p
}

// procStat reads the machine's idle CPU time from /proc/stat, kept open:
// each read is one pread of its first line, without allocating.
type procStat struct {
	f   *os.File
	buf [512]byte
}

// idle is the time the machine's CPUs spent idle so far (idle and iowait,
// the 4th and 5th numbers of the "cpu" line), -1 when it cannot be read
// (then the Ps grow on the process's own load alone).
func (p *procStat) idle() time.Duration {
	if p.f == nil {
		return -1
	}
	n, _ := p.f.ReadAt(p.buf[:], 0)
	line := p.buf[:n]
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	return parseIdle(line)
}

func (p *procStat) open() {
	if f, err := os.Open("/proc/stat"); err == nil {
		p.f = f
	}
}

func (p *procStat) close() {
	if p.f != nil {
		p.f.Close()
	}
}

// parseIdle reads idle+iowait from /proc/stat's "cpu ..." line, -1 if the
// line is not that.
func parseIdle(line []byte) time.Duration {
	field, ticks := 0, int64(0)
	for len(line) > 0 {
		line = bytes.TrimLeft(line, " ")
		if len(line) == 0 {
			break
		}
		end := bytes.IndexByte(line, ' ')
		if end < 0 {
			end = len(line)
		}
		word := line[:end]
		line = line[end:]
		switch {
		case field == 0:
			if string(word) != "cpu" {
				return -1
			}
		case field == 4 || field == 5:
			var v int64
			for _, c := range word {
				if c < '0' || c > '9' {
					return -1
				}
				v = v*10 + int64(c-'0')
			}
			ticks += v
		}
		field++
	}
	if field < 6 {
		return -1
	}
	return time.Duration(ticks) * time.Second / userHZ
}

// userHZ is the unit of /proc/stat's times (USER_HZ, 100 on Linux).
const userHZ = 100
