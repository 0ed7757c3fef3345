package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong (or worth a warning) in a config file.
type Problem struct {
	File string // the config file
	Line int    // 1-based line of the key, 0 when unknown
	Path string // key path, e.g. rules[2].backends[0].address
	Msg  string
}

func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
	} else if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Errors is every problem that made a config invalid. Its Error() has one
// problem per line, in file order.
type Errors struct {
	Problems []Problem

	file string
	pos  positions
}

func (e *Errors) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

func (e *Errors) add(path, msg string) {
	e.Problems = append(e.Problems, Problem{File: e.file, Line: e.pos.line(path), Path: path, Msg: msg})
}

func (e *Errors) addf(path, format string, args ...any) { e.add(path, fmt.Sprintf(format, args...)) }

func (e *Errors) empty() bool { return len(e.Problems) == 0 }
