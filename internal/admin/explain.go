package admin

import (
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// GET /api/v1/explain?client=IP:PORT&port=N[&protocol=tcp|udp][&local=IP]
// [&sni=NAME][&alpn=P1,P2][&host=NAME]: "why this backend?" — the
// decision record of a hypothetical connection (proxy.Explain): the
// listener, every rule on it with whether it matched and why not, the
// access decision and the router's choice with its reasoning. It changes
// nothing: no access slot or token is taken, no rotation advances.
func (h *Handler) explainRoutes(m *http.ServeMux) {
	m.HandleFunc("/api/v1/explain", h.methods(map[string]http.HandlerFunc{http.MethodGet: h.explain}))
}

// explainAnswer is proxy.Explanation with the protocol it was asked for.
type explainAnswer struct {
	Protocol string `json:"protocol"`
	proxy.Explanation
}

func (h *Handler) explain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	client, err := netip.ParseAddrPort(q.Get("client"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "client: want IP:PORT (e.g. 192.0.2.7:5555 or [2001:db8::7]:5555), got %q", q.Get("client"))
		return
	}
	port, err := strconv.ParseUint(q.Get("port"), 10, 16)
	if err != nil || port == 0 {
		writeError(w, http.StatusBadRequest, "port: want the listener's port (1-65535), got %q", q.Get("port"))
		return
	}
	protocol := q.Get("protocol")
	if protocol == "" {
		protocol = "tcp"
	}
	if protocol != "tcp" && protocol != "udp" {
		writeError(w, http.StatusBadRequest, "protocol: want tcp or udp, got %q", protocol)
		return
	}
	var local netip.Addr
	if s := q.Get("local"); s != "" {
		if local, err = netip.ParseAddr(s); err != nil {
			writeError(w, http.StatusBadRequest, "local: want the IP address the client connects to, got %q", s)
			return
		}
	}
	// A UDP client's server name and ALPN are those of its QUIC
	// ClientHello; a datagram has no HTTP Host.
	if protocol == "udp" && q.Get("host") != "" {
		writeError(w, http.StatusBadRequest, "host is TCP only (an HTTP request head); on udp, sni and alpn are a QUIC ClientHello's")
		return
	}
	l, addr, status, msg := h.findListener(protocol, uint16(port), local)
	if l == nil {
		writeError(w, status, "%s", msg)
		return
	}
	eq := proxy.ExplainQuery{Client: client, SNI: q.Get("sni"), Host: q.Get("host"), Local: addr}
	if local.IsValid() {
		eq.Local = netip.AddrPortFrom(local, uint16(port))
	}
	if a := q.Get("alpn"); a != "" {
		eq.ALPN = strings.Split(a, ",")
	}
	rl, ok := l.(interface{ Routes() []*proxy.Route })
	if !ok {
		writeError(w, http.StatusInternalServerError, "listener %s cannot list its routes", addr)
		return
	}
	writeJSON(w, http.StatusOK, explainAnswer{Protocol: protocol, Explanation: proxy.Explain(addr.String(), rl.Routes(), eq)})
}

// findListener is the bound listener of protocol on port that a client
// connecting to local (invalid: any) reaches: the one bound to local
// itself, else the wildcard one. Several on the port and no local: 400,
// naming them.
func (h *Handler) findListener(protocol string, port uint16, local netip.Addr) (proxy.Listener, netip.AddrPort, int, string) {
	type cand struct {
		l    proxy.Listener
		addr netip.AddrPort
	}
	var found []cand
	for key, l := range h.o.Engine.Listeners() {
		if !strings.HasPrefix(key, protocol+" ") {
			continue
		}
		var ap netip.AddrPort
		switch a := l.Addr().(type) {
		case *net.TCPAddr:
			ap = a.AddrPort()
		case *net.UDPAddr:
			ap = a.AddrPort()
		}
		if ap.Port() == port {
			found = append(found, cand{l, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())})
		}
	}
	if len(found) == 0 {
		return nil, netip.AddrPort{}, http.StatusNotFound, "no " + protocol + " listener on port " + strconv.Itoa(int(port))
	}
	if local.IsValid() {
		local = local.Unmap()
		var wild *cand
		for i, c := range found {
			if c.addr.Addr() == local {
				return c.l, c.addr, 0, ""
			}
			if c.addr.Addr().IsUnspecified() {
				wild = &found[i]
			}
		}
		if wild != nil {
			return wild.l, wild.addr, 0, ""
		}
		return nil, netip.AddrPort{}, http.StatusNotFound, "no " + protocol + " listener on " + netip.AddrPortFrom(local, port).String()
	}
	if len(found) > 1 {
		names := make([]string, len(found))
		for i, c := range found {
			names[i] = c.addr.String()
		}
		sort.Strings(names)
		return nil, netip.AddrPort{}, http.StatusBadRequest, "several " + protocol + " listeners on port " + strconv.Itoa(int(port)) + " (" + strings.Join(names, ", ") + "): say which with local=IP"
	}
	return found[0].l, found[0].addr, 0, ""
}
