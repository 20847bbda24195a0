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
  if (p.limit_here) {
    if (p.limit_here.share_rps !== null) add("share here", fmt(p.limit_here.share_rps, 1) + "/s", "policy");
    add("429 here", fmt(p.limit_here.refused, 0), p.limit_here.refused > 0 ? "h-draining" : "");
  }
  card.append(h3, canvas, dl);
  return [card, canvas];
}

function render(u) {
  const now = u.at_ms;
  const st = u.stats;
  const services = Object.entries(st.services);
  $("gateways").textContent = st.gateways;
  $("window").textContent = st.window_secs;
  $("self").textContent = u.gateway;
  const e = u.edge || {};
  $("edge").textContent = "this gateway: HTTP/1.1" + (e.h2c ? " + h2c" : "") + " :" + e.port +
    (e.redirect ? " → HTTPS" : "") + (e.tls_port ? " · HTTPS (h2, http/1.1) :" + e.tls_port +
    " · " + fmt(e.h2_requests, 0) + " HTTP/2 requests · certificate loaded " + fmt(e.certificate_loads, 0) + "×" : "");
  let members = 0, rps = 0, errors = 0;
  for (const [, s] of services) { members += (s.instances || []).filter((i) => i.member).length; rps += s.rps; errors += s.errors; }
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
    if (s.requests > 0 || p.sticky || p.rate_limit || p.rate_limit_per_client) cards.push([circuit(name, s, st.gateways), points]);
  }
  for (const name of [...history.keys()]) if (!st.services[name]) history.delete(name);
  circuits.replaceChildren(...cards.map(([[card]]) => card));
  if (cards.length === 0) circuits.append(el("p", "no traffic yet", "empty"));
  for (const [[, canvas], points] of cards) sparkline(canvas, points);

  // Instances.
  const rows = [];
  for (const [name, s] of services) {
    for (const i of s.instances || []) {
      const tr = el("tr", null, "instance");
      tr.dataset.service = name;
      if (i.member) tr.dataset.member = i.member;
      tr.dataset.addr = i.addr;
      tr.append(
        el("td", name),
        el("td", i.host || "–", "wrap"),
        el("td", i.addr),
        el("td", i.health + (i.eureka ? " (eureka)" : ""), "h-" + i.health),
        el("td", i.label || "", "label"),
        el("td", i.weight === undefined ? "" : i.weight + (i.share === undefined ? "" : " → " + fmt(100 * i.share, 1) + " %"), "weight"),
        el("td", age(i.started_ms, now)),
        el("td", (i.routes || []).join(", "), "wrap"),
        el("td", fmt(i.rps, 1), "num"),
        el("td", fmt(i.error_pct, 2), "num"),
        el("td", fmt(i.p50_ms, 2), "num"),
        el("td", fmt(i.p99_ms, 2), "num"),
        el("td", fmt(i.in_flight, 0), "num"),
        el("td", fmt(i.requests, 0), "num requests"),
        el("td", i.tripped_on > 0 ? "by " + i.tripped_on + " of " + st.gateways : "")
      );
      rows.push(tr);
    }
  }
  $("instances").tBodies[0].replaceChildren(...rows);
  $("no-members").hidden = rows.length > 0;

  // Events, newest first.
  const events = u.events.slice().reverse().map((e) => {
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
  $("events").tBodies[0].replaceChildren(...events);
}

function connect() {
  const status = $("status");
  const source = new EventSource("events");
  source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  source.onmessage = (m) => {
    try { render(JSON.parse(m.data)); window.shoalUpdates = (window.shoalUpdates || 0) + 1; }
    catch (e) { status.textContent = "bad update: " + e.message; status.className = "status lost"; }
  };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status lost"; };
}

connect();
