// dynamic-proxy status page: the connections view. Lists the open TCP
// connections and UDP sessions (GET /api/v1/connections) with the filter
// of the form, a page at a time, and closes one, or every one the filter
// selects. Uses the page's API client (app.js: window.dynamicProxy).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const LIMIT = 50;
  const view = { after: "", pages: [], timer: 0, inflight: false, loads: 0 };

  function filterQuery() {
    const q = new URLSearchParams();
    for (const [key, id] of [["protocol", "cf-protocol"], ["rule", "cf-rule"], ["backend", "cf-backend"], ["client", "cf-client"]]) {
      const v = $(id).value.trim();
      if (v) q.set(key, v);
    }
    return q;
  }

  async function load() {
    const dp = window.dynamicProxy;
    if (!dp || view.inflight) return;
    view.inflight = true;
    try {
      const q = filterQuery();
      q.set("limit", String(LIMIT));
      if (view.after) q.set("after", view.after);
      const r = await dp.api("GET", "api/v1/connections?" + q.toString());
      render(r);
    } catch (e) {
      $("conns-total").textContent = "cannot list: " + e.message;
    } finally {
      view.inflight = false;
    }
  }

  function render(r) {
    const dp = window.dynamicProxy, el = dp.el;
    const body = $("conns-body");
    const rows = r.connections.map((c) => el("tr", { "data-conn": String(c.id), "data-conn-protocol": c.protocol, "data-conn-backend": c.backend, "data-conn-rule": c.rule },
      el("td", { class: "num mono", text: String(c.id) }),
      el("td", {}, el("span", { class: "badge " + c.protocol, text: c.protocol }), " ", c.rule || "–"),
      el("td", { title: c.backend_addr, text: c.backend || "–" }),
      el("td", { class: "mono", "data-field": "client", text: c.client }),
      el("td", { class: "mono muted", text: c.local }),
      el("td", { "data-field": "state", text: c.state }),
      el("td", { class: "num", text: dp.duration(c.age_seconds) }),
      el("td", { class: "num", text: dp.duration(c.idle_seconds) }),
      el("td", { class: "num", "data-field": "in", text: dp.bytes(c.bytes_in) }),
      el("td", { class: "num", "data-field": "out", text: dp.bytes(c.bytes_out) }),
      el("td", { class: "actions" }, el("button", {
        class: "btn small danger", type: "button", "data-action": "close-conn", "data-conn": String(c.id),
        title: "Close this connection", onclick: (ev) => closeOne(c.id, ev.currentTarget),
      }, "Close"))));
    if (!rows.length) rows.push(el("tr", {}, el("td", { class: "empty", colspan: "11", text: "No open connection matches." })));
    body.replaceChildren(...rows);
    const first = view.pages.length * LIMIT + 1;
    $("conns-total").textContent = r.total === 0 ? "none open"
      : `${r.total} open · ${Math.min(first, r.total)}–${first + r.connections.length - 1} shown`;
    $("conns-next").hidden = !r.next;
    $("conns-next").dataset.next = r.next || "";
    $("conns-first").hidden = view.pages.length === 0;
    const sec = $("conns");
    sec.dataset.total = String(r.total);
    sec.dataset.loads = String(++view.loads);
  }

  async function closeOne(id, button) {
    const dp = window.dynamicProxy;
    button.disabled = true;
    try {
      await dp.api("POST", `api/v1/connections/${id}/close`);
      dp.toast(`connection ${id} closed`);
    } catch (e) {
      dp.toast(`connection ${id}: ${e.message}`, true);
    }
    await load();
  }

  async function closeAll() {
    const dp = window.dynamicProxy;
    const q = filterQuery();
    if (!q.has("rule") && !q.has("backend") && !q.has("client")) {
      dp.toast("Set a rule, backend or client first: closing needs a filter.", true);
      return;
    }
    try {
      const r = await dp.api("POST", "api/v1/connections/close?" + q.toString());
      dp.toast(`${r.closed} connection${r.closed === 1 ? "" : "s"} closed`);
    } catch (e) {
      dp.toast("close: " + e.message, true);
    }
    await load();
  }

  function restart() {
    view.after = "";
    view.pages = [];
    load();
  }

  // Refresh with the page's own interval (paused: only on demand).
  function schedule() {
    clearInterval(view.timer);
    const ms = Number($("interval").value);
    if (ms > 0) view.timer = setInterval(load, ms);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("conns-filter").addEventListener("submit", (ev) => { ev.preventDefault(); restart(); });
    $("cf-protocol").addEventListener("change", restart);
    $("cf-close").addEventListener("click", closeAll);
    $("conns-next").addEventListener("click", () => {
      view.pages.push(view.after);
      view.after = $("conns-next").dataset.next;
      load();
    });
    $("conns-first").addEventListener("click", restart);
    $("interval").addEventListener("change", schedule);
    load();
    schedule();
  });
})();
