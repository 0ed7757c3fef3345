package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"

	toml "github.com/pelletier/go-toml/v2"
)

// Load reads, decodes and validates the config file at path. On failure the
// error is an *Errors listing every problem found (or, for an unreadable file,
// an error naming it).
func Load(path string) (*Config, error) { return load(path, rulesUnlessFollowing) }

// Parse decodes and validates a config document; name is used in messages.
func Parse(name string, data []byte) (*Config, error) {
	return parse(name, data, nil, rulesUnlessFollowing)
}

// LoadFollower is Load for an instance told to take its config from Redis
// (--config-from-redis), whatever the file's [redis] watch_config says: its
// file may then have no rule.
func LoadFollower(path string) (*Config, error) { return load(path, rulesOptional) }

func load(path string, rules rulesNeed) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read config: %w", err)
	}
	return parse(path, data, nil, rules)
}

// rulesNeed says when a config without an enabled rule is refused.
type rulesNeed int

const (
	// rulesUnlessFollowing: required unless [redis] watch_config = true,
	// where the rules come from the config pushed to Redis.
	rulesUnlessFollowing rulesNeed = iota
	rulesRequired                  // a config pushed to, or read from, Redis
	rulesOptional                  // the local file of --config-from-redis
)

// parse is Parse with adjust, when not nil, run on the decoded config
// before it is validated (fleet.go: the instance-local keys of a config
// taken from Redis).
func parse(name string, data []byte, adjust func(*Config), rules rulesNeed) (*Config, error) {
	errs := &Errors{file: name}
	var tree map[string]any
	if err := toml.Unmarshal(data, &tree); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			line, col := de.Position()
			errs.Problems = append(errs.Problems, Problem{File: name, Line: line,
				Msg: fmt.Sprintf("TOML syntax error at column %d: %s", col, de.Error())})
		} else {
			errs.Problems = append(errs.Problems, Problem{File: name, Msg: "TOML: " + err.Error()})
		}
		return nil, errs
	}
	errs.pos = indexPositions(data)

	cfg := &Config{File: name, Raw: data}
	cfg.setDefaults()
	d := &decoder{errs: errs}
	d.decodeStruct("", tree, reflect.ValueOf(cfg).Elem())
	if adjust != nil {
		adjust(cfg)
	}
	cfg.validate(errs)
	if Unterminated(data) {
		cfg.Warnings = append(cfg.Warnings, Problem{File: name, Line: bytes.Count(data, []byte{'\n'}) + 1,
			Msg: "the last line does not end with a newline: the file may have been cut short (a full disk, or a write still under way)"})
	}
	if rules == rulesRequired || rules == rulesUnlessFollowing && !(cfg.Redis != nil && cfg.Redis.WatchConfig) {
		cfg.requireRule(errs)
	}
	if !errs.empty() {
		sort.SliceStable(errs.Problems, func(i, j int) bool { return errs.Problems[i].Line < errs.Problems[j].Line })
		return nil, errs
	}
	return cfg, nil
}

// Unterminated reports whether data holds TOML whose last line does not end
// with a newline: the mark of a file cut short by a full disk or a write
// still under way (HAProxy refuses such a file for the same reason).
func Unterminated(data []byte) bool {
	return len(data) > 0 && data[len(data)-1] != '\n' && !Blank(data)
}

// MinSize is the length of the shortest config that can be valid, one rule
// and nothing else (with [redis] a rule may have no backend): a file with
// less is still being written.
const MinSize = len(`rules=[{name="a"}]`)

// Blank reports whether data holds no TOML at all: only white space and
// comments. The file watch takes such a file as one not written yet.
func Blank(data []byte) bool {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' {
			return false
		}
	}
	return true
}
