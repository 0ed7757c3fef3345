// Package reload applies a new config to the running engine, whatever asked
// for it: SIGHUP, a change to the config file, the admin API or Redis. Every
// trigger goes through Reloader.Reload, which serialises reloads, is all or
// nothing (engine.Apply), and logs one summary line per reload.
package reload

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"log/slog"
	"os"
	"sync"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
)

// Reloader reloads one config file into one engine.
type Reloader struct {
	Engine *engine.Engine
	Path   string
	Log    *slog.Logger
	// Load reads a config; nil means config.Load. Redis-backed configs
	// replace it.
	Load func(path string) (*config.Config, error)
	// Applied, when set, is called after each successful reload (e.g. to
	// change the log level).
	Applied func(cfg *config.Config)
	// Result, when set, is called after every attempt with its outcome
	// (for metrics).
	Result func(err error)

	mu         sync.Mutex
	hash       [32]byte // of the file content last applied
	failed     [32]byte // of the content that last failed to apply
	unfinished string   // why the file was last taken as not written yet (logged then); "" after other content
}

// Seed records the content of the config the engine started with, so that a
// file event that did not change the content does not reload.
func (r *Reloader) Seed(data []byte) {
	r.mu.Lock()
	r.hash = sha256.Sum256(data)
	r.mu.Unlock()
}

// unfinished says why the file watch should take data as a file still being
// written, or "".
func unfinished(data []byte) string {
	switch {
	case config.Blank(data):
		return "is empty"
	case len(bytes.TrimSpace(data)) < config.MinSize:
		return "is shorter than any config"
	case config.Unterminated(data):
		return "does not end with a newline"
	}
	return ""
}

// Reload reads the config and applies it. trigger names the cause for the
// log ("signal", "file", "api"). onlyIfChanged is set by the file watch: a
// file whose content is the same as the last applied one, or as the last
// one that failed (logged then), is skipped silently, and a blank file
// (empty, or only white space and comments: truncated by an editor or a
// config-management tool that has not written it yet) or one whose last
// line has no newline (cut short by a full disk) is taken as not yet
// written, logged once and skipped. On error the running config keeps
// serving; the error (a *config.Errors for an invalid file) is returned and
// logged. Any trigger refuses a config with no enabled rule (config.Load).
// A reload that applied returns what it changed (engine.Change, also
// logged); one skipped returns an empty Change and no error.
func (r *Reloader) Reload(trigger string, onlyIfChanged bool) (engine.Change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data, err := os.ReadFile(r.Path)
	var sum [32]byte
	if err == nil {
		if why := unfinished(data); onlyIfChanged && why != "" {
			if r.unfinished != why {
				r.unfinished = why
				r.Log.Warn("config file "+why+": taken as not written yet; still serving the previous config", "trigger", trigger, "config", r.Path, "bytes", len(data))
			}
			return engine.Change{}, nil
		}
		r.unfinished = ""
		sum = sha256.Sum256(data)
		if onlyIfChanged && (sum == r.hash || sum == r.failed) {
			return engine.Change{}, nil // unchanged, or the same invalid content as last time
		}
	}
	var cfg *config.Config
	if err == nil {
		if r.Load != nil {
			cfg, err = r.Load(r.Path)
		} else {
			cfg, err = config.Parse(r.Path, data)
		}
	}
	var ch engine.Change
	if err == nil {
		ch, err = r.Engine.Apply(cfg)
	}
	if r.Result != nil {
		r.Result(err)
	}
	if err != nil {
		if data != nil {
			r.failed = sum // only content that was read: a failed read leaves no hash
		}
		r.Log.Error("reload failed; still serving the previous config", "trigger", trigger, "err", err.Error())
		return engine.Change{}, err
	}
	r.hash, r.failed = sum, [32]byte{}
	for _, w := range cfg.Warnings {
		r.Log.Warn("config warning", "problem", w.String())
	}
	_, version := r.Engine.Config()
	attrs := append([]any{"trigger", trigger, "version", version, "changes", ch.String()}, ch.LogAttrs()...)
	r.Log.Info("config reloaded", attrs...)
	if len(ch.RestartNeeded) > 0 {
		r.Log.Warn("some changed keys apply only at the next restart", "keys", ch.RestartNeeded)
	}
	if r.Applied != nil {
		r.Applied(cfg)
	}
	return ch, nil
}

// ErrPreviewMerged: the instance merges its rules from Redis, so a config
// sent to it cannot be previewed as it would apply.
var ErrPreviewMerged = errors.New("this instance merges its rules from Redis: it previews only its own config file (send no config)")

// Preview parses a config as Reload would — data is its content, nil reads
// the config file — and returns what applying it would change now, with
// the error applying it would meet short of binding listeners. It changes
// nothing (engine.Plan) and logs nothing.
func (r *Reloader) Preview(data []byte) (engine.Change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var cfg *config.Config
	var err error
	switch {
	case data == nil && r.Load != nil:
		cfg, err = r.Load(r.Path)
	case r.Load != nil:
		return engine.Change{}, ErrPreviewMerged
	case data == nil:
		if data, err = os.ReadFile(r.Path); err == nil {
			cfg, err = config.Parse(r.Path, data)
		}
	default:
		cfg, err = config.Parse(r.Path, data)
	}
	if err != nil {
		return engine.Change{}, err
	}
	return r.Engine.Plan(cfg)
}
