package engine

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/acme"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// TLSMetrics is what the engine tells the TLS metrics (metrics.TLS): a
// handshake observer per rule, and the terminating servers after each
// apply.
type TLSMetrics interface {
	Observer(rule string) tlsconf.Observer
	Retain(servers map[string]*tlsconf.Server)
}

// SetTLS gives the engine the session ticket key source shared by the
// fleet (nil: each instance's own keys) and the TLS metrics (nil: none).
// Call it before the first Apply.
func (e *Engine) SetTLS(tickets tlsconf.TicketKeySource, m TLSMetrics) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.tickets, e.tlsMetrics = tickets, m
}

// SetACME gives the engine the manager of the rules whose certificates
// come by ACME (rules.tls.acme); nil: such a rule is refused. Call it
// before the first Apply.
func (e *Engine) SetACME(m *acme.Manager) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.acme = m
}

// ACME is the manager set by SetACME (nil: none).
func (e *Engine) ACME() *acme.Manager {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.acme
}

// TLSServers returns the terminating servers by rule name.
func (e *Engine) TLSServers() map[string]*tlsconf.Server {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]*tlsconf.Server, len(e.tls))
	for k, v := range e.tls {
		out[k] = v
	}
	return out
}

// Certificates returns, by rule, the certificates each terminating rule
// serves (for the status API).
func (e *Engine) Certificates() map[string][]tlsconf.Info {
	out := map[string][]tlsconf.Info{}
	for rule, s := range e.TLSServers() {
		out[rule] = s.Certificates()
	}
	return out
}

// planTLS loads rule r's termination settings (every file read now, so a
// changed certificate is picked up by any reload) into a staged server that
// commit publishes; nil when r does not terminate TLS. An apply that is not
// a reload (a DNS answer, the fleet's state) changes no file setting: it
// keeps the running server without reading anything.
func (e *Engine) planTLS(p *plan, cfg *config.Config, r *config.Rule) (*tlsconf.Server, error) {
	o, ok := cfg.ServerTLS(r)
	if !ok {
		return nil, nil
	}
	s := e.tls[r.Name]
	if s != nil && !p.reload {
		p.tls[r.Name] = nil // kept as it is
		return s, nil
	}
	if len(r.TLS.ACME) > 0 {
		if e.acme == nil {
			return nil, fmt.Errorf("rule %q: tls.acme: ACME was not set up at start-up (no rule used it then): restart to use it", r.Name)
		}
		ar := e.acme.Rule(r.Name, r.TLS.ACME, cfg.Listener(r))
		p.acme[r.Name] = ar
		o.Managed = ar
	}
	var st *tlsconf.Staged
	var err error
	if s != nil {
		st, err = s.Prepare(o)
	} else {
		var obs tlsconf.Observer
		if e.tlsMetrics != nil {
			obs = e.tlsMetrics.Observer(r.Name)
		}
		st, err = tlsconf.PrepareServer(o, e.tickets, obs)
	}
	if err != nil {
		return nil, err
	}
	p.tls[r.Name] = st
	return st.Server(), nil
}

// backendTLS is the TLS client config of each backend of r, nil for those
// dialled in plain TCP (nil slice: none has TLS).
func backendTLS(cfg *config.Config, r *config.Rule) ([]*tls.Config, error) {
	var out []*tls.Config
	for j := range r.Backends {
		o, ok := cfg.BackendTLSFor(r, &r.Backends[j])
		if !ok {
			continue
		}
		c, err := tlsconf.ClientConfig(o, r.Backends[j].Address, time.Now())
		if err != nil {
			return nil, fmt.Errorf("rule %q: backend %q: tls: %w", r.Name, r.Backends[j].ID, err)
		}
		if out == nil {
			out = make([]*tls.Config, len(r.Backends))
		}
		out[j] = c
	}
	return out, nil
}

// commitTLS publishes the staged servers, stops those of rules that no
// longer terminate, and tells the metrics.
func (e *Engine) commitTLS(p *plan) {
	next := make(map[string]*tlsconf.Server, len(p.tls))
	for rule, st := range p.tls {
		if st == nil { // kept (planTLS)
			next[rule] = e.tls[rule]
			continue
		}
		st.Commit()
		next[rule] = st.Server()
	}
	for rule, s := range e.tls {
		if next[rule] != s {
			s.Close()
		}
	}
	e.tls = next
	if e.acme != nil && p.acme != nil {
		e.acme.Commit(p.acme) // new names ordered or loaded, dropped ones no longer renewed
	}
	if e.tlsMetrics != nil {
		e.tlsMetrics.Retain(next)
	}
}

// ReloadCertificates re-reads the files of every terminating rule (a
// certificate or key changed on disk): each rule serves its new set from
// its next handshake, or keeps its old set when a file is wrong, which is
// logged with the file and why. Open connections are untouched.
func (e *Engine) ReloadCertificates() {
	for rule, s := range e.TLSServers() {
		if err := s.Reload(); err != nil {
			e.log.Error("certificate reload failed; still serving the previous certificates", "rule", rule, "err", err.Error())
			continue
		}
		serials := []string{}
		for _, c := range s.Certificates() {
			serials = append(serials, c.Serial)
		}
		e.log.Info("certificates reloaded", "rule", rule, "serials", serials)
	}
}
