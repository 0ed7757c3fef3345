package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dynamic-proxy/dynamic-proxy/internal/acme"
	"github.com/dynamic-proxy/dynamic-proxy/internal/admin"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/fleet"
	"github.com/dynamic-proxy/dynamic-proxy/internal/metrics"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/reload"
	"github.com/dynamic-proxy/dynamic-proxy/internal/upgrade"
)

// observe runs the metrics endpoint and the admin API: both are bound
// before the proxy's listeners, so that a port conflict stops start-up with
// a clear error, and /readyz says "ready" only once the listeners are bound.
type observe struct {
	log     *slog.Logger
	metrics *metrics.Metrics // nil: [metrics] enabled = false
	tls     *metrics.TLS     // TLS termination's metrics; nil with metrics off
	servers []*http.Server
	banner  [][]any // what started, logged once the proxy is up (a failed start says one thing only)
	ready   atomic.Bool
	reload  atomic.Pointer[reload.Reloader]
	lns     map[string]net.Listener // by handover key (observeKey), for an upgrade
	in      *proxy.Sockets          // sockets an upgrade handed over (nil: none)
	upgrade func() (upgrade.Result, error)
}

// adminFleet is the admin API's fleet store: fl, or nil without [redis].
func adminFleet(fl *fleet.Follower) admin.Fleet {
	if fl == nil {
		return nil // not a typed nil: the fleet endpoints answer 404
	}
	return fl
}

// startObserve starts the metrics endpoint and the admin API; fl is the
// admin API's fleet store (nil without [redis]).
//
// in holds the sockets an upgrade handed over, taken instead of binding;
// upgrade runs one (nil: the endpoint answers 503).
func startObserve(cfg *config.Config, eng *engine.Engine, fl admin.Fleet, am *acme.Manager, log *slog.Logger,
	in *proxy.Sockets, upgrade func() (upgrade.Result, error)) (*observe, error) {
	o := &observe{log: log, lns: map[string]net.Listener{}, in: in, upgrade: upgrade}
	started := time.Now()
	if mc := cfg.Metrics; mc.Enabled {
		reg := prometheus.NewRegistry()
		m, err := metrics.New(reg, true)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		if o.tls, err = metrics.NewTLS(reg); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		if am != nil {
			ma, err := metrics.NewACME(reg)
			if err != nil {
				return nil, fmt.Errorf("metrics: %w", err)
			}
			ma.SetSource(am.State)
		}
		mux := http.NewServeMux()
		mux.Handle(mc.Path, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
			EnableOpenMetrics: true,
		}))
		if mc.Path != "/" {
			mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
				fmt.Fprintf(w, "dynamic-proxy metrics are at %s\n", mc.Path)
			})
		}
		addr, err := o.serve("metrics", mc.Bind, readOnly(mux))
		if err != nil {
			return nil, err
		}
		o.metrics = m
		eng.SetMetrics(m)
		o.banner = append(o.banner, []any{"metrics listening", "address", addr, "path", mc.Path})
	}
	if ac := cfg.Admin; ac.Bind != "" {
		h := admin.New(admin.Options{
			Engine:       eng,
			Certificates: eng.Certificates,
			ACME:         acmeState(am),
			Fleet:        fl,
			Ready:        o.ready.Load,
			Pprof:        ac.Pprof,
			Started:      started,
			Log:          log,
			Reload: func() (engine.Change, error) {
				rl := o.reload.Load()
				if rl == nil {
					return engine.Change{}, errors.New("not started yet")
				}
				return rl.Reload("api", false)
			},
			Upgrade: o.upgrade,
			Preview: func(data []byte) (engine.Change, error) {
				rl := o.reload.Load()
				if rl == nil {
					return engine.Change{}, errors.New("not started yet")
				}
				return rl.Preview(data)
			},
		})
		addr, err := o.serve("admin", ac.Bind, h)
		if err != nil {
			o.close()
			return nil, err
		}
		o.banner = append(o.banner, []any{"admin API listening", "address", addr, "status_page", "http://" + addr + "/",
			"token", ac.Token != "", "pprof", ac.Pprof})
	}
	return o, nil
}

// readOnly refuses every method but GET and HEAD (405): the metrics
// endpoint changes nothing, so it takes no body and no POST, PUT, DELETE.
func readOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, r.Method+" not allowed: the metrics endpoint is read-only (GET or HEAD)", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// serve binds addr, the value of [what] bind, now and serves h on it in
// the background. A failed bind names the key to change: the defaults are
// fixed ports, which another program may hold on a first run.
func (o *observe) serve(what, addr string, h http.Handler) (string, error) {
	key := observeKey(what, addr)
	ln, err := proxy.ListenTCPKey(o.in, key, addr) // or the socket an upgrade handed over
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return "", fmt.Errorf("%s.bind %s: address already in use; set [%s] bind to another address, or 127.0.0.1:0 for any free port",
				what, addr, what)
		}
		return "", fmt.Errorf("%s.bind %s: %w; set [%s] bind to another address", what, addr, unwrapNetErr(err), what)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(o.log.Handler(), slog.LevelDebug),
	}
	o.servers = append(o.servers, srv)
	o.lns[key] = ln
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Error(what+" server stopped", "err", err.Error())
		}
	}()
	return ln.Addr().String(), nil
}

// announce logs the metrics and admin addresses, once the proxy's
// listeners are bound too.
func (o *observe) announce() {
	for _, b := range o.banner {
		o.log.Info(b[0].(string), b[1:]...)
	}
}

// started is called once the listeners are bound and the reloader exists.
func (o *observe) started(rl *reload.Reloader) {
	o.reload.Store(rl)
	if o.metrics != nil {
		o.metrics.Loaded(time.Now())
	}
	o.ready.Store(true)
}

// shutdown stops the HTTP servers, waiting for requests in flight until ctx ends.
func (o *observe) shutdown(ctx context.Context) {
	o.ready.Store(false)
	for _, s := range o.servers {
		_ = s.Shutdown(ctx)
	}
}

func (o *observe) close() {
	for _, s := range o.servers {
		_ = s.Close()
	}
}

func unwrapNetErr(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// acmeState is the status API's source of the ACME names (nil: none).
func acmeState(am *acme.Manager) func() []acme.NameState {
	if am == nil {
		return nil
	}
	return am.State
}
