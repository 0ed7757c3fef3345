package admin

// The fleet endpoints ([redis]): backend registration, and sharing the
// runtime changes of backendAction with every instance.
//
//	GET    /api/v1/registrations                   every backend registered in Redis
//	PUT    /api/v1/rules/{rule}/backends/{id}      register or renew {"address": "HOST:PORT", "weight": N, "ttl": "10s"}
//	DELETE /api/v1/rules/{rule}/backends/{id}      remove a registration
//
// Without [redis] they answer 404. When Redis cannot be reached they answer
// 503; a drain, enable, disable or weight change then still applies to this
// instance, and the 503 says it was not shared.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
)

// Fleet is the store the instances of a fleet share (internal/fleet
// implements it over Redis): the admin API shares runtime changes and
// registers backends through it.
type Fleet interface {
	// ShareState stores a runtime change (its Version is ignored) for
	// every instance.
	ShareState(ctx context.Context, s engine.BackendState) error
	// Register registers or renews a backend; ttl 0: no expiry.
	Register(ctx context.Context, b engine.DynamicBackend, ttl time.Duration) error
	// Deregister removes a registration; an error wrapping
	// engine.ErrUnknownBackend when there is none.
	Deregister(ctx context.Context, rule, id string) error
	// Registrations lists every registration.
	Registrations(ctx context.Context) ([]engine.DynamicBackend, error)
}

// fleetTimeout bounds one request to Redis from the admin API.
const fleetTimeout = 10 * time.Second

func (h *Handler) fleetRoutes(m *http.ServeMux) {
	m.HandleFunc("/api/v1/registrations", h.methods(map[string]http.HandlerFunc{http.MethodGet: h.registrations}))
	m.HandleFunc("/api/v1/rules/{rule}/backends/{id}", h.methods(map[string]http.HandlerFunc{
		http.MethodPut: h.register, http.MethodDelete: h.deregister}))
}

// fleet returns the fleet store, or answers 404 and returns nil.
func (h *Handler) fleet(w http.ResponseWriter) Fleet {
	f := h.o.Fleet
	if f == nil {
		writeError(w, http.StatusNotFound, "backend registration needs Redis: this instance's config has no [redis] section")
	}
	return f
}

// shareState stores a change made by backendAction for every instance of
// the fleet; nil without [redis].
func (h *Handler) shareState(r *http.Request, rule, id, action string, weight int) error {
	f := h.o.Fleet
	if f == nil {
		return nil
	}
	yes, no := true, false
	s := engine.BackendState{Rule: rule, ID: id}
	switch action {
	case "drain":
		s.Draining = &yes
	case "enable":
		s.Enabled, s.Draining = &yes, &no
	case "disable":
		s.Enabled = &no
	case "weight":
		s.Weight = weight
	}
	ctx, cancel := context.WithTimeout(r.Context(), fleetTimeout)
	defer cancel()
	return f.ShareState(ctx, s)
}

type registrationJSON struct {
	Rule      string     `json:"rule"`
	ID        string     `json:"id"`
	Address   string     `json:"address"`
	Weight    int        `json:"weight"`
	TTL       string     `json:"ttl,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

func (h *Handler) registrations(w http.ResponseWriter, r *http.Request) {
	f := h.fleet(w)
	if f == nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), fleetTimeout)
	defer cancel()
	regs, err := f.Registrations(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	out := make([]registrationJSON, 0, len(regs))
	for _, b := range regs {
		j := registrationJSON{Rule: b.Rule, ID: b.ID, Address: b.Address, Weight: b.Weight}
		if !b.Expires.IsZero() {
			t := b.Expires.UTC()
			j.ExpiresAt = &t
		}
		out = append(out, j)
	}
	writeJSON(w, http.StatusOK, map[string]any{"registrations": out})
}

func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	f := h.fleet(w)
	if f == nil {
		return
	}
	rule, id := r.PathValue("rule"), r.PathValue("id")
	var body struct {
		Address string `json:"address"`
		Weight  *int   `json:"weight"`
		TTL     string `json:"ttl"`
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(&body)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	const want = `want {"address": "HOST:PORT", "weight": N, "ttl": "10s"} (weight and ttl optional)`
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "request body over %d bytes", MaxBodyBytes)
		return
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "empty body: %s", want)
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "malformed body: %v; %s", err, want)
		return
	}
	weight := 1
	if body.Weight != nil {
		weight = *body.Weight
	}
	var ttl time.Duration
	if body.TTL != "" {
		if ttl, err = time.ParseDuration(body.TTL); err != nil {
			writeError(w, http.StatusBadRequest, "ttl %q: want a duration such as \"10s\"", body.TTL)
			return
		}
	}
	nerr := config.CheckName("backend id", id)
	switch aerr := config.CheckBackendAddress(body.Address); {
	case nerr != nil:
		writeError(w, http.StatusBadRequest, "%v", nerr)
		return
	case aerr != nil:
		writeError(w, http.StatusBadRequest, "address: %v", aerr)
		return
	case weight < 1 || weight > config.MaxWeight:
		writeError(w, http.StatusBadRequest, "weight must be from 1 to %d, got %d", config.MaxWeight, weight)
		return
	case ttl < 0 || (ttl > 0 && ttl < time.Second):
		writeError(w, http.StatusBadRequest, "ttl must be 0 (no expiry) or at least 1s, got %v", ttl)
		return
	}
	if msg := h.checkRule(rule, id); msg != "" {
		writeError(w, http.StatusConflict, "%s", msg)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), fleetTimeout)
	defer cancel()
	if err := f.Register(ctx, engine.DynamicBackend{Rule: rule, ID: id, Address: body.Address, Weight: weight}, ttl); err != nil {
		writeError(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	h.o.Log.Info("admin API: backend registered for the fleet", "rule", rule, "backend", id, "address", body.Address,
		"weight", weight, "ttl", ttl, "remote", r.RemoteAddr)
	j := registrationJSON{Rule: rule, ID: id, Address: body.Address, Weight: weight}
	if ttl > 0 {
		j.TTL = ttl.String()
	}
	writeJSON(w, http.StatusOK, j)
}

// checkRule refuses a registration that this instance would ignore: a
// rule its config does not have, or an id the rule's file defines.
func (h *Handler) checkRule(rule, id string) string {
	cfg, _ := h.o.Engine.Config()
	if cfg == nil {
		return "not started yet"
	}
	for _, r := range cfg.Rules {
		if r.Name != rule {
			continue
		}
		for _, b := range r.Backends {
			if b.ID == id {
				return fmt.Sprintf("rule %q defines backend %q in its config file; a registration would be ignored", rule, id)
			}
		}
		return ""
	}
	return fmt.Sprintf("this instance's config has no rule %q", rule)
}

func (h *Handler) deregister(w http.ResponseWriter, r *http.Request) {
	f := h.fleet(w)
	if f == nil {
		return
	}
	rule, id := r.PathValue("rule"), r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), fleetTimeout)
	defer cancel()
	err := f.Deregister(ctx, rule, id)
	switch {
	case errors.Is(err, engine.ErrUnknownBackend):
		writeError(w, http.StatusNotFound, "%v", err)
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	h.o.Log.Info("admin API: backend registration removed for the fleet", "rule", rule, "backend", id, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]string{"status": "removed", "rule": rule, "id": id})
}
