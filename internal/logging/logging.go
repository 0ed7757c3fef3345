// Package logging builds the process's log/slog logger.
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// New returns a logger writing text or JSON at level to w. The returned
// LevelVar lets a reload change the level of the running logger.
func New(w io.Writer, level, format string) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if err := SetLevel(lv, level); err != nil {
		return nil, nil, err
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), lv, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	default:
		return nil, nil, fmt.Errorf("log format must be text or json, got %q", format)
	}
}

// SetLevel parses level (debug, info, warn, error) into lv.
func SetLevel(lv *slog.LevelVar, level string) error {
	switch level {
	case "debug":
		lv.Set(slog.LevelDebug)
	case "info", "":
		lv.Set(slog.LevelInfo)
	case "warn":
		lv.Set(slog.LevelWarn)
	case "error":
		lv.Set(slog.LevelError)
	default:
		return fmt.Errorf("log level must be debug, info, warn or error, got %q", level)
	}
	return nil
}
