// Package admin is the HTTP admin API and the live status page.
//
//	GET  /api/v1/status                              version, uptime, listeners, rules, backends
//	POST /api/v1/rules/{rule}/backends/{id}/drain    no new connections; open ones run on
//	POST /api/v1/rules/{rule}/backends/{id}/enable   take connections again (ends a drain)
//	POST /api/v1/rules/{rule}/backends/{id}/disable  no new connections
//	PUT  /api/v1/rules/{rule}/backends/{id}/weight   {"weight": N}
//	POST /api/v1/reload                              reload the config file (422 + problems when invalid)
//	POST /api/v1/reload?dry_run=true                 what reloading would change; body: a config to try instead of the file
//	GET  /api/v1/explain?client=IP:PORT&port=N...     why this backend: the decision for a hypothetical connection (explain.go)
//	GET  /healthz, /readyz                           alive; config loaded and listeners bound
//	GET  /                                           the status page (assets embedded)
//	     /debug/pprof/                               Go's profiler, when [admin] pprof = true
//
// With [admin] token set, every /api/ and /debug/pprof/ request needs
// "Authorization: Bearer TOKEN" (compared in constant time). Answers are
// JSON; errors are {"error": "..."} with 400 (malformed), 401, 404 (unknown
// rule or backend), 405, 413 (body over 1 MiB) or 422 (invalid config).
package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/acme"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
	"github.com/dynamic-proxy/dynamic-proxy/internal/reload"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/upgrade"
)

// MaxBodyBytes bounds a request body.
const MaxBodyBytes = 1 << 20

//go:embed assets
var assets embed.FS

// Options configure the admin handler.
type Options struct {
	// Engine is the running engine (required).
	Engine *engine.Engine
	// Reload reloads the config file through the one reload path
	// (reload.Reloader.Reload with trigger "api") and returns what it
	// changed; nil answers 503.
	Reload func() (engine.Change, error)
	// Preview returns what reloading would change, changing nothing:
	// for the config data, or for the config file when data is nil
	// (reload.Reloader.Preview); nil answers 503 to a dry run.
	Preview func(data []byte) (engine.Change, error)
	// Upgrade replaces the binary (internal/upgrade): it returns once the
	// new process serves, or with why it did not (this process then keeps
	// serving); nil answers 503.
	Upgrade func() (upgrade.Result, error)
	// Fleet is the store the instances of a fleet share ([redis]); nil
	// without it: the fleet endpoints answer 404 (fleet.go).
	Fleet Fleet
	// Ready reports whether the config is loaded and the listeners bound;
	// nil means ready.
	Ready func() bool
	// Token returns the bearer token required by /api/ and /debug/pprof/
	// ("" : none). nil reads [admin] token of the running config, so a
	// reload changes it.
	Token func() string
	// Pprof serves /debug/pprof/.
	Pprof bool
	// Started is when the process started (for uptime).
	Started time.Time
	// Log receives one line per change made through the API.
	Log *slog.Logger
	// Certificates returns, by rule, the certificates of the rules that
	// terminate TLS (tlsconf.Server.Certificates), shown by the status
	// API and page; nil: none.
	Certificates func() map[string][]tlsconf.Info
	// ACME returns the state of every name managed by ACME (valid until,
	// next renewal, last error), shown by the status API and page; nil: none.
	ACME func() []acme.NameState
}

// Handler serves the admin API and status page.
type Handler struct {
	o   Options
	mux *http.ServeMux
}

// New returns the admin handler.
func New(o Options) *Handler {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Started.IsZero() {
		o.Started = time.Now()
	}
	if o.Token == nil {
		o.Token = func() string {
			if cfg, _ := o.Engine.Config(); cfg != nil {
				return cfg.Admin.Token
			}
			return ""
		}
	}
	h := &Handler{o: o, mux: http.NewServeMux()}
	m := h.mux
	m.HandleFunc("/api/v1/status", h.methods(map[string]http.HandlerFunc{http.MethodGet: h.status}))
	m.HandleFunc("/api/v1/reload", h.methods(map[string]http.HandlerFunc{http.MethodPost: h.reload}))
	m.HandleFunc("/api/v1/upgrade", h.methods(map[string]http.HandlerFunc{http.MethodPost: h.upgrade}))
	m.HandleFunc("/api/v1/rules/{rule}/backends/{id}/{action}", h.backendAction)
	h.fleetRoutes(m)   // registration through Redis (fleet.go)
	h.explainRoutes(m) // "why this backend?" (explain.go)
	h.connRoutes(m)    // open connections: list and close (conns.go)
	m.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint %s (see GET /api/v1/status)", r.URL.Path)
	})
	m.HandleFunc("/healthz", h.methods(map[string]http.HandlerFunc{http.MethodGet: func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}}))
	m.HandleFunc("/readyz", h.methods(map[string]http.HandlerFunc{http.MethodGet: h.readyz}))
	if o.Pprof {
		m.HandleFunc("/debug/pprof/", pprof.Index)
		m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		m.HandleFunc("/debug/pprof/profile", pprof.Profile)
		m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	files := http.FileServerFS(static)
	m.Handle("GET /assets/", http.StripPrefix("/assets/", files))
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, static, "index.html")
	})
	return h
}

// ServeHTTP applies the security headers, authentication and the body limit,
// then routes the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	hd.Set("Cache-Control", "no-store")
	token := h.o.Token()
	protected := strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, "/debug/pprof")
	if protected {
		if msg := crossSite(r, token == ""); msg != "" {
			writeError(w, http.StatusForbidden, "%s", msg)
			return
		}
		if token != "" && !validToken(r.Header.Get("Authorization"), token) {
			hd.Set("WWW-Authenticate", `Bearer realm="dynamic-proxy"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token: send \"Authorization: Bearer TOKEN\" with [admin] token")
			return
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	h.mux.ServeHTTP(w, r)
}

// validToken compares the bearer token with want in constant time (both are
// hashed first, so neither the content nor the length leaks).
func validToken(header, want string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	if !ok {
		got, ok = strings.CutPrefix(header, "bearer ")
	}
	a, b := sha256.Sum256([]byte(strings.TrimSpace(got))), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1 && ok
}

// crossSite refuses what a browser sends on behalf of another site: a web
// page may POST to 127.0.0.1 too. Without a token it also refuses a Host
// that is neither an IP address nor localhost (DNS rebinding).
func crossSite(r *http.Request, noToken bool) string {
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return "cross-site request refused"
	}
	if origin := r.Header.Get("Origin"); origin != "" { // "null" (a sandboxed or file: page) is refused too
		if o := strings.TrimPrefix(strings.TrimPrefix(origin, "http://"), "https://"); o != r.Host {
			return fmt.Sprintf("request from origin %q refused: it is not this admin address", origin)
		}
	}
	if noToken {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		host = strings.Trim(host, "[]")
		if host != "" && net.ParseIP(host) == nil && !strings.EqualFold(host, "localhost") {
			return fmt.Sprintf("host %q refused: without [admin] token the API answers only requests addressed to an IP or localhost", host)
		}
	}
	return ""
}

// methods dispatches by method and answers 405 with Allow otherwise.
func (h *Handler) methods(by map[string]http.HandlerFunc) http.HandlerFunc {
	var allow []string
	for m := range by {
		allow = append(allow, m)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if f, ok := by[r.Method]; ok {
			f(w, r)
			return
		}
		methodNotAllowed(w, r, allow...)
	}
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow ...string) {
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeError(w, http.StatusMethodNotAllowed, "%s %s: method not allowed (use %s)", r.Method, r.URL.Path, strings.Join(allow, " or "))
}

func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	if h.o.Ready == nil || h.o.Ready() {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return
	}
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready"})
}

// backendAction serves drain, enable, disable (POST) and weight (PUT).
func (h *Handler) backendAction(w http.ResponseWriter, r *http.Request) {
	rule, id, action := r.PathValue("rule"), r.PathValue("id"), r.PathValue("action")
	want := http.MethodPost
	switch action {
	case "drain", "enable", "disable":
	case "weight":
		want = http.MethodPut
	default:
		writeError(w, http.StatusNotFound, "unknown action %q: use drain, enable, disable (POST) or weight (PUT)", action)
		return
	}
	if r.Method != want {
		methodNotAllowed(w, r, want)
		return
	}
	var weight int
	if action == "weight" {
		var ok bool
		if weight, ok = readWeight(w, r); !ok {
			return
		}
	}
	b, err := h.o.Engine.Backend(rule, id)
	if err != nil {
		writeError(w, http.StatusNotFound, "%v", err)
		return
	}
	switch action {
	case "drain":
		b.SetDraining(true)
	case "enable":
		b.SetEnabled(true)
		b.SetDraining(false)
	case "disable":
		b.SetEnabled(false)
	case "weight":
		b.SetWeight(weight)
	}
	attrs := []any{"rule", rule, "backend", id, "action", action, "remote", r.RemoteAddr}
	if action == "weight" {
		attrs = append(attrs, "weight", weight)
	}
	if err := h.shareState(r, rule, id, action, weight); err != nil { // [redis]: every instance (fleet.go)
		h.o.Log.Warn("admin API: backend changed on this instance only: cannot share it through Redis", append(attrs, "err", err.Error())...)
		writeError(w, http.StatusServiceUnavailable, "applied on this instance only; not shared with the fleet: %v", err)
		return
	}
	h.o.Log.Info("admin API: backend changed (until a reload changes it)", attrs...)
	writeJSON(w, http.StatusOK, backendJSON(b))
}

// readWeight decodes {"weight": N} strictly; on a problem it has answered.
func readWeight(w http.ResponseWriter, r *http.Request) (int, bool) {
	var body struct {
		Weight *int `json:"weight"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(&body)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "request body over %d bytes", MaxBodyBytes)
		return 0, false
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, `empty body: want {"weight": N} with N from 1 to %d`, config.MaxWeight)
		return 0, false
	case err != nil:
		writeError(w, http.StatusBadRequest, `malformed body: %v; want {"weight": N} with N from 1 to %d`, err, config.MaxWeight)
		return 0, false
	case body.Weight == nil:
		writeError(w, http.StatusBadRequest, `missing "weight": want {"weight": N} with N from 1 to %d`, config.MaxWeight)
		return 0, false
	case *body.Weight < 1 || *body.Weight > config.MaxWeight:
		writeError(w, http.StatusBadRequest, "weight must be from 1 to %d, got %d", config.MaxWeight, *body.Weight)
		return 0, false
	}
	return *body.Weight, true
}

// ProblemJSON is one config problem of a failed reload or preview, as the
// API answers it (the CLI's --diff reads it too).
type ProblemJSON struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Path    string `json:"path,omitempty"`
	Message string `json:"message"`
}

func (h *Handler) reload(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("dry_run") == "true" {
		h.preview(w, r)
		return
	}
	if h.o.Reload == nil {
		writeError(w, http.StatusServiceUnavailable, "reload is not available")
		return
	}
	ch, err := h.o.Reload()
	if err == nil {
		_, v := h.o.Engine.Config()
		writeJSON(w, http.StatusOK, map[string]any{"status": "reloaded", "config_version": v,
			"changes": ch.String(), "change": ch})
		return
	}
	h.writeConfigError(w, err, "still serving the previous config")
}

// upgrade starts a binary upgrade and answers when it is over: 200 with the
// new process once it serves (this one then hands over and exits), 409
// while another upgrade runs, 500 with the reason when the new process
// failed (this one keeps serving), 501 where upgrades are not supported.
func (h *Handler) upgrade(w http.ResponseWriter, _ *http.Request) {
	if h.o.Upgrade == nil {
		writeError(w, http.StatusServiceUnavailable, "upgrade is not available")
		return
	}
	res, err := h.o.Upgrade()
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]any{"status": "upgraded", "pid": res.PID, "version": res.Version})
	case errors.Is(err, upgrade.ErrRunning):
		writeError(w, http.StatusConflict, "%v", err)
	case !upgrade.Supported:
		writeError(w, http.StatusNotImplemented, "%v", err)
	default:
		writeError(w, http.StatusInternalServerError, "upgrade failed, still serving here: %v", err)
	}
}

// preview answers a dry-run reload: the plan for the config in the body,
// or for the config file when the body is empty.
func (h *Handler) preview(w http.ResponseWriter, r *http.Request) {
	if h.o.Preview == nil {
		writeError(w, http.StatusServiceUnavailable, "a dry-run reload is not available")
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "the config is over %d bytes", MaxBodyBytes)
		return
	}
	if len(data) == 0 {
		data = nil
	}
	ch, err := h.o.Preview(data)
	if err == nil {
		_, v := h.o.Engine.Config()
		writeJSON(w, http.StatusOK, map[string]any{"status": "plan", "config_version": v,
			"changes": ch.String(), "change": ch})
		return
	}
	if errors.Is(err, reload.ErrPreviewMerged) {
		writeError(w, http.StatusConflict, "%v", err)
		return
	}
	h.writeConfigError(w, err, "nothing was changed")
}

// writeConfigError answers a config that failed to load or plan: 422 with
// its problems, 500 when it could not be read. outcome says what serves.
func (h *Handler) writeConfigError(w http.ResponseWriter, err error, outcome string) {
	var cerrs *config.Errors
	if errors.As(err, &cerrs) {
		ps := make([]ProblemJSON, len(cerrs.Problems))
		for i, p := range cerrs.Problems {
			ps[i] = ProblemJSON{File: p.File, Line: p.Line, Path: p.Path, Message: p.Msg}
		}
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
			"error":    fmt.Sprintf("the config has %d problem(s); %s", len(ps), outcome),
			"problems": ps,
		})
		return
	}
	var perr *fs.PathError
	if errors.As(err, &perr) {
		writeError(w, http.StatusInternalServerError, "cannot read the config: %v", err)
		return
	}
	// Valid, but it could not be applied (a listener would not bind, a
	// host name does not resolve): still the config's fault.
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
		"error":    "the config could not be applied; " + outcome + ": " + err.Error(),
		"problems": []ProblemJSON{{File: h.configFile(), Message: err.Error()}},
	})
}

func (h *Handler) configFile() string {
	if cfg, _ := h.o.Engine.Config(); cfg != nil {
		return cfg.File
	}
	return ""
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}
