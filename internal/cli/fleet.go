package cli

// The fleet side of the command line: the "config" and "backend"
// subcommands, which write to Redis. A serving instance follows Redis
// through internal/fleet.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/logging"
	"github.com/dynamic-proxy/dynamic-proxy/internal/store"
)

const fleetUsage = `Fleet commands: read and write the state a fleet of instances shares in Redis.

Usage:
  dynamic-proxy config push [-c FILE]       validate FILE and store it as the fleet's config
  dynamic-proxy config show                 print the stored config (version, pushed by, TOML)
  dynamic-proxy backend add --rule R --id ID --address HOST:PORT [--weight N] [--ttl 10s]
                                            register a backend (again: renew it)
  dynamic-proxy backend remove --rule R --id ID
  dynamic-proxy backend list [--rule R]     registrations and shared runtime state
  dynamic-proxy backend heartbeat --rule R --id ID --address HOST:PORT [--weight N]
                                 [--ttl 10s] [--interval TTL/3] [--remove-on-exit] [--verbose]
                                            register and keep renewing until killed
  dynamic-proxy backend reset --rule R --id ID
                                            clear a backend's shared runtime state

Redis is the [redis] section of the config file (-c, default config.toml), or:
  --redis URL           redis://[user:password@]host:port[/db]
                        redis+sentinel://[user:password@]host:port,.../MASTER[/db]
                        redis+cluster://[user:password@]host:port,...
                        (rediss… for TLS)
  --key-prefix PREFIX   (default "dynamic-proxy:", "{dynamic-proxy}:" on a
                        cluster, or [redis] key_prefix)

A change that Redis shows it did not make (no connection to the master, a
failover in progress) is retried for up to 15s; one whose outcome is unknown
(the connection broke after it was sent) is retried only when repeating it is
harmless (backend add, heartbeat), and otherwise reported as such.

Exit status: 0 done, 1 failed (invalid input, Redis error, not found), 2 usage.
`

// cliWriteRetry is how long a fleet command retries a change that did not
// run (store.Options.WriteRetry): longer than a Sentinel failover or a
// cluster's slot move normally takes.
const cliWriteRetry = 15 * time.Second

// isFleetCommand reports whether args start a fleet subcommand.
func isFleetCommand(args []string) bool {
	return len(args) > 0 && (args[0] == "config" || args[0] == "backend")
}

// runFleet runs "dynamic-proxy config|backend ...".
func runFleet(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprint(stderr, fleetUsage)
		return 2
	}
	if args[1] == "-h" || args[1] == "--help" || args[1] == "help" {
		fmt.Fprint(stdout, fleetUsage)
		return 0
	}
	c := &fleetCmd{name: args[0] + " " + args[1], stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("dynamic-proxy "+c.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, fleetUsage) }
	fs.StringVar(&c.config, "c", "config.toml", "")
	fs.StringVar(&c.config, "config", "config.toml", "")
	fs.StringVar(&c.redis, "redis", "", "")
	fs.StringVar(&c.prefix, "key-prefix", "", "")
	var run func() int
	switch c.name {
	case "config push":
		run = c.configPush
	case "config show":
		run = c.configShow
	case "backend add", "backend heartbeat":
		fs.StringVar(&c.rule, "rule", "", "")
		fs.StringVar(&c.id, "id", "", "")
		fs.StringVar(&c.address, "address", "", "")
		fs.IntVar(&c.weight, "weight", 1, "")
		if c.name == "backend add" {
			fs.DurationVar(&c.ttl, "ttl", 0, "")
			run = c.backendAdd
		} else {
			fs.DurationVar(&c.ttl, "ttl", 10*time.Second, "")
			fs.DurationVar(&c.interval, "interval", 0, "")
			fs.BoolVar(&c.removeOnExit, "remove-on-exit", false, "")
			fs.BoolVar(&c.verbose, "verbose", false, "")
			run = c.backendHeartbeat
		}
	case "backend remove", "backend reset":
		fs.StringVar(&c.rule, "rule", "", "")
		fs.StringVar(&c.id, "id", "", "")
		run = c.backendRemove
	case "backend list":
		fs.StringVar(&c.rule, "rule", "", "")
		run = c.backendList
	default:
		fmt.Fprintf(stderr, "dynamic-proxy: unknown command %q (see dynamic-proxy %s --help)\n", c.name, args[0])
		return 2
	}
	if err := fs.Parse(args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, fleetUsage)
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dynamic-proxy %s: unexpected argument %q\n", c.name, fs.Arg(0))
		return 2
	}
	for _, f := range []struct{ name, v string }{{"rule", c.rule}, {"id", c.id}} {
		if fs.Lookup(f.name) != nil && f.v == "" && c.name != "backend list" {
			fmt.Fprintf(stderr, "dynamic-proxy %s: --%s is required\n", c.name, f.name)
			return 2
		}
	}
	if fs.Lookup("address") != nil && c.address == "" {
		fmt.Fprintf(stderr, "dynamic-proxy %s: --address HOST:PORT is required\n", c.name)
		return 2
	}
	return run()
}

type fleetCmd struct {
	name           string
	stdout, stderr io.Writer
	config         string
	redis, prefix  string
	rule, id       string
	address        string
	weight         int
	ttl, interval  time.Duration
	removeOnExit   bool
	verbose        bool // heartbeat: log every renewal

	cfg *config.Config // the -c file, when it was read
}

func (c *fleetCmd) fail(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "dynamic-proxy %s: %s\n", c.name, fmt.Sprintf(format, args...))
	return 1
}

// open connects to Redis as --redis or the -c file's [redis] say.
func (c *fleetCmd) open() (*store.Store, error) {
	var o store.Options
	if c.redis != "" {
		prefix := config.DefaultKeyPrefix
		if t, err := config.ParseRedisURL(c.redis); err == nil && t.Kind == config.RedisCluster {
			prefix = config.DefaultClusterKeyPrefix
		}
		o = store.Options{URL: c.redis, KeyPrefix: prefix, ConnectionTimeout: 5 * time.Second, CommandTimeout: 3 * time.Second}
	} else {
		if c.cfg == nil {
			cfg, err := config.LoadFollower(c.config) // only its [redis] is needed
			if err != nil {
				return nil, fmt.Errorf("%v\n(Redis is taken from the [redis] section of %s; or give --redis URL)", err, c.config)
			}
			c.cfg = cfg
		}
		if c.cfg.Redis == nil {
			return nil, fmt.Errorf("%s has no [redis] section: add one or give --redis URL", c.config)
		}
		o = store.OptionsFrom(c.cfg.Redis)
	}
	if c.prefix != "" {
		o.KeyPrefix = c.prefix
	}
	o.WriteRetry = cliWriteRetry
	st, err := store.Open(o)
	if err != nil {
		return nil, err
	}
	st.OnRetry = func(err error, wait time.Duration) {
		fmt.Fprintf(c.stderr, "dynamic-proxy %s: %v; retrying in %v\n", c.name, err, wait)
	}
	return st, nil
}

func ctxTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

func (c *fleetCmd) configPush() int {
	data, err := os.ReadFile(c.config)
	if err != nil {
		return c.fail("%v", err)
	}
	cfg, err := config.ParseFleet(c.config, data)
	if err != nil {
		fmt.Fprintf(c.stderr, "dynamic-proxy config push: %s is invalid; nothing was pushed:\n%v\n", c.config, err)
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(c.stderr, "warning: %s\n", w)
	}
	if c.redis == "" {
		// Redis is the file's own [redis] (ParseFleet supplies one when
		// it has none, Parse does not).
		if own, err := config.Parse(c.config, data); err == nil && own.Redis != nil {
			c.cfg = own
		} else {
			return c.fail("%s has no [redis] section to push to: add one or give --redis URL", c.config)
		}
	}
	st, err := c.open()
	if err != nil {
		return c.fail("%v", err)
	}
	defer st.Close()
	ctx, cancel := ctxTimeout()
	defer cancel()
	v, err := st.PushConfig(ctx, data, pushSource(c.config))
	if err != nil {
		return c.fail("%v", err)
	}
	fmt.Fprintf(c.stdout, "pushed %s as config version %d (redis %s, key prefix %q): %d rules\n", c.config, v, st.Addr(), st.Prefix(), len(cfg.Rules))
	fmt.Fprintf(c.stderr, "note: instances with [redis] watch_config keep their own %s\n", strings.Join(config.LocalKeys, ", "))
	return 0
}

// pushSource names who pushed a config: user@host:/abs/path.
func pushSource(path string) string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return fmt.Sprintf("%s@%s:%s", name, host, path)
}

func (c *fleetCmd) configShow() int {
	st, err := c.open()
	if err != nil {
		return c.fail("%v", err)
	}
	defer st.Close()
	ctx, cancel := ctxTimeout()
	defer cancel()
	sc, err := st.Config(ctx)
	if err != nil {
		return c.fail("%v", err)
	}
	if sc == nil {
		return c.fail("no config has been pushed to redis %s under key prefix %q", st.Addr(), st.Prefix())
	}
	fmt.Fprintf(c.stdout, "# dynamic-proxy config version %d, pushed %s by %s (redis %s, key %s)\n",
		sc.Version, sc.PushedAt.UTC().Format(time.RFC3339), sc.Source, st.Addr(), st.Key("config"))
	c.stdout.Write(sc.TOML)
	if len(sc.TOML) > 0 && sc.TOML[len(sc.TOML)-1] != '\n' {
		fmt.Fprintln(c.stdout)
	}
	return 0
}

// checkAgainstStored warns when the stored config (if any) would make
// instances that follow it ignore the registration.
func (c *fleetCmd) checkAgainstStored(ctx context.Context, st *store.Store) {
	sc, err := st.Config(ctx)
	if err != nil || sc == nil {
		return
	}
	cfg, err := config.ParseFleet(sc.Name(st.Prefix()), sc.TOML)
	if err != nil {
		return
	}
	for _, r := range cfg.Rules {
		if r.Name != c.rule {
			continue
		}
		for _, b := range r.Backends {
			if b.ID == c.id {
				fmt.Fprintf(c.stderr, "warning: rule %q of the stored config (version %d) defines backend %q itself; instances following it ignore this registration\n", c.rule, sc.Version, c.id)
			}
		}
		return
	}
	fmt.Fprintf(c.stderr, "warning: the stored config (version %d) has no rule %q; instances following it ignore this registration\n", sc.Version, c.rule)
}

func (c *fleetCmd) backendAdd() int {
	if err := store.CheckRegistration(c.rule, c.id, c.address, c.weight, c.ttl); err != nil {
		return c.fail("%v", err)
	}
	st, err := c.open()
	if err != nil {
		return c.fail("%v", err)
	}
	defer st.Close()
	ctx, cancel := ctxTimeout()
	defer cancel()
	v, changed, err := st.AddBackend(ctx, c.rule, c.id, c.address, c.weight, c.ttl)
	if err != nil {
		return c.fail("%v", err)
	}
	what := "registered"
	if !changed {
		what = "renewed"
	}
	fmt.Fprintf(c.stdout, "%s %s/%s at %s, weight %d, %s (version %d)\n", what, c.rule, c.id, c.address, c.weight, ttlText(c.ttl), v)
	c.checkAgainstStored(ctx, st)
	return 0
}

func ttlText(ttl time.Duration) string {
	if ttl <= 0 {
		return "no expiry"
	}
	return "expires unless renewed within " + ttl.String()
}

func (c *fleetCmd) backendRemove() int {
	st, err := c.open()
	if err != nil {
		return c.fail("%v", err)
	}
	defer st.Close()
	ctx, cancel := ctxTimeout()
	defer cancel()
	if c.name == "backend reset" {
		v, err := st.ResetState(ctx, c.rule, c.id)
		if err != nil {
			return c.fail("%v", err)
		}
		fmt.Fprintf(c.stdout, "cleared the shared state of %s/%s: instances return it to its config values (version %d)\n", c.rule, c.id, v)
		return 0
	}
	v, err := st.RemoveBackend(ctx, c.rule, c.id)
	if err != nil {
		return c.fail("%v", err)
	}
	fmt.Fprintf(c.stdout, "removed %s/%s (version %d)\n", c.rule, c.id, v)
	return 0
}

func (c *fleetCmd) backendList() int {
	st, err := c.open()
	if err != nil {
		return c.fail("%v", err)
	}
	defer st.Close()
	ctx, cancel := ctxTimeout()
	defer cancel()
	snap, err := st.Snapshot(ctx)
	if err != nil {
		return c.fail("%v", err)
	}
	states := map[[2]string]store.State{}
	for _, s := range snap.States {
		states[[2]string{s.Rule, s.ID}] = s
	}
	tw := tabwriter.NewWriter(c.stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tID\tADDRESS\tWEIGHT\tEXPIRES IN\tSTATE\tVERSION")
	listed := map[[2]string]bool{}
	for _, b := range snap.Backends {
		if c.rule != "" && b.Rule != c.rule {
			continue
		}
		k := [2]string{b.Rule, b.ID}
		listed[k] = true
		exp := "never"
		if !b.Expires.IsZero() {
			exp = b.Expires.Sub(snap.Now).Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\n", b.Rule, b.ID, b.Address, b.Weight, exp, stateText(states[k]), b.Version)
	}
	keys := make([][2]string, 0, len(states))
	for k := range states {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+"/"+keys[i][1] < keys[j][0]+"/"+keys[j][1] })
	for _, k := range keys { // state of file-defined backends
		if listed[k] || (c.rule != "" && k[0] != c.rule) {
			continue
		}
		s := states[k]
		fmt.Fprintf(tw, "%s\t%s\t(config file)\t-\t-\t%s\t%d\n", k[0], k[1], stateText(s), s.Version)
	}
	tw.Flush()
	fmt.Fprintf(c.stdout, "version %d (redis %s, key prefix %q)\n", snap.Version, st.Addr(), st.Prefix())
	for _, p := range snap.Problems {
		fmt.Fprintf(c.stderr, "rejected: %s\n", p)
	}
	return 0
}

func stateText(s store.State) string {
	d := engine.BackendState{Draining: s.Draining, Enabled: s.Enabled, Weight: s.Weight}.Describe()
	if d == "" {
		return "-"
	}
	return d
}

func (c *fleetCmd) backendHeartbeat() int {
	if c.ttl <= 0 {
		return c.fail("--ttl must be greater than 0: a heartbeat renews a registration before it expires")
	}
	if err := store.CheckRegistration(c.rule, c.id, c.address, c.weight, c.ttl); err != nil {
		return c.fail("%v", err)
	}
	if c.interval <= 0 {
		c.interval = c.ttl / 3
	}
	if c.interval >= c.ttl {
		return c.fail("--interval %v must be shorter than --ttl %v", c.interval, c.ttl)
	}
	st, err := c.open()
	if err != nil {
		return c.fail("%v", err)
	}
	defer st.Close()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	log := slog.New(slog.NewTextHandler(c.stderr, nil))
	name := c.rule + "/" + c.id
	ok := false
	tick := time.NewTicker(c.interval)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), c.interval)
		v, changed, err := st.AddBackend(ctx, c.rule, c.id, c.address, c.weight, c.ttl)
		cancel()
		switch {
		case err != nil:
			log.Warn("heartbeat: cannot renew; retrying", "backend", name, "err", err.Error(), "retry_in", c.interval)
			ok = false
		case changed || !ok:
			log.Info("heartbeat: registered", "backend", name, "address", c.address, "weight", c.weight,
				"ttl", c.ttl, "interval", c.interval, "version", v)
			ok = true
		case c.verbose:
			log.Info("heartbeat: renewed", "backend", name, "version", v)
		}
		select {
		case <-tick.C:
		case sig := <-sigs:
			if c.removeOnExit {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := st.RemoveBackend(ctx, c.rule, c.id)
				cancel()
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					log.Error("heartbeat: stopped, but cannot remove the registration; it expires by itself", "backend", name, "err", err.Error())
					return 1
				}
				log.Info("heartbeat: stopped and removed the registration", "backend", name, "signal", sig.String())
				return 0
			}
			log.Info("heartbeat: stopped; the registration expires unless renewed", "backend", name, "signal", sig.String(), "ttl", c.ttl)
			return 0
		}
	}
}

// levelSetter returns how startFleet changes the log level (not when
// --log-level was given).
func levelSetter(lv *slog.LevelVar, flagLevel string) func(string) {
	return func(level string) {
		if flagLevel == "" {
			_ = logging.SetLevel(lv, level)
		}
	}
}
