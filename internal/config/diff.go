package config

import (
	"fmt"
	"reflect"
)

// SameRule reports whether rule r of next is rule o of old unchanged: every
// setting, and its router's plugin and settings. The engine's plan uses it
// to report rules_changed.
func SameRule(old *Config, o *Rule, next *Config, r *Rule) bool {
	return reflect.DeepEqual(o, r) && old.routerSpec(o.Router) == next.routerSpec(r.Router)
}

// RestartNeeded lists the keys whose value differs between the running
// config old (nil at start-up: none) and next but applies only at the next
// restart.
func RestartNeeded(old, next *Config) []string {
	if old == nil || (len(old.Rules) == 0 && old.File == "") {
		return nil
	}
	var keys []string
	if old.Server.WorkerThreads != next.Server.WorkerThreads {
		keys = append(keys, "server.worker_threads")
	}
	if old.Server.AdaptiveThreads != next.Server.AdaptiveThreads {
		keys = append(keys, "server.adaptive_threads")
	}
	if old.Server.Engine != next.Server.Engine {
		keys = append(keys, "server.engine")
	}
	if old.Server.Resolver != next.Server.Resolver {
		keys = append(keys, "server.resolver")
	}
	if old.Logging.Format != next.Logging.Format {
		keys = append(keys, "logging.format")
	}
	if old.Logging.AccessLogFile != next.Logging.AccessLogFile {
		keys = append(keys, "logging.access_log_file")
	}
	if old.Server.UpgradeTimeout != next.Server.UpgradeTimeout {
		keys = append(keys, "server.upgrade_timeout")
	}
	if old.Server.WatchConfig != next.Server.WatchConfig {
		keys = append(keys, "server.watch_config")
	}
	if !reflect.DeepEqual(old.Redis, next.Redis) { // the fleet connection is made at start-up
		keys = append(keys, "[redis]")
	}
	if !reflect.DeepEqual(old.ACMESettings(), next.ACMESettings()) { // the ACME manager is made at start-up
		keys = append(keys, "[acme]")
	}
	for _, k := range []struct {
		key        string
		oldV, newV any
	}{
		{"metrics.enabled", old.Metrics.Enabled, next.Metrics.Enabled},
		{"metrics.bind", old.Metrics.Bind, next.Metrics.Bind},
		{"metrics.path", old.Metrics.Path, next.Metrics.Path},
		{"admin.bind", old.Admin.Bind, next.Admin.Bind},
		{"admin.pprof", old.Admin.Pprof, next.Admin.Pprof},
	} {
		if k.oldV != k.newV {
			keys = append(keys, k.key)
		}
	}
	return keys
}

func (c *Config) routerSpec(name string) string {
	s, _ := c.RouterSpecFor(name)
	return fmt.Sprintf("%s %v", s.Plugin, s.Config)
}
