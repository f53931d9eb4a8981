// portserver status page: polls the JSON API once a second and draws what it gets.
//
// Plain ES2020, no dependencies, no inline script or style: everything the page shows is
// built here with the DOM (text goes in as text, never as HTML), and colours come from
// classes in app.css. A bearer token, when the service needs one, comes from the URL
// fragment (/#token=...), is kept in sessionStorage and sent on every request.

"use strict";

const POLL_MS = 1000; // between the end of one round of requests and the next
const TIMEOUT_MS = 5000; // a round that takes longer is abandoned (and retried)
const TOKEN_KEY = "portserver-status-token";
const MAX_ROWS = 500; // live connections drawn at most (filter to see others)
const MAX_CLOSED = 25; // recently closed connections drawn
const PALETTE = 8; // series-0 ... series-7 in app.css
const SVG_NS = "http://www.w3.org/2000/svg";
const PORT_CLASSES = [
  ["well-known", "Well-known ports (0–1023)"],
  ["registered", "Registered ports (1024–49151)"],
  ["dynamic", "Dynamic ports (49152–65535)"],
];
const STATES = {
  connecting: "Connecting…",
  live: "Live",
  disconnected: "Disconnected — retrying",
  unauthorized: "Needs a token",
  paused: "Paused",
};

const app = {
  token: null,
  paused: false,
  round: 0, // the current round of requests; older rounds neither draw nor reschedule
  timer: null,
  controller: null,
  clockOffset: 0, // the server's clock minus the browser's, in seconds
  data: null, // the last answers: {summary, listeners, tcp, udp, closed, history}
  state: null,
};

let $ = null; // the page's elements, found once the document is parsed

// --- small helpers ----------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  node.append(...children.map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

// On a narrow screen (app.css) each row of a table is a card, and each cell is labelled
// with its column's heading: copy the headings into the cells' data-label.
function labelCells(table) {
  const names = [...table.tHead.rows[0].cells].map((c) => c.textContent.trim());
  for (const body of table.tBodies) {
    for (const row of body.rows) {
      if (row.cells.length !== names.length) continue; // a group heading or "None" row
      [...row.cells].forEach((cell, i) => cell.setAttribute("data-label", names[i]));
    }
  }
}

function endpoint(host, port) {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

const numberFormat = new Intl.NumberFormat("en-US");
const count = (n) => numberFormat.format(n);

function duration(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 10) return `${seconds.toFixed(seconds < 1 ? 3 : 1)}s`;
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
  if (m < 60) return `${m}m ${s}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function serverNow() {
  return Date.now() / 1000 + app.clockOffset;
}

function serviceClass(name) {
  const names = app.data ? Object.keys(app.data.history.services) : [];
  const index = names.indexOf(name);
  return `series-${(index < 0 ? 0 : index) % PALETTE}`;
}

// --- the token ------------------------------------------------------------------------

// Take a token from the fragment (#token=...) into sessionStorage, and out of the visible
// URL (and so out of the history, bookmarks and screenshots); else use the stored one.
function readToken() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const given = params.get("token");
  if (given) {
    try {
      sessionStorage.setItem(TOKEN_KEY, given);
    } catch (e) {
      // storage may be off: the token then lasts as long as the page
    }
    params.delete("token");
    const rest = params.toString();
    window.history.replaceState(null, "", location.pathname + location.search +
      (rest ? `#${rest}` : ""));
    return given;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (e) {
    return app.token;
  }
}

// --- fetching -------------------------------------------------------------------------

class HTTPError extends Error {
  constructor(status, path) {
    super(`HTTP ${status} from ${path}`);
    this.status = status;
  }
}

async function getJSON(path, signal) {
  const headers = { Accept: "application/json" };
  if (app.token) headers.Authorization = `Bearer ${app.token}`;
  const response = await fetch(path, { headers, signal, cache: "no-store",
                                       credentials: "same-origin" });
  if (!response.ok) throw new HTTPError(response.status, path);
  return response.json();
}

async function poll() {
  app.timer = null;
  const round = ++app.round;
  if (app.paused) return;
  if (document.hidden) { // a background tab asks for nothing; it polls again when shown
    schedule(round);
    return;
  }
  const controller = new AbortController();
  app.controller = controller;
  const timeout = setTimeout(() => controller.abort(), TIMEOUT_MS);
  const service = $.serviceFilter.value;
  const only = service ? `&service=${encodeURIComponent(service)}` : "";
  const signal = controller.signal;
  try {
    const sent = Date.now() / 1000;
    const [summary, listeners, tcp, udp, closed, history] = await Promise.all([
      getJSON("api/summary", signal),
      getJSON("api/listeners", signal),
      getJSON(`api/connections?transport=tcp${only}`, signal),
      getJSON(`api/connections?transport=udp${only}`, signal),
      // The API answers a page (1000, oldest first): the newest closed ones are the
      // last page, found from the total.
      getJSON(`api/connections?state=closed&limit=0${only}`, signal).then((all) =>
        getJSON(`api/connections?state=closed&limit=${MAX_CLOSED}` +
                `&offset=${Math.max(0, all.total - MAX_CLOSED)}${only}`, signal)),
      getJSON("api/history", signal),
    ]);
    if (round !== app.round) return;
    const received = Date.now() / 1000;
    app.clockOffset = history.now - (sent + received) / 2;
    app.data = { summary, listeners: listeners.listeners, tcp: tcp.connections,
                 udp: udp.connections, closed: closed.connections, history,
                 tcpTotal: tcp.total, udpTotal: udp.total };
    setState("live");
    render();
  } catch (error) {
    if (round !== app.round) return; // paused or restarted meanwhile
    if (error instanceof HTTPError && error.status === 401) {
      setState("unauthorized");
    } else {
      setState("disconnected");
    }
  } finally {
    clearTimeout(timeout);
    if (app.controller === controller) app.controller = null;
    schedule(round);
  }
}

function schedule(round) {
  if (round === app.round && !app.paused && app.timer === null) {
    app.timer = setTimeout(poll, POLL_MS);
  }
}

// Abandon the round under way (if any) and poll again now.
function restart() {
  if (app.timer !== null) clearTimeout(app.timer);
  app.timer = null;
  if (app.controller) app.controller.abort();
  poll();
}

function setState(state) {
  if (state === app.state) return; // the live region speaks only on a change
  app.state = state;
  $.state.dataset.state = state;
  $.state.textContent = STATES[state];
  document.body.dataset.state = state;
  $.authNeeded.hidden = state !== "unauthorized";
}

function togglePause() {
  app.paused = !app.paused;
  $.pause.setAttribute("aria-pressed", String(app.paused));
  if (app.paused) {
    app.round++; // whatever is under way is dropped
    if (app.timer !== null) clearTimeout(app.timer);
    app.timer = null;
    if (app.controller) app.controller.abort();
    app.state = null;
    setState("paused");
  } else {
    app.state = null;
    setState("connecting");
    restart();
  }
}

// --- drawing --------------------------------------------------------------------------

function render() {
  if (!app.data) return;
  renderSummary(app.data.summary);
  renderListeners(app.data.listeners, app.data.summary);
  renderTCPPath(app.data.listeners);
  renderServiceOptions();
  renderConnections();
  renderClosed(app.data.closed);
  renderHistory(app.data.history);
  $.updated.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
}

function renderSummary(summary) {
  $.version.textContent = summary.version;
  const rule = summary.privileged_port_start;
  // With workers: "worker 0: pid 4101, serving, 3 live, 0 restarts" for each.
  const workers = (summary.workers || []).map((w) =>
    `worker ${w.index}: pid ${w.pid ?? "-"}, ${w.state}, ${count(w.connections)} live, ` +
    `${w.restarts} restarts`);
  $.about.textContent = `config ${summary.config} · privileged ports: below ${rule} ` +
    `(${summary.privileged_rule}) · config generation ${summary.config_generation}` +
    workers.map((w) => ` · ${w}`).join("");
  const refused = Object.values(summary.refused_by_reason || {}).reduce((a, b) => a + b, 0);
  let state = summary.state;
  if (state === "draining") {
    state += ` (${summary.remaining} left, ${Math.ceil(summary.drain_left)}s)`;
  }
  const totals = {
    listeners: count(summary.listeners.total),
    live: count(summary.connections.total),
    accepted: count(summary.accepted_total),
    refused: count(refused),
    uptime: duration(summary.uptime),
    state,
  };
  for (const [name, value] of Object.entries(totals)) {
    $.totals.querySelector(`[data-total="${name}"]`).textContent = value;
  }
  // One line per message (a listener flag comes once per transport), ten at most.
  const flags = [...new Map((summary.flags || []).map((f) => [f.message, f])).values()];
  const shown = flags.slice(0, 10).map((f) => el("li", { "data-kind": f.kind }, f.message));
  if (flags.length > shown.length) {
    shown.push(el("li", {}, `… and ${flags.length - shown.length} more (see /api/summary)`));
  }
  $.flags.replaceChildren(...shown);
  for (const span of document.querySelectorAll(".group .rule")) {
    const privileged = span.closest(".group").dataset.group === "privileged";
    span.textContent = privileged ? `(below ${rule})` : `(${rule} and up)`;
  }
}

function renderListeners(listeners, summary) {
  const services = summary.services || {};
  for (const section of document.querySelectorAll("section[data-group]")) {
    const privileged = section.dataset.group === "privileged";
    const table = section.querySelector("table");
    const mine = listeners.filter((l) => Boolean(l.privileged) === privileged);
    for (const old of table.querySelectorAll("tbody")) old.remove();
    for (const [portClass, label] of PORT_CLASSES) {
      const rows = mine.filter((l) => l.class === portClass);
      if (rows.length === 0) continue;
      const body = el("tbody", { "data-class": portClass });
      body.append(el("tr", {}, el("th", { scope: "rowgroup", colspan: 6, class: "rowgroup" },
                                  label)));
      for (const l of rows) {
        const address = endpoint(l.host, l.port);
        const refused = (services[l.service] || {}).refused || 0;
        // "(from 7)" after a port moved by --port-offset: a separate word, so it wraps.
        const port = l.port === l.configured_port ? [address]
          : [address, " ", el("span", { class: "from muted" }, `(from ${l.configured_port})`)];
        body.append(el("tr", { "data-service": l.service, "data-transport": l.transport,
                               "data-address": address, "data-class": l.class },
          el("th", { scope: "row" }, l.service),
          el("td", {}, l.protocol),
          el("td", {}, l.transport),
          el("td", { class: "endpoint" }, ...port),
          el("td", { class: "num", "data-live": l.connections }, count(l.connections)),
          el("td", { class: "num", "data-refused": refused }, count(refused))));
      }
      table.append(body);
    }
    labelCells(table);
    // A group with no listener is drawn as a one-line note across the width (app.css).
    section.toggleAttribute("data-empty", mine.length === 0);
    section.querySelector(".empty").hidden = mine.length > 0;
    section.querySelector(".scroll").hidden = mine.length === 0;
  }
}

// The kernel's view (Linux): per TCP listener, the sockets at each step of a connection's
// path. The section stays hidden when no listener has it.
function renderTCPPath(listeners) {
  const known = listeners.filter((l) => l.transport === "tcp" && l.kernel);
  $.tcpSection.hidden = known.length === 0;
  const rows = known.map((l) => {
    const k = l.kernel;
    const address = endpoint(l.host, l.port);
    const steps = [["close-wait", k.close_wait], ["fin-wait", k.fin_wait],
                   ["last-ack", k.last_ack], ["time-wait", k.time_wait]];
    const teardown = steps.reduce((sum, [, n]) => sum + n, 0);
    const parts = steps.filter(([, n]) => n > 0).map(([name, n]) => `${name} ${count(n)}`);
    const filling = k.backlog > 0 && k.accept_queue * 2 > k.backlog;
    return el("tr", { "data-service": l.service, "data-address": address,
                      "data-accept-queue": k.accept_queue, "data-time-wait": k.time_wait },
      el("th", { scope: "row" }, l.service),
      el("td", { class: "endpoint" }, address),
      el("td", { class: "num", "data-syn-recv": k.syn_recv }, count(k.syn_recv)),
      el("td", { class: filling ? "num warn" : "num" },
         `${count(k.accept_queue)} / ${count(k.backlog)}`),
      el("td", { class: "num" }, count(l.connections)),
      el("td", { class: "num", title: parts.join(", ") || "none" }, count(teardown),
         ...(parts.length ? [" ", el("span", { class: "muted" }, `(${parts.join(", ")})`)]
           : [])));
  });
  $.tcpPath.replaceChildren(...rows);
  labelCells($.tcpPath.closest("table"));
}

function renderServiceOptions() {
  const names = new Set(app.data.listeners.map((l) => l.service));
  for (const name of Object.keys(app.data.summary.services || {})) names.add(name);
  const sorted = [...names].sort();
  const current = [...$.serviceFilter.options].slice(1).map((o) => o.value);
  if (sorted.join("\n") === current.join("\n")) return; // keep the open list as it is
  const selected = $.serviceFilter.value;
  $.serviceFilter.replaceChildren(el("option", { value: "" }, "All services"),
    ...sorted.map((name) => el("option", { value: name }, name)));
  $.serviceFilter.value = sorted.includes(selected) ? selected : "";
}

function matches(record, service, search) {
  if (service && record.service !== service) return false;
  if (!search) return true;
  const local = endpoint(record.local.host, record.local.port);
  const remote = endpoint(record.remote.host, record.remote.port);
  return local.includes(search) || remote.includes(search);
}

function connectionCells(c) {
  return [
    el("th", { scope: "row" }, c.service),
    el("td", {}, c.transport),
    el("td", { class: "endpoint" }, endpoint(c.local.host, c.local.port)),
    el("td", { class: "endpoint" }, endpoint(c.remote.host, c.remote.port)),
  ];
}

function connectionAttributes(c) {
  return { "data-id": c.id, "data-service": c.service, "data-transport": c.transport,
           "data-local": endpoint(c.local.host, c.local.port),
           "data-remote": endpoint(c.remote.host, c.remote.port) };
}

// The kernel's round-trip time and retransmits of a TCP connection, or dashes.
function tcpCells(c) {
  const tcp = c.tcp;
  if (!tcp || tcp.rtt_ms === undefined) {
    return [el("td", { class: "num muted" }, "–"), el("td", { class: "num muted" }, "–")];
  }
  const rtt = tcp.rtt_ms < 10 ? tcp.rtt_ms.toFixed(3) : tcp.rtt_ms.toFixed(1);
  return [el("td", { class: "num", "data-rtt": tcp.rtt_ms }, `${rtt} ms`),
          el("td", { class: tcp.retransmits > 0 ? "num warn" : "num",
                     "data-retransmits": tcp.retransmits }, count(tcp.retransmits))];
}

function renderConnections() {
  if (!app.data) return;
  const service = $.serviceFilter.value;
  const search = $.addressFilter.value.trim();
  const all = app.data.tcp.concat(app.data.udp);
  const shown = all.filter((c) => matches(c, service, search));
  shown.sort((a, b) => b.opened - a.opened);
  const now = serverNow();
  const rows = shown.slice(0, MAX_ROWS).map((c) =>
    el("tr", connectionAttributes(c), ...connectionCells(c),
       el("td", { class: "num" }, duration(now - c.opened)),
       el("td", { class: "num" }, count(c.bytes_in)),
       el("td", { class: "num" }, count(c.bytes_out)),
       ...tcpCells(c)));
  if (rows.length === 0) {
    const text = all.length ? "No live connection matches the filters." : "No live connections.";
    rows.push(el("tr", {}, el("td", { colspan: 9, class: "none" }, text)));
  }
  $.connections.replaceChildren(...rows);
  labelCells($.connections.closest("table"));
  // The server's totals: the page holds at most one page of each (the API's limit).
  const tcp = app.data.tcpTotal ?? app.data.tcp.length;
  const udp = app.data.udpTotal ?? app.data.udp.length;
  let text = `${count(tcp)} TCP, ${count(udp)} UDP`;
  if (shown.length !== all.length || shown.length > MAX_ROWS || all.length < tcp + udp) {
    text += `; showing ${count(Math.min(shown.length, MAX_ROWS))} of ${count(shown.length)} ` +
      (all.length < tcp + udp ? "loaded (the first page of each)" : "matching");
  }
  $.connectionsCount.textContent = text;
}

function renderClosed(closed) {
  const recent = closed.slice(-MAX_CLOSED).reverse();
  const now = serverNow();
  const rows = recent.map((c) =>
    el("tr", { ...connectionAttributes(c), "data-reason": c.reason }, ...connectionCells(c),
       el("td", { class: "num" }, `${duration(now - c.closed)} ago`),
       el("td", { class: "num" }, duration(c.duration)),
       el("td", {}, c.reason),
       el("td", { class: "num" }, count(c.bytes_in)),
       el("td", { class: "num" }, count(c.bytes_out))));
  if (rows.length === 0) {
    rows.push(el("tr", {}, el("td", { colspan: 9, class: "none" }, "None closed yet.")));
  }
  $.closed.replaceChildren(...rows);
  labelCells($.closed.closest("table"));
}

// --- the charts -----------------------------------------------------------------------

// Per-second accept rates: each sample's accepts over the time since the one before.
function rates(accepts, t, interval) {
  return accepts.map((n, i) => {
    const dt = i > 0 ? t[i] - t[i - 1] : interval;
    return n / (dt > 0 ? dt : interval);
  });
}

function seriesOf(history) {
  return Object.entries(history.services).map(([name, s]) => ({
    name,
    live: s.live,
    accepts: rates(s.accepts, history.t, history.interval),
    accepted: s.accepts.reduce((a, b) => a + b, 0),
  }));
}

function niceStep(max, ticks) {
  const raw = Math.max(max, 1e-9) / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return step;
}

function largest(values) {
  let most = 0;
  for (const v of values) if (v > most) most = v;
  return most;
}

function drawChart(target, history, lines, key) {
  const width = Math.max(Math.round(target.clientWidth) || 0, 240);
  const height = Math.max(Math.round(target.clientHeight) || 0, 120);
  target.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const left = 40, right = 10, top = 8, bottom = 22;
  // The whole window once it is full; until then, the time since the first sample (a
  // minute at least), so a server started a moment ago does not draw a sliver.
  const end = history.now;
  const full = history.window * history.interval;
  const first = history.t.length ? history.t[0] : end;
  const span = Math.min(full, Math.max(60, Math.ceil((end - first) / 60) * 60));
  const start = end - span;
  const most = largest(lines.map((l) => largest(l[key])));
  const isInteger = key === "live";
  const step = isInteger ? Math.max(1, Math.ceil(niceStep(most || 1, 4)))
    : niceStep(most || 1, 4);
  const ceiling = step * 4;
  const x = (t) => left + ((t - start) / span) * (width - left - right);
  const y = (v) => top + (1 - v / ceiling) * (height - top - bottom);
  const nodes = [];
  for (let i = 0; i <= 4; i++) {
    const value = step * i;
    nodes.push(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(value),
                             y2: y(value) }));
    const label = Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/0+$/, "");
    nodes.push(svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" }, label));
  }
  const tick = [10, 15, 30, 60, 120, 300].find((s) => span / s <= 6) || 600;
  for (let ago = 0; ago <= span; ago += tick) {
    const at = x(end - ago);
    nodes.push(svg("line", { class: "axis", x1: at, x2: at, y1: height - bottom,
                             y2: height - bottom + 4 }));
    const label = ago === 0 ? "now" : ago < 60 ? `−${ago} s` : `−${ago / 60} min`;
    const anchor = ago === 0 ? "end" : ago === span ? "start" : "middle";
    nodes.push(svg("text", { x: at, y: height - 6, "text-anchor": anchor }, label));
  }
  nodes.push(svg("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom,
                           y2: height - bottom }));
  if (history.t.length === 0) {
    nodes.push(svg("text", { class: "empty-text", x: (left + width) / 2, y: height / 2,
                             "text-anchor": "middle" }, "No samples yet"));
  }
  for (const line of lines) {
    const points = history.t.map((t, i) => `${x(t).toFixed(1)},${y(line[key][i]).toFixed(1)}`);
    nodes.push(svg("polyline", { class: serviceClass(line.name), points: points.join(" "),
                                 "data-service": line.name, "data-series": key,
                                 "data-points": points.length }));
  }
  target.replaceChildren(...nodes);
}

function describe(lines, key, unit) {
  if (lines.length === 0) return "No services.";
  return lines.map((l) => {
    const values = l[key];
    const now = values.length ? values[values.length - 1] : 0;
    const most = largest(values);
    const round = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
    return `${l.name}: ${round(now)} ${unit} now, at most ${round(most)}`;
  }).join("; ") + " over the last 10 minutes.";
}

function renderHistory(history) {
  const lines = seriesOf(history);
  drawChart($.liveChart, history, lines, "live");
  drawChart($.acceptsChart, history, lines, "accepts");
  $.liveDesc.textContent = describe(lines, "live", "live");
  $.acceptsDesc.textContent = describe(lines, "accepts", "accepts per second");
  $.legend.replaceChildren(...lines.map((l) => {
    const now = l.live.length ? l.live[l.live.length - 1] : 0;
    return el("li", { "data-service": l.name },
              el("span", { class: `swatch ${serviceClass(l.name)}`, "aria-hidden": "true" }),
              `${l.name} `, el("span", { class: "muted" }, `(${now} live)`));
  }));
  const cell = (v) => el("td", { class: "num" },
                         Number.isInteger(v) ? count(v) : v.toFixed(1));
  $.historyTable.replaceChildren(...lines.map((l) => el("tr", { "data-service": l.name },
    el("th", { scope: "row" }, l.name),
    cell(l.live.length ? l.live[l.live.length - 1] : 0),
    cell(largest(l.live)), cell(l.accepted), cell(largest(l.accepts)))));
  labelCells($.historyTable.closest("table"));
}

// --- start ----------------------------------------------------------------------------

function start() {
  $ = {
    state: document.getElementById("connection-state"),
    pause: document.getElementById("pause"),
    authNeeded: document.getElementById("auth-needed"),
    version: document.getElementById("version"),
    about: document.getElementById("about"),
    totals: document.getElementById("totals"),
    flags: document.getElementById("flags"),
    serviceFilter: document.getElementById("service-filter"),
    addressFilter: document.getElementById("address-filter"),
    connections: document.querySelector("#connections tbody"),
    tcpSection: document.getElementById("tcp-section"),
    tcpPath: document.querySelector("#tcp-path tbody"),
    connectionsCount: document.getElementById("connections-count"),
    closed: document.querySelector("#closed tbody"),
    liveChart: document.getElementById("live-chart"),
    acceptsChart: document.getElementById("accepts-chart"),
    liveDesc: document.getElementById("live-chart-desc"),
    acceptsDesc: document.getElementById("accepts-chart-desc"),
    legend: document.getElementById("legend"),
    historyTable: document.querySelector("#history-table tbody"),
    updated: document.getElementById("updated"),
  };
  app.token = readToken();
  setState("connecting");
  $.pause.addEventListener("click", togglePause);
  document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
  $.serviceFilter.addEventListener("change", () => {
    renderConnections();
    if (!app.paused) restart();
  });
  $.addressFilter.addEventListener("input", renderConnections);
  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.replace(/^#/, "")).has("token")) {
      app.token = readToken();
      if (!app.paused) restart();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !app.paused) restart();
  });
  let redraw = null;
  window.addEventListener("resize", () => {
    if (redraw === null) {
      redraw = requestAnimationFrame(() => {
        redraw = null;
        if (app.data) renderHistory(app.data.history);
      });
    }
  });
  poll();
}

document.addEventListener("DOMContentLoaded", start);
