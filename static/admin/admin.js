// renum-rt admin console: plain ES module, no build step, no dependency but the
// server's own browser client. The page holds no data of its own: the admin token
// lives in this tab's sessionStorage (never in a URL) and goes out as a Bearer header
// on the admin API and as the token of the live WebSocket, whose `admin` channel
// pushes the figures every few seconds. Everything shown is written with
// textContent, so nothing a user id or an announcement holds can run as markup.

import { RenumRealtime } from "/static/renum-rt.js";

const TOKEN_KEY = "renum-rt-admin-token";
const PAGE_SIZE = 25;
const WINDOW_S = 300; // the chart's span
const STATE_TEXT = { connecting: "Connecting", connected: "Live", reconnecting: "Reconnecting",
  disconnected: "Offline", failed: "Offline", unauthorized: "Signed out" };
const ACTION_TEXT = { disconnect_user: "Disconnected user", disconnect_connection: "Disconnected connection",
  broadcast: "Broadcast", log_level: "Log level" };

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let rt = null;
let history = []; // [{t, in, out, pub}] from admin.stats pushes
let page = { offset: 0, user: "", total: 0 };
let lastConnections = null;
let listTimer = 0;

// ------------------------------------------------------------------ helpers

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

const count = (n) => Number(n || 0).toLocaleString("en-US");

/** A per-second rate, with as many decimals as its size deserves. */
function rate(n) {
  const x = Number(n || 0);
  if (x === 0) return "0";
  if (x < 10) return x.toFixed(1);
  return Math.round(x).toLocaleString("en-US");
}

/** 80.7 -> "1 min 20 s"; 7300 -> "2 h 1 min"; 200000 -> "2 d 7 h". */
function duration(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d${h ? ` ${h} h` : ""}`;
  if (h) return `${h} h${m ? ` ${m} min` : ""}`;
  if (m) return `${m} min${s % 60 ? ` ${s % 60} s` : ""}`;
  return `${s} s`;
}

function ago(epochSeconds) {
  const s = Date.now() / 1000 - epochSeconds;
  return s < 5 ? "just now" : `${duration(s)} ago`;
}

function clock(epochSeconds) {
  const date = new Date(epochSeconds * 1000);
  const today = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return today ? time : `${date.toLocaleDateString("en-GB", { day: "numeric", month: "short" })} ${time}`;
}

function toast(text, kind = "") {
  const node = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  $("toasts").append(node);
  setTimeout(() => node.remove(), 5000);
}

/** The claims of a JWT, for display only (the server verifies it). */
function claims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
  } catch {
    return {};
  }
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function api(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const json = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new ApiError(response.status, json);
    if (error.status === 401) signOut("Your session has ended: the token expired or is no longer valid. Sign in again.");
    throw error;
  }
  return json;
}

/** Ask before acting; resolves true when the admin confirms. */
function confirmAction(title, text, action = "Confirm") {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

// ------------------------------------------------------------------ signing in and out

function showSignIn(message) {
  $("console").hidden = $("meta").hidden = $("account").hidden = true;
  $("signin-view").hidden = false;
  $("signin-error").hidden = !message;
  $("signin-error").textContent = message || "";
  $("token").focus();
}

function signOut(message) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  if (rt) rt.close();
  rt = null;
  history = [];
  clearInterval(listTimer);
  showSignIn(message);
}

async function signIn(candidate) {
  token = candidate;
  let stats;
  try {
    stats = await fetch("/admin/api/stats", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch {
    return showSignIn("The server cannot be reached. Check the address and try again.");
  }
  if (stats.status === 401) return showSignIn("This token is not valid or has expired. Paste a fresh admin token.");
  if (stats.status === 403) {
    return showSignIn("This token is valid, but it is not an admin token: it does not carry the admin role. " +
      "Sign in with an administrator's token.");
  }
  if (!stats.ok) return showSignIn(`The server could not answer (HTTP ${stats.status}). Try again in a moment.`);
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  const who = claims(token);
  $("who").replaceChildren("Signed in as ", el("b", {}, String(who.email || who.sub || "admin")));
  $("signin-view").hidden = true;
  $("console").hidden = $("meta").hidden = $("account").hidden = false;
  renderStats(await stats.json());
  connectLive();
  loadConnections();
  loadLogLevel();
  loadAudit();
  listTimer = setInterval(() => { loadConnections(); loadAudit(); loadLogLevel(); }, 10000); // other admins act too
}

function connectLive() {
  rt = new RenumRealtime({ getToken: () => token, shared: false,
    reconnect: { attempts: 20, baseDelayMs: 500, maxDelayMs: 10000, factor: 2, jitter: true } });
  rt.on("state", (state) => {
    $("live").dataset.state = state;
    $("live-text").textContent = STATE_TEXT[state] || state;
    if (state === "unauthorized") signOut("Your session has ended: the token expired. Sign in again.");
  });
  rt.subscribe("admin", (event) => {
    if (event.event === "admin.stats") renderStats(event.data);
  });
  rt.connect();
}

// ------------------------------------------------------------------ live figures

function setStat(name, value, unit, sub, tone = "") {
  const card = document.querySelector(`[data-stat="${name}"]`);
  card.querySelector(".value").replaceChildren(value, ...(unit ? [el("small", {}, unit)] : []));
  card.querySelector(".sub").textContent = sub;
  card.classList.toggle("alert", tone === "alert");
  card.classList.toggle("good", tone === "good");
}

function renderStats(s) {
  $("node-id").textContent = s.node;
  $("engine").textContent = s.engine === "redis" ? "Redis" : "in memory";
  const nodes = s.per_node || [];
  const down = nodes.filter((n) => n.engine_ok === false).length;
  setStat("connections", count(s.connections), "", `${count(s.users)} user${s.users === 1 ? "" : "s"} · ${count(s.channels)} channels`);
  setStat("nodes", count(s.nodes), "", down ? `store unreachable on ${down}` : (s.engine === "redis" ? "all reach Redis" : "single node"),
    down ? "alert" : "good");
  setStat("messages_in", rate(s.messages_in_per_s), "/s", `${count(s.messages_in)} since start`);
  setStat("messages_out", rate(s.messages_out_per_s), "/s", `${count(s.messages_out)} since start`);
  setStat("published", rate(s.published_per_s), "/s", `${count(s.published)} since start`);
  setStat("rate_limited", count(s.rate_limited), "", "frames and connections refused", s.rate_limited ? "alert" : "");
  setStat("errors", count(s.errors), "", `${count(s.auth_failures)} tokens refused`, s.errors ? "alert" : "");
  setStat("uptime", duration(s.uptime_s), "", `since ${clock(Date.now() / 1000 - s.uptime_s)}`);
  renderNodes(nodes);
  const now = Date.now() / 1000;
  history.push({ t: now, in: s.messages_in_per_s || 0, out: s.messages_out_per_s || 0, pub: s.published_per_s || 0 });
  history = history.filter((p) => p.t >= now - WINDOW_S);
  drawChart();
  if (lastConnections !== null && lastConnections !== s.connections) loadConnections();
  lastConnections = s.connections;
}

function renderNodes(nodes) {
  $("nodes").replaceChildren(...nodes.map((n) => el("tr", {},
    el("td", { class: "mono", "data-label": "Node" }, n.node),
    el("td", { "data-label": "Store" }, el("span", { class: `health${n.engine_ok === false ? " down" : ""}` },
      el("i"), n.engine_ok === false ? "unreachable" : n.engine === "redis" ? "Redis ok" : "memory")),
    el("td", { class: "num", "data-label": "Conns" }, count(n.connections)),
    el("td", { class: "num", "data-label": "In/s" }, rate(n.messages_in_per_s)),
    el("td", { class: "num", "data-label": "Out/s" }, rate(n.messages_out_per_s)),
    el("td", { class: "time", "data-label": "Uptime" }, duration(n.uptime_s)))));
}

/** A round maximum for the y axis: 1, 2, 5 x 10^n. */
function niceMax(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((f) => f * power).find((m) => m >= value);
}

function drawChart() {
  const box = $("chart");
  const width = Math.max(240, box.clientWidth), height = Math.max(120, box.clientHeight);
  const left = 44, right = 8, top = 8, bottom = 24;
  const plotW = width - left - right, plotH = height - top - bottom;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "Messages in, messages out and publishes per second over the last five minutes" });
  const now = Date.now() / 1000;
  const max = niceMax(Math.max(0, ...history.flatMap((p) => [p.in, p.out, p.pub])));
  const x = (t) => left + plotW * (1 - (now - t) / WINDOW_S);
  const y = (v) => top + plotH * (1 - v / max);
  for (let i = 0; i <= 4; i++) {
    const value = (max * i) / 4;
    chart.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }));
    const label = svg("text", { class: "axis", x: left - 8, y: y(value) + 4, "text-anchor": "end" });
    label.textContent = rate(value);
    chart.append(label);
  }
  for (const minutes of plotW < 420 ? [4, 2, 0] : [5, 4, 3, 2, 1, 0]) {
    const label = svg("text", { class: "axis", x: x(now - minutes * 60), y: height - 6,
      "text-anchor": minutes === 5 ? "start" : minutes === 0 ? "end" : "middle" });
    label.textContent = minutes ? `−${minutes} min` : "now";
    chart.append(label);
  }
  if (history.length < 2) {
    const waiting = svg("text", { class: "waiting", x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle" });
    waiting.textContent = "Collecting live figures…";
    chart.append(waiting);
  } else {
    const points = (key) => history.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
    const first = history[0], last = history[history.length - 1];
    chart.append(svg("polygon", { class: "area",
      points: `${x(first.t).toFixed(1)},${y(0)} ${points("in")} ${x(last.t).toFixed(1)},${y(0)}` }));
    for (const [key, name] of [["out", "s-out"], ["pub", "s-pub"], ["in", "s-in"]]) {
      chart.append(svg("polyline", { class: `line ${name}`, points: points(key) }));
    }
  }
  box.replaceChildren(chart);
}

// ------------------------------------------------------------------ connections

async function loadConnections() {
  const query = new URLSearchParams({ offset: page.offset, limit: PAGE_SIZE });
  if (page.user) query.set("user", page.user);
  let listing;
  try {
    listing = await api(`/admin/api/connections?${query}`);
  } catch (error) {
    if (error.status !== 401) toast(`Connections: ${error.message}`, "error");
    return;
  }
  if (listing.total && page.offset >= listing.total) { // the page emptied meanwhile
    page.offset = Math.max(0, Math.floor((listing.total - 1) / PAGE_SIZE) * PAGE_SIZE);
    return loadConnections();
  }
  page.total = listing.total;
  const rows = listing.connections;
  $("connections").replaceChildren(...rows.map(connectionRow));
  $("connections-empty").hidden = rows.length > 0;
  $("conn-summary").textContent = page.user ? `· ${count(listing.total)} of user ${page.user}` : `· ${count(listing.total)} open`;
  $("page-info").textContent = rows.length
    ? `${count(page.offset + 1)}–${count(page.offset + rows.length)} of ${count(listing.total)}`
    : "";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = page.offset + rows.length >= listing.total;
}

function connectionRow(c) {
  return el("tr", { "data-connection": c.connection_id },
    el("td", { "data-label": "User" }, el("b", {}, c.user_id)),
    el("td", { class: "mono", "data-label": "Address" }, c.address),
    el("td", { class: "mono", "data-label": "Node" }, c.node),
    el("td", { "data-label": "Origin" }, c.origin || el("span", { class: "muted" }, "none")),
    el("td", { class: "time", "data-label": "Connected since" }, clock(c.connected_at)),
    el("td", { class: "time", "data-label": "Last active" }, ago(c.last_active)),
    el("td", { "data-label": "Channels" }, el("span", { class: "tags" }, ...c.channels.map((ch) => el("span", { class: "tag" }, ch)))),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "button small", "data-action": "disconnect-connection",
        onclick: () => disconnectConnection(c) }, "Disconnect"),
      el("button", { type: "button", class: "button small link-danger", "data-action": "disconnect-user",
        onclick: () => disconnectUser(c.user_id) }, "Disconnect user")));
}

async function disconnectConnection(c) {
  const sure = await confirmAction("Disconnect this connection?",
    `The connection of ${c.user_id} from ${c.address} is closed with code 4009 (disconnected by an administrator). ` +
    "The client does not reconnect by itself.", "Disconnect");
  if (!sure) return;
  try {
    await api(`/admin/api/connections/${encodeURIComponent(c.connection_id)}/disconnect`, {});
    toast(`Connection of ${c.user_id} closed`);
  } catch (error) {
    if (error.status !== 401) toast(error.status === 404 ? "That connection is already gone" : error.message, "error");
  }
  afterAction();
}

async function disconnectUser(user) {
  const sure = await confirmAction(`Disconnect ${user}?`,
    `Every connection of ${user}, on every node, is closed with code 4009. Their clients do not reconnect by themselves.`,
    "Disconnect user");
  if (!sure) return;
  try {
    await api(`/admin/api/users/${encodeURIComponent(user)}/disconnect`, {});
    toast(`${user} disconnected`);
  } catch (error) {
    if (error.status !== 401) toast(error.message, "error");
  }
  afterAction();
}

function afterAction() {
  setTimeout(loadConnections, 300);
  loadAudit();
}

// ------------------------------------------------------------------ broadcast

function renderPreview() {
  const form = $("broadcast");
  $("preview").dataset.level = form.level.value;
  $("preview-title").textContent = form.title.value.trim() || "Title";
  $("preview-message").textContent = form.message.value.trim() || "Message";
}

async function broadcast(event) {
  event.preventDefault();
  const form = event.target;
  const body = { title: form.title.value.trim(), message: form.message.value.trim(), level: form.level.value };
  const sure = await confirmAction("Send this announcement?",
    `“${body.title}” goes to every connected user now, and into every user's notifications.`, "Send");
  if (!sure) return;
  try {
    await api("/admin/api/broadcast", body);
    toast("Announcement sent");
    form.reset();
    renderPreview();
  } catch (error) {
    if (error.status !== 401) toast(error.message, "error");
  }
  loadAudit();
}

// ------------------------------------------------------------------ logging

async function loadLogLevel() {
  try {
    const state = await api("/admin/api/log-level");
    $("log-level").value = state.level;
    $("log-state").textContent = `now: ${state.level}`;
    $("followed").replaceChildren(...state.followed.map((user) => el("li", {}, user,
      el("button", { type: "button", title: `Stop following ${user}`, "aria-label": `Stop following ${user}`,
        onclick: () => setLevel({ level: "info", user }, `No longer following ${user}`) }, "×"))));
  } catch (error) {
    if (error.status !== 401) toast(error.message, "error");
  }
}

async function setLevel(body, done) {
  try {
    await api("/admin/api/log-level", body);
    toast(done);
  } catch (error) {
    if (error.status !== 401) toast(error.message, "error");
  }
  setTimeout(loadLogLevel, 200);
  loadAudit();
}

// ------------------------------------------------------------------ audit log

async function loadAudit() {
  let answer;
  try {
    answer = await api("/admin/api/audit?limit=50");
  } catch (error) {
    if (error.status !== 401) toast(error.message, "error");
    return;
  }
  $("audit").replaceChildren(...answer.entries.map((e) => el("tr", {},
    el("td", { class: "time", "data-label": "When" }, clock(e.at)),
    el("td", { "data-label": "Admin" }, e.by),
    el("td", { "data-label": "Action" }, el("span", {}, el("span", { class: "action" }, ACTION_TEXT[e.action] || e.action),
      e.details?.level ? el("span", { class: "sub" }, `level ${e.details.level}`) : null)),
    el("td", { "data-label": "Target" }, el("span", { class: "target" }, e.target,
      e.details?.title ? el("span", { class: "sub" }, e.details.title) : null)),
    el("td", { class: "mono", "data-label": "Address" }, e.address || "–"))));
  $("audit-empty").hidden = answer.entries.length > 0;
}

// ------------------------------------------------------------------ wiring

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const candidate = $("token").value.trim();
  if (candidate) signIn(candidate);
});
$("signout").addEventListener("click", () => signOut(""));
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  page = { ...page, offset: 0, user: $("search").value.trim() };
  loadConnections();
});
$("search").addEventListener("search", () => { // the field's clear button
  if (!$("search").value) { page = { ...page, offset: 0, user: "" }; loadConnections(); }
});
$("prev").addEventListener("click", () => { page.offset = Math.max(0, page.offset - PAGE_SIZE); loadConnections(); });
$("next").addEventListener("click", () => { page.offset += PAGE_SIZE; loadConnections(); });
$("broadcast").addEventListener("input", renderPreview);
$("broadcast").addEventListener("submit", broadcast);
$("log-level-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const level = $("log-level").value;
  setLevel({ level }, `Every node now logs at ${level}`);
});
$("follow-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("follow-user").value.trim();
  $("follow-user").value = "";
  setLevel({ level: "debug", user }, `Following ${user}: their frames are logged at debug`);
});
new ResizeObserver(() => { if (!$("console").hidden) drawChart(); }).observe($("chart"));

if (token) signIn(token);
else showSignIn("");
