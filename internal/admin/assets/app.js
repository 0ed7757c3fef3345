// dynamic-proxy status page: polls GET /api/v1/status, computes traffic
// rates from successive polls, and drives the admin API (drain, enable,
// disable, weight, reload). No dependencies; served by the binary itself.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "dynamic-proxy-admin-token";
  const HISTORY = 60; // sparkline points per rule

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    prev: null, // {t, backends: Map key -> {in, out}}
    rates: new Map(), // backend key -> {in, out} bytes/s
    history: new Map(), // rule -> [bytes/s]
    cards: new Map(), // rule -> {el, sig, rows: Map id -> row refs}
    editing: null, // "rule\u0000id" of the weight being edited
    timer: 0,
    inflight: false,
    polls: 0, // successful refreshes, for tests
    tokenWaiters: [],
    tokenDeclined: false,
  };

  // ---- formatting ---------------------------------------------------------
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  function bytes(n) {
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + units[i];
  }
  const rate = (n) => bytes(n) + "/s";
  const int = (n) => Number(n).toLocaleString("en-US");
  function duration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    if (m > 0) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }
  const keyOf = (rule, id) => rule + "\u0000" + id;

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }
  const svg = (tag, attrs = {}) => {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };

  // ---- API ----------------------------------------------------------------
  class APIError extends Error {
    constructor(status, body) {
      super((body && body.error) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    for (;;) {
      const headers = { "Accept": "application/json" };
      if (state.token) headers["Authorization"] = "Bearer " + state.token;
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
      let data = null;
      try { data = await res.json(); } catch (_) { /* not JSON */ }
      if (res.status === 401) {
        // After Cancel, ask again only when the Token button is pressed.
        if (state.tokenDeclined) throw new APIError(401, data);
        await askToken(state.token ? "That token was refused." : "");
        continue; // retry with the new token
      }
      if (!res.ok) throw new APIError(res.status, data);
      return data;
    }
  }

  // ---- token prompt -------------------------------------------------------
  function askToken(message) {
    const modal = $("token-modal"), input = $("token-input"), err = $("token-error");
    $("token-btn").hidden = false;
    err.hidden = !message;
    err.textContent = message || "";
    input.value = "";
    modal.hidden = false;
    input.focus();
    return new Promise((resolve, reject) => state.tokenWaiters.push({ resolve, reject }));
  }
  function closeToken(ok) {
    $("token-modal").hidden = true;
    const waiters = state.tokenWaiters.splice(0);
    state.tokenDeclined = !ok;
    for (const w of waiters) ok ? w.resolve() : w.reject(new APIError(401, { error: "admin token required" }));
  }
  function saveToken() {
    const t = $("token-input").value.trim();
    if (!t) { $("token-error").hidden = false; $("token-error").textContent = "Enter the token."; return; }
    state.token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    closeToken(true);
  }

  // ---- toasts and problems ------------------------------------------------
  function toast(text, bad = false) {
    const t = el("div", { class: "toast" + (bad ? " bad" : ""), text });
    $("toasts").append(t);
    setTimeout(() => t.remove(), bad ? 7000 : 3500);
  }
  function showProblems(body) {
    $("problems-summary").textContent = body.error || "The config is invalid.";
    const list = $("problems-list");
    list.replaceChildren();
    for (const p of body.problems || []) {
      const where = [p.file, p.line ? String(p.line) : ""].filter(Boolean).join(":");
      list.append(el("li", {}, el("span", { class: "where", text: where ? where + "  " : "" }),
        el("span", { text: (p.path ? p.path + ": " : "") + p.message })));
    }
    $("problems-modal").hidden = false;
  }

  // ---- actions ------------------------------------------------------------
  async function backendAction(rule, id, action, button) {
    const base = `api/v1/rules/${encodeURIComponent(rule)}/backends/${encodeURIComponent(id)}/`;
    if (button) button.disabled = true;
    try {
      await api("POST", base + action);
      toast(`${rule} / ${id}: ${action === "drain" ? "draining" : action + "d"}`);
      await poll();
    } catch (e) {
      toast(`${rule} / ${id}: ${e.message}`, true);
    } finally {
      if (button) button.disabled = false;
    }
  }

  async function setWeight(rule, id, value) {
    const w = Number(value);
    if (!Number.isInteger(w) || w < 1 || w > 10000) { toast("Weight must be a whole number from 1 to 10000.", true); return; }
    try {
      await api("PUT", `api/v1/rules/${encodeURIComponent(rule)}/backends/${encodeURIComponent(id)}/weight`, { weight: w });
      toast(`${rule} / ${id}: weight ${w}`);
    } catch (e) {
      toast(`${rule} / ${id}: ${e.message}`, true);
    }
    await poll();
  }

  async function reload() {
    const b = $("reload-btn");
    b.disabled = true;
    try {
      const r = await api("POST", "api/v1/reload");
      toast(`Config reloaded (version ${r.config_version})`);
    } catch (e) {
      if (e.status === 422 && e.body) showProblems(e.body);
      else toast("Reload: " + e.message, true);
    } finally {
      b.disabled = false;
    }
    await poll();
  }

  // ---- rendering ----------------------------------------------------------
  function backendState(b) {
    if (!b.enabled) return ["disabled", "disabled"];
    if (!b.healthy) return ["down", "down"];
    if (b.draining) return ["draining", "draining"];
    return ["serving", "serving"];
  }

  function weightCell(rule, b, refs) {
    const span = el("span", { class: "weight", title: "Click to change the weight", "data-field": "weight" });
    span.addEventListener("click", () => {
      state.editing = keyOf(rule, b.id);
      const input = el("input", { class: "weight-input", type: "number", min: "1", max: "10000", value: span.textContent, "aria-label": "weight" });
      const done = async (save) => {
        if (state.editing !== keyOf(rule, b.id)) return;
        state.editing = null;
        input.replaceWith(span);
        if (save && input.value !== span.textContent) await setWeight(rule, b.id, input.value);
      };
      input.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") done(true);
        if (ev.key === "Escape") done(false);
      });
      input.addEventListener("blur", () => done(true));
      span.replaceWith(input);
      input.focus();
      input.select();
    });
    refs.weight = span;
    return span;
  }

  function buildRow(rule, b) {
    const refs = {};
    refs.state = el("span", { class: "state" }, el("span", { class: "dot" }), el("span", { "data-field": "state" }));
    refs.share = el("span", {});
    refs.active = el("td", { class: "num", "data-field": "active" });
    refs.total = el("td", { class: "num", "data-field": "total" });
    refs.rin = el("td", { class: "num", "data-field": "rate-in" });
    refs.rout = el("td", { class: "num", "data-field": "rate-out" });
    refs.traffic = el("td", { class: "num muted", "data-field": "traffic" });
    refs.actions = el("td", { class: "actions" });
    refs.tr = el("tr", { "data-rule": rule, "data-backend": b.id },
      el("td", {}, refs.state),
      el("td", {}, el("div", { class: "backend-id", text: b.id }), el("div", { class: "muted mono", text: b.address }),
        b.source || b.tier ? el("div", { class: "muted origin", "data-field": "origin", text: origin(b) }) : null),
      el("td", { class: "num" }, weightCell(rule, b, refs), el("span", { class: "share", title: "share of the rule's weight" }, refs.share)),
      refs.active, refs.total, refs.rin, refs.rout, refs.traffic, refs.actions);
    return refs;
  }

  // Where a backend came from and its priority tier, when either is not the default.
  function origin(b) {
    const parts = [];
    if (b.source) parts.push("from DNS " + b.source);
    if (b.tier === 65536) parts.push("backup");
    else if (b.tier) parts.push("tier " + b.tier);
    return parts.join(" · ");
  }

  // One line per DNS name of the rule: its state, answer, age and next refresh.
  function discoveryLine(d) {
    const head = `DNS ${d.type} ${d.name} @${d.resolver}`;
    const what = { waiting: "waiting for a first answer", ok: "ok", stale: "lookup failing: last good answer serves", empty_pending: "empty answer: last good answer serves until empty_grace" }[d.state] || d.state;
    let text = `${head} · ${what} · ${d.endpoints.length} endpoint${d.endpoints.length === 1 ? "" : "s"}`;
    if (d.answered_at_unix_ms) text += ` · answer ${duration(d.age_seconds)} old`;
    text += ` · next refresh in ${duration(d.next_refresh_in_seconds)}`;
    if (d.last_error) text += ` · ${d.last_error}`;
    const line = el("div", { class: "discovery muted mono " + d.state, "data-name": d.name, "data-state": d.state, text });
    line.title = d.endpoints.join("\n");
    return line;
  }

  function actionButtons(rule, b) {
    const mk = (action, label, cls) => el("button", {
      class: "btn small " + cls, type: "button", "data-rule": rule, "data-backend": b.id, "data-action": action,
      title: { drain: "Stop sending new connections; open ones run on", enable: "Take new connections again", disable: "Take no new connections" }[action],
      onclick: (ev) => backendAction(rule, b.id, action, ev.currentTarget),
    }, label);
    if (!b.enabled || b.draining) return [mk("enable", "Enable", "ok")];
    return [mk("drain", "Drain", "warn"), mk("disable", "Disable", "danger")];
  }

  function sparkline(points) {
    const w = 140, h = 34, s = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", "aria-hidden": "true" });
    if (points.length < 3) return s;
    const max = Math.max(...points, 1);
    // Fill the width from the first polls on; once HISTORY points are
    // there, the line scrolls.
    const step = w / (points.length - 1), x0 = 0;
    const xy = points.map((p, i) => [x0 + i * step, h - 2 - (p / max) * (h - 4)]);
    const line = xy.map(([x, y], i) => (i ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1)).join(" ");
    s.append(svg("path", { class: "area", d: `${line} L${w} ${h} L${x0.toFixed(1)} ${h} Z` }), svg("path", { class: "line", d: line }));
    return s;
  }

  function buildCard(r) {
    const card = { rows: new Map() };
    card.active = el("div", { class: "v" });
    card.rin = el("div", { class: "v" });
    card.rout = el("div", { class: "v" });
    card.spark = el("div", {});
    const meta = r.enabled
      ? `${r.listener || "not bound"} · router ${r.router}${r.plugin !== r.router ? " (" + r.plugin + ")" : ""}`
      : "disabled in the config: nothing is bound";
    const head = el("div", { class: "rule-head" },
      el("div", {},
        el("div", { class: "rule-title" }, el("h2", { text: r.name }), el("span", { class: "badge " + r.protocol, text: r.protocol })),
        el("div", { class: "rule-meta mono", text: meta })),
      el("div", { class: "rule-stats" },
        card.spark,
        el("div", { class: "stat" }, el("div", { class: "k", text: "active" }), card.active),
        el("div", { class: "stat" }, el("div", { class: "k", text: "in" }), card.rin),
        el("div", { class: "stat" }, el("div", { class: "k", text: "out" }), card.rout)));
    const tbody = el("tbody");
    for (const b of r.backends) {
      const refs = buildRow(r.name, b);
      card.rows.set(b.id, refs);
      tbody.append(refs.tr);
    }
    const table = el("table", {},
      el("thead", {}, el("tr", {},
        el("th", { text: "State" }), el("th", { text: "Backend" }), el("th", { class: "num", text: "Weight" }),
        el("th", { class: "num", text: "Active" }), el("th", { class: "num", text: "Total" }),
        el("th", { class: "num", text: "In /s" }), el("th", { class: "num", text: "Out /s" }),
        el("th", { class: "num", text: "Traffic in / out" }), el("th", { class: "num", text: "" }))),
      tbody);
    card.disc = el("div", { class: "discoveries" });
    card.el = el("article", { class: "rule" + (r.enabled ? "" : " disabled"), "data-rule": r.name }, head, card.disc, certList(r), acmeList(r), r.backends.length ? table : null);
    return card;
  }

  // The certificates of a rule that terminates TLS: names and expiry,
  // amber under 14 days left, red under 3 (the API's level).
  function certList(r) {
    if (!r.certificates || !r.certificates.length) return null;
    const list = el("ul", { class: "certs" });
    for (const c of r.certificates) {
      const days = Math.floor(c.days_left);
      const left = c.days_left < 0 ? "expired" : days + (days === 1 ? " day" : " days") + " left";
      list.append(el("li", { class: "cert mono", "data-level": c.level, "data-serial": c.serial, title: c.file + " · serial " + c.serial },
        el("span", { class: "cert-names", text: c.names.join(", ") + (c.default ? " (default)" : "") }),
        el("span", { class: "cert-expiry", text: "expires " + new Date(c.not_after).toLocaleDateString() + " · " + left })));
    }
    return list;
  }

  // The names a rule gets by ACME: valid until, next renewal, last error
  // (red while a name has no certificate or its last order failed).
  function acmeList(r) {
    if (!r.acme || !r.acme.length) return null;
    const list = el("ul", { class: "certs acme" });
    for (const a of r.acme) {
      const level = !a.valid_until ? "critical" : a.last_error ? "warning" : "ok";
      let text = a.valid_until
        ? "valid until " + new Date(a.valid_until).toLocaleString() + " · renews about " + new Date(a.next_renewal).toLocaleString()
        : a.obtaining ? "being obtained" : "no certificate yet";
      if (a.last_error) text += " · last error " + new Date(a.last_error_at).toLocaleString() + ": " + a.last_error;
      list.append(el("li", { class: "cert mono", "data-level": level, "data-acme": a.name, title: "ACME" + (a.serial ? " · serial " + a.serial : "") },
        el("span", { class: "cert-names", text: a.name + " (acme)" }),
        el("span", { class: "cert-expiry", text: text })));
    }
    return list;
  }

  // A card is rebuilt only when its shape changes, so an open weight editor
  // survives the refresh.
  const signature = (r) => JSON.stringify([r.protocol, r.enabled, r.listener, r.router, r.plugin, r.backends.map((b) => [b.id, b.address, b.tier, b.source]), (r.certificates || []).map((c) => [c.serial, c.level, Math.floor(c.days_left)]), (r.acme || []).map((a) => [a.name, a.serial, a.obtaining, a.last_error])]);

  function render(st) {
    const now = st.now_unix_ms / 1000;
    const cur = new Map();
    for (const r of st.rules) for (const b of r.backends) cur.set(keyOf(r.name, b.id), { in: b.bytes_in, out: b.bytes_out });
    const haveRates = state.prev !== null && now > state.prev.t;
    if (haveRates) {
      const dt = now - state.prev.t;
      for (const [k, v] of cur) {
        const p = state.prev.backends.get(k);
        state.rates.set(k, p ? { in: Math.max(0, v.in - p.in) / dt, out: Math.max(0, v.out - p.out) / dt } : { in: 0, out: 0 });
      }
    }
    state.prev = { t: now, backends: cur };

    const info = `${st.version} · ${st.commit.slice(0, 12)} · ${st.go_version}`;
    $("build").textContent = info;
    $("footer-build").textContent = "dynamic-proxy " + info;
    $("t-uptime").textContent = duration(st.uptime_seconds);
    $("t-started").textContent = "since " + new Date(st.started_at).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    $("t-config").textContent = "v" + st.config.version;
    $("t-file").textContent = st.config.file.split("/").pop();
    $("t-file").title = st.config.file;
    $("t-active").textContent = int(st.connections.active + st.connections.udp_sessions);
    $("t-accepted").textContent = `${int(st.connections.accepted)} TCP accepted` + (st.connections.udp_sessions ? ` · ${int(st.connections.udp_sessions)} UDP` : "");

    let totalIn = 0, totalOut = 0, serving = 0, all = 0, down = 0;
    const container = $("rules");
    const seen = new Set();
    let prevEl = null;
    for (const r of st.rules) {
      seen.add(r.name);
      let card = state.cards.get(r.name);
      const sig = signature(r);
      if (!card || card.sig !== sig) {
        const fresh = buildCard(r);
        fresh.sig = sig;
        if (card) card.el.replaceWith(fresh.el);
        card = fresh;
        state.cards.set(r.name, card);
      }
      // keep file order
      const want = prevEl ? prevEl.nextSibling : container.firstChild;
      if (want !== card.el) container.insertBefore(card.el, want);
      prevEl = card.el;

      const weightSum = r.backends.reduce((s, b) => s + (b.available ? b.effective_weight : 0), 0);
      let rin = 0, rout = 0, active = 0;
      for (const b of r.backends) {
        const refs = card.rows.get(b.id);
        const rt = state.rates.get(keyOf(r.name, b.id)) || { in: 0, out: 0 };
        rin += rt.in; rout += rt.out; active += b.active_connections;
        const [s, label] = backendState(b);
        all++;
        if (s === "serving") serving++;
        if (s === "down") down++;
        refs.state.dataset.state = s;
        refs.state.lastChild.textContent = label;
        refs.state.title = b.healthy ? (b.draining ? "Draining: no new connections, open ones run on" : "") : "Down: " + (b.health_reason || "health check failed");
        refs.tr.dataset.state = s;
        if (state.editing !== keyOf(r.name, b.id)) refs.weight.textContent = String(b.weight);
        refs.weight.title = b.effective_weight !== b.weight ? `slow start: effective weight ${b.effective_weight}` : "Click to change the weight";
        const share = weightSum > 0 && b.available ? b.effective_weight / weightSum : 0;
        refs.share.style.width = (share * 100).toFixed(1) + "%";
        refs.share.parentElement.title = `${(share * 100).toFixed(0)}% of new connections by weight`;
        refs.active.textContent = int(b.active_connections);
        refs.total.textContent = int(b.total_connections);
        refs.rin.textContent = rate(rt.in);
        refs.rout.textContent = rate(rt.out);
        refs.traffic.textContent = `${bytes(b.bytes_in)} / ${bytes(b.bytes_out)}`;
        const sigA = `${b.enabled}|${b.draining}`;
        if (refs.actionSig !== sigA) {
          refs.actions.replaceChildren(...actionButtons(r.name, b));
          refs.actionSig = sigA;
        }
      }
      totalIn += rin; totalOut += rout;
      card.active.textContent = int(active);
      card.rin.textContent = rate(rin);
      card.rout.textContent = rate(rout);
      const hist = state.history.get(r.name) || [];
      if (haveRates) hist.push(rin + rout);
      if (hist.length > HISTORY) hist.shift();
      state.history.set(r.name, hist);
      card.spark.replaceChildren(sparkline(hist));
      card.disc.replaceChildren(...(r.discovery || []).map(discoveryLine));
    }
    for (const [name, card] of state.cards) {
      if (!seen.has(name)) { card.el.remove(); state.cards.delete(name); }
    }
    $("empty").hidden = st.rules.length > 0;
    $("t-in").textContent = rate(totalIn);
    $("t-out").textContent = rate(totalOut);
    $("t-serving").textContent = `${serving} / ${all}`;
    $("t-down").textContent = down ? `${down} down` : "all healthy";
    $("updated").textContent = new Date(st.now_unix_ms).toLocaleTimeString();
    document.body.dataset.loaded = "true";
    document.body.dataset.polls = String(++state.polls);
    document.body.dataset.configVersion = String(st.config.version);
  }

  // ---- polling ------------------------------------------------------------
  function setConn(s, text) {
    const p = $("conn-state");
    p.dataset.state = s;
    p.textContent = text;
  }

  async function poll() {
    if (state.inflight) return;
    state.inflight = true;
    try {
      const st = await api("GET", "api/v1/status");
      render(st);
      $("banner").hidden = true;
      setConn(Number($("interval").value) > 0 ? "live" : "paused", Number($("interval").value) > 0 ? "live" : "paused");
    } catch (e) {
      setConn("error", "offline");
      $("banner").hidden = false;
      $("banner").textContent = e.status === 401 ? "The admin API needs a token." : "Cannot reach the admin API: " + e.message;
    } finally {
      state.inflight = false;
    }
  }

  function schedule() {
    clearInterval(state.timer);
    const ms = Number($("interval").value);
    if (ms > 0) state.timer = setInterval(poll, ms);
    else setConn("paused", "paused");
  }

  // For the connections view (conns.js).
  window.dynamicProxy = { api, toast, el, bytes, duration };

  document.addEventListener("DOMContentLoaded", () => {
    $("reload-btn").addEventListener("click", reload);
    $("interval").addEventListener("change", () => { schedule(); poll(); });
    $("token-btn").addEventListener("click", () => {
      state.tokenDeclined = false;
      askToken("").then(poll, () => {});
    });
    $("token-save").addEventListener("click", saveToken);
    $("token-cancel").addEventListener("click", () => closeToken(false));
    $("token-input").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") saveToken();
      if (ev.key === "Escape") closeToken(false);
    });
    $("problems-close").addEventListener("click", () => { $("problems-modal").hidden = true; });
    if (state.token) $("token-btn").hidden = false;
    poll();
    schedule();
  });
})();
