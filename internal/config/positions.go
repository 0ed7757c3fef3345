package config

import (
	"bytes"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// positions maps a key path as the decoder names it ("rules[2].backends[0].address")
// to the 1-based line where the TOML document defines it.
type positions map[string]int

// line returns the line of path, or of its nearest defined parent, or 0.
func (p positions) line(path string) int {
	for path != "" {
		if l, ok := p[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}

// lineIndex maps byte offsets to 1-based line numbers: it holds the offset of
// every newline, found in one pass, and a lookup is a binary search.
type lineIndex []int

func newLineIndex(data []byte) lineIndex {
	nl := make(lineIndex, 0, bytes.Count(data, []byte{'\n'}))
	for off := 0; ; {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			return nl
		}
		off += i
		nl = append(nl, off)
		off++
	}
}

// line is the line of the byte at offset: one more than the number of
// newlines before it.
func (nl lineIndex) line(offset int) int { return 1 + sort.SearchInts(nl, offset) }

// indexPositions walks the TOML AST and records the line of every table,
// array-table element and key. It is only called on a document that already
// parsed, so parser errors are ignored. The cost is one pass over the
// document plus a binary search per key (the parser's own Shape counts
// newlines from the start of the document on every call).
func indexPositions(data []byte) positions {
	lines := newLineIndex(data)
	pos := make(positions, len(lines)) // about one key a line
	arrays := map[string]int{}         // resolved array-table path -> element count
	p := unstable.Parser{}
	p.Reset(data)
	current := ""
	lineOf := func(n *unstable.Node) int {
		if n.Raw.Length == 0 && n.Raw.Offset == 0 {
			return 0
		}
		return lines.line(int(n.Raw.Offset))
	}
	// resolve turns key parts into a path, stepping into the last element of
	// any array table on the way ("rules" -> "rules[3]").
	resolve := func(base string, it unstable.Iterator) (string, *unstable.Node) {
		path := base
		var last *unstable.Node
		for it.Next() {
			n := it.Node()
			last = n
			if n.Kind != unstable.Key {
				continue
			}
			path = join(path, string(n.Data))
			if c, ok := arrays[path]; ok && !it.IsLast() {
				path += "[" + strconv.Itoa(c-1) + "]"
			}
		}
		return path, last
	}
	var value func(path string, v *unstable.Node)
	value = func(path string, v *unstable.Node) {
		switch v.Kind {
		case unstable.InlineTable:
			it := v.Children()
			for it.Next() {
				kv := it.Node()
				k, kn := resolve(path, kv.Key())
				if l := lineOf(kn); l > 0 {
					pos[k] = l
				}
				value(k, kv.Value())
			}
		case unstable.Array:
			it := v.Children()
			i := 0
			for it.Next() {
				el := it.Node()
				ep := path + "[" + strconv.Itoa(i) + "]"
				if l := lineOf(el); l > 0 {
					pos[ep] = l
				} else if l, ok := pos[path]; ok {
					pos[ep] = l
				}
				value(ep, el)
				i++
			}
		}
	}
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table:
			path, kn := resolve("", e.Key())
			current = path
			if kn != nil {
				pos[path] = lineOf(kn)
			}
		case unstable.ArrayTable:
			path, kn := resolve("", e.Key())
			c := arrays[path]
			arrays[path] = c + 1
			current = path + "[" + strconv.Itoa(c) + "]"
			if kn != nil {
				pos[current] = lineOf(kn)
				if _, ok := pos[path]; !ok {
					pos[path] = lineOf(kn)
				}
			}
		case unstable.KeyValue:
			path, kn := resolve(current, e.Key())
			if kn != nil {
				pos[path] = lineOf(kn)
			}
			value(path, e.Value())
		}
	}
	return pos
}

// join appends key to a key path, quoting a key that is not a bare TOML key
// (an empty one, or one with spaces or dots) so the path stays unambiguous.
func join(base, key string) string {
	if !bareKey(key) {
		key = strconv.Quote(key)
	}
	if base == "" {
		return key
	}
	return base + "." + key
}

func bareKey(k string) bool {
	if k == "" {
		return false
	}
	for _, c := range k {
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
