package config

import (
	"fmt"
	"time"
)

// Duration is a config duration. In TOML it is either an integer number of
// seconds (the seed's style: connection_timeout = 30) or a Go duration string
// (connection_timeout = "250ms").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// parseDuration converts a decoded TOML value into a Duration.
func parseDuration(v any) (Duration, error) {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return 0, fmt.Errorf("must not be negative, got %d", x)
		}
		if x > int64(365*24*time.Hour/time.Second) {
			return 0, fmt.Errorf("%d seconds is out of range", x)
		}
		return Duration(time.Duration(x) * time.Second), nil
	case string:
		d, err := time.ParseDuration(x)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (want seconds as an integer or a string such as \"250ms\", \"30s\", \"5m\")", x)
		}
		if d < 0 {
			return 0, fmt.Errorf("must not be negative, got %q", x)
		}
		return Duration(d), nil
	default:
		return 0, fmt.Errorf("want a duration (integer seconds or a string such as \"30s\"), got %s", tomlType(v))
	}
}
