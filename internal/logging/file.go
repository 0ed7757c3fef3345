package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
)

// File is a log file that can be reopened by its name: after logrotate
// (or an operator) moved it away, Reopen creates a new file at the path
// and later records go there, as nginx does on SIGUSR1. Writes and Reopen
// are serialised, so a record never straddles the two files.
type File struct {
	path string

	mu sync.Mutex
	f  *os.File
}

// OpenFile opens path for appending, creating it (0644) when missing.
func OpenFile(path string) (*File, error) {
	f, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &File{path: path, f: f}, nil
}

func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return f, nil
}

// Path is the file's name.
func (l *File) Path() string { return l.path }

// Write appends p to the file open now.
func (l *File) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// Reopen opens the path again and closes the file written so far. When
// the path cannot be opened the old file stays in use and the error says
// why.
func (l *File) Reopen() error {
	f, err := openAppend(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	return old.Close()
}

// Close closes the file.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// NewHandler returns a text or JSON handler writing to w at lv's level
// (the format checked by New).
func NewHandler(w io.Writer, lv slog.Leveler, format string) slog.Handler {
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}
