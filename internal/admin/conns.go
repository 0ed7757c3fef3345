package admin

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// The connections endpoints (docs/admin.md#connections): the open TCP
// connections and UDP sessions, read on demand from the engines
// (proxy.Server.Conns), and closing them by id, backend or client.

const (
	defaultConnLimit = 100
	maxConnLimit     = 1000
)

func (h *Handler) connRoutes(m *http.ServeMux) {
	m.HandleFunc("/api/v1/connections", h.methods(map[string]http.HandlerFunc{http.MethodGet: h.listConns}))
	m.HandleFunc("/api/v1/connections/close", h.methods(map[string]http.HandlerFunc{http.MethodPost: h.closeConns}))
	m.HandleFunc("/api/v1/connections/{id}/close", h.methods(map[string]http.HandlerFunc{http.MethodPost: h.closeConn}))
}

// connJSON is one connection as the API lists it.
type connJSON struct {
	ID          uint64  `json:"id"`
	Protocol    string  `json:"protocol"`
	Rule        string  `json:"rule"`
	Backend     string  `json:"backend"`
	BackendAddr string  `json:"backend_addr"`
	Client      string  `json:"client"`
	Local       string  `json:"local"`
	Started     string  `json:"started"`
	AgeSeconds  float64 `json:"age_seconds"`
	IdleSeconds float64 `json:"idle_seconds"`
	BytesIn     int64   `json:"bytes_in"`
	BytesOut    int64   `json:"bytes_out"`
	State       string  `json:"state"`
}

// connFilter reads the filters of a query: protocol, rule, backend and
// client (an address or a CIDR prefix).
func connFilter(r *http.Request) (proxy.ConnFilter, error) {
	q := r.URL.Query()
	f := proxy.ConnFilter{Protocol: q.Get("protocol"), Rule: q.Get("rule"), Backend: q.Get("backend")}
	switch f.Protocol {
	case "", "tcp", "udp":
	default:
		return f, fmt.Errorf("protocol must be tcp or udp, got %q", f.Protocol)
	}
	if c := q.Get("client"); c != "" {
		p, err := parsePrefix(c)
		if err != nil {
			return f, fmt.Errorf("client: %v", err)
		}
		f.Client = p
	}
	return f, nil
}

// parsePrefix reads an address (a /32 or /128) or a CIDR prefix.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("not an address or CIDR prefix: %q", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an address or CIDR prefix: %q", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// listConns serves GET /api/v1/connections: a page of the selected
// connections by ascending id, after the id given as after.
func (h *Handler) listConns(w http.ResponseWriter, r *http.Request) {
	f, err := connFilter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	q := r.URL.Query()
	limit := defaultConnLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxConnLimit {
			writeError(w, http.StatusBadRequest, "limit must be 1 to %d, got %q", maxConnLimit, v)
			return
		}
		limit = n
	}
	var after uint64
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeError(w, http.StatusBadRequest, "after must be a connection id, got %q", v)
			return
		}
	}
	page := h.o.Engine.Server().Conns(f, after, limit)
	now := time.Now()
	out := make([]connJSON, len(page.Conns))
	for i, c := range page.Conns {
		out[i] = connJSON{ID: c.ID, Protocol: c.Protocol, Rule: c.Rule, Backend: c.Backend, BackendAddr: c.BackendAddr,
			Client: c.Client.String(), Local: c.Local.String(), Started: c.Start.UTC().Format(time.RFC3339Nano),
			AgeSeconds: seconds(now.Sub(c.Start)), IdleSeconds: seconds(now.Sub(c.LastActive)),
			BytesIn: c.BytesIn, BytesOut: c.BytesOut, State: c.State}
	}
	resp := map[string]any{"total": page.Total, "connections": out}
	if page.Next != 0 {
		resp["next"] = strconv.FormatUint(page.Next, 10)
	}
	writeJSON(w, http.StatusOK, resp)
}

func seconds(d time.Duration) float64 {
	return float64(max(d, 0).Round(time.Millisecond)) / float64(time.Second)
}

// closeConn serves POST /api/v1/connections/{id}/close.
func (h *Handler) closeConn(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, "not a connection id: %q", r.PathValue("id"))
		return
	}
	if h.o.Engine.Server().CloseConns(proxy.ConnFilter{ID: id}, proxy.EndClosed) == 0 {
		writeError(w, http.StatusNotFound, "no open connection %d", id)
		return
	}
	h.o.Log.Info("admin API: connection closed", "conn", id, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]int{"closed": 1})
}

// closeConns serves POST /api/v1/connections/close: every connection the
// filters select; at least a backend, a client or a rule, so that one
// call without them cannot cut all traffic.
func (h *Handler) closeConns(w http.ResponseWriter, r *http.Request) {
	f, err := connFilter(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if f.Backend == "" && f.Rule == "" && !f.Client.IsValid() {
		writeError(w, http.StatusBadRequest, "name the connections to close: backend, client or rule (a query parameter)")
		return
	}
	n := h.o.Engine.Server().CloseConns(f, proxy.EndClosed)
	h.o.Log.Info("admin API: connections closed", "connections", n, "protocol", f.Protocol, "rule", f.Rule, "backend", f.Backend,
		"client", r.URL.Query().Get("client"), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]int{"closed": n})
}
