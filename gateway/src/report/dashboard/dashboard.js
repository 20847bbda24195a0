// shoal dashboard: renders the updates the gateway sends on /events
// (Server-Sent Events). Everything that comes from gossip — service names,
// hosts, routes, ids — is put in the page as text (textContent), never as
// markup.
"use strict";

const HISTORY = 120; // rate points kept per service (one per update)
const history = new Map(); // service -> [rps]
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function age(ms, now) {
  if (!ms) return "–";
  let s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

function sparkline(canvas, points) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 220, h = canvas.clientHeight || 44;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...points);
  g.strokeStyle = "#0b5cad"; g.fillStyle = "rgba(11,92,173,.12)"; g.lineWidth = 1.5;
  g.beginPath();
  points.forEach((p, i) => {
    const x = (i / (HISTORY - 1)) * w, y = h - 2 - (p / max) * (h - 6);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  if (points.length > 1) {
    g.lineTo(((points.length - 1) / (HISTORY - 1)) * w, h); g.lineTo(0, h); g.closePath(); g.fill();
  }
}

function circuit(name, s, gateways) {
  const card = el("div", null, "circuit");
  card.dataset.service = name;
  const open = s.tripped_on > 0;
  if (open) card.classList.add("open");
  const h3 = el("h3");
  h3.append(el("span", name), el("span", open ? "open on " + s.tripped_on + " of " + gateways : "closed", "state"));
  const canvas = el("canvas");
  const dl = el("dl");
  const add = (label, value, cls) => { dl.append(el("dt", label), el("dd", value, cls)); };
  add("req/s", fmt(s.rps, 1), "rate");
  add("error %", fmt(s.error_pct, 2), s.error_pct > 0 ? "h-draining" : "");
  add("p50 ms", fmt(s.p50_ms, 2));
  add("p99 ms", fmt(s.p99_ms, 2));
  add("requests", fmt(s.requests, 0), "requests");
  add("errors", fmt(s.errors, 0), "errors");
  add("in flight", fmt(s.in_flight, 0));
  add("retries", fmt(s.retries, 0));
  add("hosts", (s.instances || []).filter((i) => i.health === "up").length + " up");
  add("gateways", s.reported_by + " of " + gateways);
  const p = s.policy || {};
  if (p.sticky) add("sticky", "cookie " + p.sticky_cookie, "policy");
  if (p.rate_limit) add("limit", p.rate_limit + " in total", "policy");
  if (p.rate_limit_per_client) add("limit/client", p.rate_limit_per_client, "policy");
  if (p.auth_forward) add("auth", p.auth_forward, "policy");
  if (p.auth_jwt) add("jwt", p.auth_jwt.issuer || p.auth_jwt.jwks, "policy");
  if (p.limit_here) {
    if (p.limit_here.share_rps !== null) add("share here", fmt(p.limit_here.share_rps, 1) + "/s", "policy");
    add("429 here", fmt(p.limit_here.refused, 0), p.limit_here.refused > 0 ? "h-draining" : "");
  }
  card.append(h3, canvas, dl);
  return [card, canvas];
}

// What the page knows: per service its figures and its instance rows by
// key. The first update holds everything (`full`); each next one the
// figures, the rows that changed, the keys of those gone.
const state = new Map(); // service -> { fig, rows: Map(key -> row) }
let events = [];

function merge(u) {
  if (u.full) state.clear();
  for (const name of u.stats.services_gone || []) state.delete(name);
  const changed = new Map(); // service -> { rows: [keys], gone: [keys] }
  for (const [name, s] of Object.entries(u.stats.services)) {
    const { rows, gone, ...fig } = s;
    let cur = state.get(name);
    if (!cur) { cur = { fig, rows: new Map() }; state.set(name, cur); }
    cur.fig = fig;
    for (const k of gone || []) cur.rows.delete(k);
    for (const r of rows || []) cur.rows.set(r.key, r);
    changed.set(name, { rows: (rows || []).map((r) => r.key), gone: gone || [] });
  }
  if (u.events) events = u.events;
  return changed;
}

// The instance table: one tbody per service (a heading row, then one row
// per instance), rows rebuilt only when theirs changed.
const groups = new Map(); // service -> { body, head, rows: Map(key -> tr) }

function instanceRow(name, i, now, gateways) {
  const tr = el("tr", null, "instance");
  tr.dataset.service = name;
  if (i.member) tr.dataset.member = i.member;
  tr.dataset.addr = i.addr;
  const started = el("td", age(i.started_ms, now), "age");
  started.dataset.started = i.started_ms || "";
  tr.append(
    el("td", name),
    el("td", i.host || "–", "wrap"),
    el("td", i.addr),
    el("td", i.health + (i.eureka ? " (eureka)" : ""), "h-" + i.health),
    el("td", i.label || "", "label"),
    el("td", i.weight === undefined ? "" : i.weight + (i.share === undefined ? "" : " → " + fmt(100 * i.share, 1) + " %"), "weight"),
    started,
    el("td", (i.routes || []).join(", "), "wrap"),
    el("td", fmt(i.rps, 1), "num"),
    el("td", fmt(i.error_pct, 2), "num"),
    el("td", fmt(i.p50_ms, 2), "num"),
    el("td", fmt(i.p99_ms, 2), "num"),
    el("td", fmt(i.in_flight, 0), "num"),
    el("td", fmt(i.requests, 0), "num requests"),
    el("td", i.tripped_on > 0 ? "by " + i.tripped_on + " of " + gateways : "")
  );
  return tr;
}

function renderInstances(changed, now, gateways) {
  const table = $("instances");
  for (const [name, g] of groups) {
    if (!state.has(name)) { g.body.remove(); groups.delete(name); }
  }
  let total = 0;
  for (const [name, cur] of state) {
    let g = groups.get(name);
    if (!g) {
      const body = document.createElement("tbody");
      const head = el("tr", null, "group");
      const th = el("th");
      th.colSpan = 15;
      head.append(th);
      body.append(head);
      g = { body, head: th, rows: new Map() };
      groups.set(name, g);
    }
    const c = changed.get(name) || { rows: [], gone: [] };
    for (const k of c.gone) { const tr = g.rows.get(k); if (tr) tr.remove(); g.rows.delete(k); }
    for (const k of c.rows) {
      const row = cur.rows.get(k);
      if (!row) continue;
      const tr = instanceRow(name, row, now, gateways);
      const old = g.rows.get(k);
      if (old) old.replaceWith(tr); else g.body.append(tr);
      g.rows.set(k, tr);
    }
    // Ages move with the clock, not with the updates.
    for (const tr of g.rows.values()) {
      const td = tr.querySelector("td.age");
      const text = age(Number(td.dataset.started), now);
      if (td.textContent !== text) td.textContent = text;
    }
    const up = [...cur.rows.values()].filter((i) => i.health === "up").length;
    g.head.textContent = name + " · " + up + " up of " + cur.rows.size;
    total += cur.rows.size;
  }
  // Services in name order (the server sends them so).
  const order = [...state.keys()].map((name) => groups.get(name).body);
  if (order.some((b, i) => table.tBodies[i] !== b)) {
    for (const b of [...table.tBodies]) b.remove();
    table.append(...order);
  }
  $("no-members").hidden = total > 0;
}

// The ACME certificate as this gateway holds it: its state, its end, where
// it came from, and the last failure's cause.
function acmeText(a) {
  if (!a) return "";
  let t = " · ACME " + a.name + ": " + a.state;
  if (a.not_after_ms) t += " until " + new Date(a.not_after_ms).toISOString().slice(0, 10);
  if (a.from) t += " (" + a.from + ")";
  if (a.ordering) t += " · ordering: " + a.ordering;
  if (a.last_error) t += " · last failure: " + a.last_error;
  return t;
}

function render(u) {
  const changed = merge(u);
  const now = u.at_ms;
  const st = u.stats;
  const services = [...state].map(([name, c]) => [name, { ...c.fig, instances: [...c.rows.values()] }]);
  $("gateways").textContent = st.gateways;
  $("window").textContent = st.window_secs;
  $("self").textContent = u.gateway;
  const e = u.edge || {};
  $("edge").textContent = "this gateway: HTTP/1.1" + (e.h2c ? " + h2c" : "") + " :" + e.port +
    (e.redirect ? " → HTTPS" : "") + (e.tls_port ? " · HTTPS (h2, http/1.1) :" + e.tls_port +
    " · " + fmt(e.h2_requests, 0) + " HTTP/2 requests · certificate loaded " + fmt(e.certificate_loads, 0) + "×" : "") +
    acmeText(e.acme);
  let members = 0, rps = 0, errors = 0;
  for (const [, s] of services) { members += s.instances.filter((i) => i.member).length; rps += s.rps; errors += s.errors; }
  $("members").textContent = members;
  $("rps").textContent = fmt(rps, 1);
  $("errors").textContent = fmt(errors, 0);

  // Circuits: services with traffic.
  const circuits = $("circuits");
  const cards = [];
  for (const [name, s] of services) {
    const points = history.get(name) || [];
    points.push(s.rps);
    while (points.length > HISTORY) points.shift();
    history.set(name, points);
    const p = s.policy || {};
    if (s.requests > 0 || p.sticky || p.rate_limit || p.rate_limit_per_client || p.auth_forward || p.auth_jwt) cards.push([circuit(name, s, st.gateways), points]);
  }
  for (const name of [...history.keys()]) if (!state.has(name)) history.delete(name);
  circuits.replaceChildren(...cards.map(([[card]]) => card));
  if (cards.length === 0) circuits.append(el("p", "no traffic yet", "empty"));
  for (const [[, canvas], points] of cards) sparkline(canvas, points);

  renderInstances(changed, now, st.gateways);

  // Events, newest first (only when there are new ones).
  if (!u.events) return;
  const rows = events.slice().reverse().map((e) => {
    const tr = el("tr", null, "event");
    tr.dataset.member = e.id;
    tr.dataset.event = e.event;
    tr.append(
      el("td", new Date(e.at_ms).toLocaleTimeString(undefined, { hour12: false }) + "." + String(e.at_ms % 1000).padStart(3, "0")),
      el("td", e.event, "e-" + e.event),
      el("td", e.service),
      el("td", e.host, "wrap"),
      el("td", e.addr),
      el("td", e.member, "wrap")
    );
    return tr;
  });
  $("events").tBodies[0].replaceChildren(...rows);
}

function connect() {
  const status = $("status");
  const source = new EventSource("events");
  source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  source.onmessage = (m) => {
    try {
      const start = performance.now();
      render(JSON.parse(m.data));
      // For the tests and the curious: updates taken, the last one's cost.
      window.shoalUpdates = (window.shoalUpdates || 0) + 1;
      window.shoalRenderMs = performance.now() - start;
    }
    catch (e) { status.textContent = "bad update: " + e.message; status.className = "status lost"; }
  };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status lost"; };
}

connect();
