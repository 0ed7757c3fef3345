// Package cli is the dynamic-proxy command line: flags, signals and wiring.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/fleet"
	"github.com/dynamic-proxy/dynamic-proxy/internal/logging"
	"github.com/dynamic-proxy/dynamic-proxy/internal/procs"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/reload"
	"github.com/dynamic-proxy/dynamic-proxy/internal/upgrade"
	"github.com/dynamic-proxy/dynamic-proxy/internal/version"
)

const usage = `dynamic-proxy: an L4 (TCP and UDP) proxy and load balancer

Usage:
  dynamic-proxy [flags]
  dynamic-proxy config|backend ...   fleet commands (Redis): see dynamic-proxy backend --help
  dynamic-proxy explain ...          why a connection goes where it goes: see dynamic-proxy explain --help

Flags:
  -c, --config FILE       config file (default "config.toml")
      --validate          check the config, print a summary and exit (1 when invalid)
      --diff              with --validate: also ask the running instance (its
                          admin API) what reloading this file would change
      --admin ADDR        the running instance's admin address for --diff
                          (default: the config's [admin] bind)
      --log-level LEVEL   debug, info, warn or error (overrides [logging] level)
      --log-format FMT    text or json (overrides [logging] format)
      --version-info      print version, commit, build date, Go version and platform
      --config-from-redis take the config from Redis, as [redis] watch_config = true
  -h, --help              show this help

Signals: SIGTERM/SIGINT drain and exit (a second one exits at once),
SIGHUP reloads the config file, SIGUSR1 reopens [logging] access_log_file,
SIGUSR2 upgrades to the binary now at this one's path (Linux;
docs/operations.md).
`

type options struct {
	config    string
	validate  bool
	diff      bool   // --validate --diff: preview against the running instance (diff.go)
	admin     string // --admin: its admin address
	logLevel  string
	logFormat string
	version   bool
	fromRedis bool // --config-from-redis (internal/fleet)
}

// Run runs the command with args and returns the process exit code.
func Run(args []string, stdout, stderr io.Writer) int {
	if isFleetCommand(args) {
		return runFleet(args, stdout, stderr) // fleet.go
	}
	if len(args) > 0 && args[0] == "explain" {
		return runExplain(args[1:], stdout, stderr) // explain.go
	}
	var o options
	fs := flag.NewFlagSet("dynamic-proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// The flag package prints its error ("flag provided but not defined")
	// itself; help goes to stdout below, once.
	fs.Usage = func() {}
	fs.StringVar(&o.config, "c", "config.toml", "")
	fs.StringVar(&o.config, "config", "config.toml", "")
	fs.BoolVar(&o.validate, "validate", false, "")
	fs.BoolVar(&o.diff, "diff", false, "")
	fs.StringVar(&o.admin, "admin", "", "")
	fs.StringVar(&o.logLevel, "log-level", "", "")
	fs.StringVar(&o.logFormat, "log-format", "", "")
	fs.BoolVar(&o.version, "version-info", false, "")
	fs.BoolVar(&o.fromRedis, "config-from-redis", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintln(stderr, "dynamic-proxy: see --help")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dynamic-proxy: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	// Every flag is checked before the config is read, so a bad flag exits 2
	// in every mode (--validate included).
	if err := checkLogFlags(o.logLevel, o.logFormat); err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy: %v (see --help)\n", err)
		return 2
	}
	if o.version {
		fmt.Fprint(stdout, version.Get())
		return 0
	}
	if (o.diff || o.admin != "") && !o.validate {
		fmt.Fprintln(stderr, "dynamic-proxy: --diff and --admin go with --validate (see --help)")
		return 2
	}

	load := config.Load
	if o.fromRedis {
		load = config.LoadFollower // the rules come from Redis
	}
	cfg, err := load(o.config)
	if err != nil {
		var problems *config.Errors
		if errors.As(err, &problems) {
			fmt.Fprintf(stderr, "dynamic-proxy: invalid config:\n%v\n", err)
		} else { // unreadable: one line naming the file
			fmt.Fprintf(stderr, "dynamic-proxy: %v\n", err)
		}
		return 1
	}
	if o.validate {
		code := validate(cfg, stdout, stderr)
		if code == 0 && o.diff {
			code = diff(cfg, o.admin, stdout, stderr)
		}
		return code
	}
	level, format := cfg.Logging.Level, cfg.Logging.Format
	if o.logLevel != "" {
		level = o.logLevel
	}
	if o.logFormat != "" {
		format = o.logFormat
	}
	log, lv, err := logging.New(stderr, level, format)
	if err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy: %v\n", err)
		return 2
	}
	return serve(cfg, &o, log, lv)
}

// checkLogFlags checks --log-level and --log-format (empty: not given) the
// way the logger will take them.
func checkLogFlags(level, format string) error {
	_, _, err := logging.New(io.Discard, level, format)
	return err
}

// validate is --validate: the checks start-up and every reload run
// (engine.Check, after config.Load), without binding anything.
func validate(cfg *config.Config, stdout, stderr io.Writer) int {
	if err := engine.Check(cfg); err != nil {
		fmt.Fprintf(stderr, "dynamic-proxy: invalid config:\n%v\n", err)
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	descriptorWarning(cfg, stderr) // (descriptors.go)
	listeners := map[string][]string{}
	nb := 0
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		key := r.Protocol + " " + cfg.Listener(r)
		state := r.Name
		if !r.Enabled {
			state += " (disabled)"
		}
		listeners[key] = append(listeners[key], state)
		nb += len(r.Backends)
	}
	fmt.Fprintf(stdout, "%s: ok\n", cfg.File)
	fmt.Fprintf(stdout, "listeners: %d\n", len(listeners))
	keys := make([]string, 0, len(listeners))
	for k := range listeners {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(stdout, "  %s -> %s\n", k, strings.Join(listeners[k], ", "))
	}
	fmt.Fprintf(stdout, "rules: %d\n", len(cfg.Rules))
	for _, r := range cfg.Rules {
		spec, _ := cfg.RouterSpecFor(r.Router)
		backends := fmt.Sprintf("%d backends", len(r.Backends))
		if n := len(r.Discovery); n > 0 {
			backends += fmt.Sprintf(" and those of %d DNS names (below)", n)
		}
		proto := r.Protocol
		if r.Protocol == "udp" && r.DNS {
			proto = "udp dns-aware (each query balanced)"
		}
		fmt.Fprintf(stdout, "  %s: %s, router %s (%s), %s; health: %s\n", r.Name, proto, r.Router, spec.Plugin, backends, r.Health.Summary(r.Protocol))
	}
	fmt.Fprintf(stdout, "backends: %d\n", nb)
	discoveryReport(cfg, stdout, stderr)       // (discovery.go)
	printCertificates(cfg, stdout, time.Now()) // (tls.go)
	printACME(cfg, stdout)                     // (acme.go)
	names := make([]string, 0, len(cfg.Routers))
	for n, s := range cfg.Routers {
		names = append(names, n+" ("+s.Plugin+")")
	}
	sort.Strings(names)
	fmt.Fprintf(stdout, "routers: %d", len(names))
	if len(names) > 0 {
		fmt.Fprintf(stdout, ": %s", strings.Join(names, ", "))
	}
	fmt.Fprintln(stdout)
	return 0
}

func serve(cfg *config.Config, o *options, log *slog.Logger, lv *slog.LevelVar) int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	if upgradeSignal != nil {
		signal.Notify(sigs, upgradeSignal)
	}
	defer signal.Stop(sigs)

	for _, w := range cfg.Warnings {
		log.Warn("config warning", "problem", w.String())
	}
	eng := engine.New(log)
	// A binary upgrade (upgrade.go): as the new process, take the old
	// one's listening sockets before anything binds.
	upg, err := upgrade.New(log, cfg.Server.UpgradeTimeout.D())
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	inherited, err := upg.Inherit()
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	if upg.Upgraded() {
		log.Info("upgrade: took over the listening sockets", "listeners", inherited.Len(), "old_pid", os.Getppid())
	}
	eng.Server().SetInherited(inherited)
	ups := &upgrades{upg: upg, eng: eng, log: log, done: make(chan *upgrade.Handover, 1)}
	fl, cfg, err := fleet.Start(cfg, o.fromRedis, eng, log, levelSetter(lv, o.logLevel)) // [redis] (internal/fleet)
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	defer fl.Close()
	am, err := startACME(cfg, fl, log) // certificates by ACME (acme.go)
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	if am != nil {
		defer am.Close()
		eng.SetACME(am)
	}
	obs, err := startObserve(cfg, eng, adminFleet(fl), am, log, inherited, func() (upgrade.Result, error) { return ups.run("api") }) // metrics and admin API (observe.go)
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	defer obs.close()
	format := cfg.Logging.Format
	if o.logFormat != "" {
		format = o.logFormat
	}
	alog, err := startAccessLog(cfg, eng, format, lv, log) // [logging] access_log_file and _interval (accesslog.go)
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	defer alog.close()
	var tlsm engine.TLSMetrics
	if obs.tls != nil {
		tlsm = obs.tls
	}
	eng.SetTLS(fl.TicketKeys(), tlsm) // terminating rules' session tickets shared through Redis (tls.go)
	if _, err := eng.Apply(cfg); err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	if keys := inherited.Close(); len(keys) > 0 {
		log.Info("upgrade: closed the handed-over sockets the config has no listener for", "listeners", strings.Join(keys, ", "))
	}
	ups.obs = obs
	obs.announce()
	log.Info("connection engine", "engine", eng.Server().Engine().String())
	for _, r := range cfg.Rules {
		log.Info("rule", "name", r.Name, "protocol", r.Protocol, "listener", cfg.Listener(&r),
			"router", r.Router, "backends", len(r.Backends), "enabled", r.Enabled)
	}
	rl := &reload.Reloader{Engine: eng, Path: o.config, Log: log,
		Applied: func(cfg *config.Config) {
			if o.logLevel == "" {
				_ = logging.SetLevel(lv, cfg.Logging.Level)
			}
			alog.apply(cfg)
		}}
	if obs.metrics != nil {
		rl.Result = obs.metrics.ReloadResult
	}
	rl.Seed(cfg.Raw)
	obs.started(rl) // /readyz: config loaded, listeners bound
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	fl.Started(ctx, rl) // follow Redis until stop
	if n := eng.Server().Workers(); cfg.Server.AdaptiveThreads && n > 1 {
		log.Info("worker threads follow the load", "worker_threads", n)
		go procs.New(n, log).Run(ctx) // GOMAXPROCS follows the load (internal/procs)
	}
	if cfg.Server.WatchConfig {
		if err := reload.Watch(ctx, o.config, reload.DefaultDebounce, func() {
			log.Debug("config file changed and settled; reloading", "config", o.config)
			rl.Reload("file", true)
		}); err != nil {
			log.Warn("cannot watch the config file; reload with SIGHUP", "err", err.Error())
		} else {
			log.Info("watching the config file for changes", "config", o.config)
		}
	}
	if cfg.Server.WatchConfig {
		// Certificates and keys of terminating rules: a change (a renewal, a
		// secret's symlink swap) is served from the next handshake.
		files := func() []string { c, _ := eng.Config(); return c.TLSFiles() }
		if err := reload.WatchFiles(ctx, files, reload.DefaultDebounce, eng.ReloadCertificates); err != nil {
			log.Warn("cannot watch the certificate files; reload with SIGHUP", "err", err.Error())
		}
	}
	// Logged last, once /readyz says ready and the triggers of a reload are
	// in place, so the line means "serving" (the tests wait on it).
	info := version.Get()
	log.Info("dynamic-proxy started", "version", info.Version, "config", cfg.File, "pid", os.Getpid())
	// Serving: tell systemd, and the old process of an upgrade, which
	// then stops accepting.
	if err := upg.Ready(); err != nil {
		log.Warn("upgrade: cannot tell the old process that this one is ready", "err", err.Error())
	}
	if upg.Upgraded() {
		go func() { // the old process's connections, while this one serves
			carried := 0
			n, err := upg.ReceiveConns(eng.Server(), func(b json.RawMessage) { carried += ups.addCounters(b) })
			if err != nil {
				log.Warn("upgrade: the connection handover failed; the old process finishes the rest", "connections", n.Conns, "udp_sessions", n.Sessions, "err", err.Error())
			}
			log.Info("upgrade: took over from the old process", "old_pid", os.Getppid(), "connections", n.Conns, "udp_sessions", n.Sessions,
				"counter_series_carried", carried)
		}()
	}

	for {
		var h *upgrade.Handover
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				rl.Reload("signal", false)
				continue
			}
			if isUpgradeSignal(sig) {
				go ups.run("signal") // SIGTERM still works while it runs
				continue
			}
			stop()
			upg.Stop()             // kills a new process that is not ready yet
			obs.ready.Store(false) // draining: not ready for new traffic
			code := shutdown(eng, sig.String(), sigs, log)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			obs.shutdown(ctx)
			cancel()
			return code
		case h = <-ups.done:
		}
		// Upgraded: the new process serves on the same sockets. Stop
		// reading them (its admin API answers from now on; a request in
		// flight here, the upgrade's own, is answered first), then finish
		// what is open here.
		stop()
		obs.ready.Store(false)
		eng.Server().ReleaseListeners()
		t0 := time.Now()
		moved, err := h.SendConns(eng.Server(), ups.counterParts) // the epoll engine's relayed TCP connections and UDP sessions, then the counters
		if err != nil {
			log.Warn("upgrade: connection handover", "err", err.Error())
		}
		log.Info("upgrade: connections handed over", "connections", moved.Conns, "udp_sessions", moved.Sessions,
			"took", time.Since(t0).Round(time.Microsecond), "left_here", eng.Server().Active(), "udp_left_here", eng.Server().UDP.Sessions.Load())
		cur, _ := eng.Config()
		// What the new config has no rule or backend for drains as a reload
		// would drain it (drain_timeout 0: it runs until it ends).
		if drain := cur.Server.DrainTimeout.D(); moved.Gone != nil && drain > 0 {
			drained := make(chan struct{})
			t := time.AfterFunc(drain, func() {
				defer close(drained)
				if n := eng.Server().CloseConns(proxy.ConnFilter{Gone: moved.Gone}, proxy.EndDrained); n > 0 {
					log.Info("upgrade: drain_timeout over for connections the new config has no backend for; closed", "connections", n, "drain_timeout", drain)
				}
			})
			// The closes can end the shutdown before the line is logged:
			// once the timer fired, wait for it.
			defer func() {
				if !t.Stop() {
					<-drained
				}
			}()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		go func() { obs.shutdown(ctx); cancel() }()
		code := shutdown(eng, "upgrade", sigs, log)
		h.Close()
		return code
	}
}

// shutdown drains: why is the signal, or "upgrade" once a new process
// took the listeners.
func shutdown(eng *engine.Engine, why string, sigs <-chan os.Signal, log *slog.Logger) int {
	cfg, _ := eng.Config()
	timeout := cfg.Server.ShutdownTimeout.D()
	eng.Server().StopAccepting() // before the line says so
	log.Info("shutting down: listeners closed, draining connections", "signal", why,
		"active", eng.Server().Active(), "udp_sessions", eng.Server().UDP.Sessions.Load(), "shutdown_timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- eng.Shutdown(ctx) }()
	for {
		select {
		case err := <-done:
			if err != nil {
				log.Warn("shutdown timeout reached; remaining connections closed")
			}
			log.Info("shutdown complete")
			return 0
		case s := <-sigs:
			if s == syscall.SIGHUP || isUpgradeSignal(s) {
				continue
			}
			log.Warn("second signal: exiting now", "signal", s.String(), "active", eng.Server().Active())
			return 1
		}
	}
}
