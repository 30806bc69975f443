// Load generator for the renum-rt benchmarks: one Node.js process, no npm dependencies.
//
// A minimal RFC 6455 client over node:net (it masks what it sends, answers pings, and
// reads from each server frame only its length and one marker), plus a minimal HTTP/1.1
// keep-alive client for the publish API. It is driven by the Python bench scripts over
// stdin/stdout, one JSON object per line, and talks only to 127.0.0.1.
//
//   node bench/loadgen.mjs --port 8765 [--host 127.0.0.1]
//
// Commands (stdin)                                           Answers (stdout)
//   {"cmd":"connect","n":1000,"path":"/ws"}                  {"ev":"connected",...}
//       or "paths":[...] / "paths_file":"f.json"; "proto":"renum.v1"; "concurrency":50;
//       "sio":true: Socket.IO over Engine.IO v4 framing (path /socket.io/?EIO=4&transport=websocket):
//       on the open packet ("0{...}") send "40" (join "/"), count the connection once "40" comes
//       back, answer each ping ("2") with "3"; events ("42[...]") are measured like any frame
//   {"cmd":"arm","marker":"bt=","mode":"stamp","expect":N,   {"ev":"armed"}, later {"ev":"done",...}
//    "timeout_ms":60000, "capacity":N}   (capacity: latencies kept, default min(expect, 5e6))
//       mode "stamp": the digits after the marker are the send time (CLOCK_MONOTONIC, µs)
//       mode "seq":   the digits index the send times recorded by "publish"
//   {"cmd":"publish",...}  HTTP publishers (see startPublish)   {"ev":"published",...}
//   {"cmd":"close_conn","index":0}                           {"ev":"closed_conn"}
//   {"cmd":"stats"}                                          {"ev":"stats",...}
//   {"cmd":"exit"}                                           exits
//
// Times: process.hrtime() is CLOCK_MONOTONIC on Linux, the same clock as Python's
// time.monotonic(), so a send time stamped by the server process can be compared with
// a receipt time here.

import net from "node:net";
import crypto from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";

const argv = process.argv.slice(2);
function arg(name, dflt) {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
}
if (argv.includes("--help") || argv.includes("-h")) {
  process.stdout.write(
    "usage: node bench/loadgen.mjs --port PORT [--host 127.0.0.1]\n" +
      "Driven by bench/*.py over stdin/stdout (JSON lines); see the header of this file.\n",
  );
  process.exit(0);
}
const HOST = arg("--host", "127.0.0.1");
const PORT = Number(arg("--port", "8765"));
if (HOST !== "127.0.0.1" && HOST !== "localhost") {
  process.stderr.write("loadgen: only 127.0.0.1 is allowed\n");
  process.exit(2);
}

function nowUs() {
  const t = process.hrtime();
  return t[0] * 1e6 + t[1] / 1e3;
}
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}
function pct(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}
function summary(values) {
  // values: Float64Array or array of microseconds -> milliseconds summary
  const a = Float64Array.from(values).sort();
  const r = (x) => (x === null ? null : Math.round(x) / 1000);
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i];
  return {
    n: a.length,
    p50_ms: r(pct(a, 50)),
    p90_ms: r(pct(a, 90)),
    p99_ms: r(pct(a, 99)),
    max_ms: r(a.length ? a[a.length - 1] : null),
    mean_ms: a.length ? Math.round(sum / a.length) / 1000 : null,
  };
}

// ------------------------------------------------------------------ WebSocket client

const conns = [];
let framesTotal = 0;
let closedByServer = 0;
const closeCodes = {};

// measurement state (one armed measurement at a time)
let arm = null;

function maskedFrame(opcode, payload) {
  const n = payload.length;
  if (n > 125) throw new Error("control frame too long");
  const out = Buffer.allocUnsafe(6 + n);
  out[0] = 0x80 | opcode;
  out[1] = 0x80 | n;
  const mask = crypto.randomBytes(4);
  mask.copy(out, 2);
  for (let i = 0; i < n; i++) out[6 + i] = payload[i] ^ mask[i & 3];
  return out;
}

function onMessage(buf, start, end, t) {
  framesTotal++;
  const a = arm;
  if (a === null) return;
  let i = buf.indexOf(a.marker, start);
  if (i < 0 || i >= end) return;
  i += a.marker.length;
  let v = 0;
  while (i < end) {
    const c = buf[i];
    if (c < 48 || c > 57) break;
    v = v * 10 + (c - 48);
    i++;
  }
  let sent;
  if (a.mode === "stamp") {
    sent = v;
  } else {
    sent = pub ? pub.sendTimes[v] : undefined;
    if (sent === undefined) {
      a.unknown++;
      return;
    }
    if (pub.seen[v] !== undefined) pub.seen[v]++;
    const due = pub.dueTimes[v];
    if (due !== undefined && a.count < a.latDue.length) a.latDue[a.count] = t - due;
  }
  if (a.count < a.lat.length) a.lat[a.count] = t - sent;
  a.count++;
  if (a.perEvent !== null) {
    let e = a.perEvent.get(sent);
    if (e === undefined) a.perEvent.set(sent, (e = { n: 0, min: Infinity, max: 0, last: 0 }));
    e.n++;
    if (t - sent < e.min) e.min = t - sent;
    if (t - sent > e.max) e.max = t - sent;
    e.last = t;
  }
  if (sent < a.firstSend) a.firstSend = sent;
  if (a.firstRecv === 0) a.firstRecv = t;
  a.lastRecv = t;
  if (a.count >= a.expect) finishArm("complete");
}

// Reads go straight into one shared buffer (net.Socket "onread"): no Buffer and no
// stream event per read. A frame cut by the end of a read is copied out and completed
// by the next read of that socket.
const SHARED = Buffer.allocUnsafe(1 << 16);

function onFrames(conn, chunk, n0) {
  const t = nowUs();
  let buf = chunk;
  let n = n0;
  if (conn.rest !== null) {
    buf = Buffer.concat([conn.rest, chunk.subarray(0, n0)]);
    n = buf.length;
  }
  let off = 0;
  for (;;) {
    if (n - off < 2) break;
    const b0 = buf[off];
    const b1 = buf[off + 1];
    let len = b1 & 0x7f;
    let hdr = 2;
    if (len === 126) {
      if (n - off < 4) break;
      len = buf.readUInt16BE(off + 2);
      hdr = 4;
    } else if (len === 127) {
      if (n - off < 10) break;
      len = Number(buf.readBigUInt64BE(off + 2));
      hdr = 10;
    }
    if (b1 & 0x80) hdr += 4; // servers never mask; tolerate it anyway
    if (n - off < hdr + len) break;
    const start = off + hdr;
    const end = start + len;
    const op = b0 & 0x0f;
    if (op === 1 || op === 2 || op === 0) {
      if (conn.sio !== null && (len <= 2 || conn.sio !== "joined") && sioControl(conn, buf, start, len)) {
        off = end;
        continue;
      }
      onMessage(buf, start, end, t);
    } else if (op === 9) {
      conn.sock.write(maskedFrame(0x0a, buf.subarray(start, end)));
    } else if (op === 8) {
      const code = len >= 2 ? buf.readUInt16BE(start) : 1005;
      closeCodes[code] = (closeCodes[code] || 0) + 1;
      closedByServer++;
      conn.open = false;
      conn.sock.end();
    }
    off = end;
  }
  conn.rest = off < n ? Buffer.from(buf.subarray(off, n)) : null;
}

// Engine.IO v4 / Socket.IO control packets (sio mode): "0{...}" open, "40..." joined, "2" ping.
// Returns true when the frame was one of them.
function sioControl(conn, buf, start, len) {
  const c0 = buf[start];
  if (c0 === 0x32 && len === 1) {
    conn.sock.write(maskedFrame(0x01, Buffer.from("3")));
    return true;
  }
  if (c0 === 0x30 && conn.sio === "wait-open") {
    conn.sio = "wait-join";
    conn.sock.write(maskedFrame(0x01, Buffer.from("40")));
    return true;
  }
  if (c0 === 0x34 && len >= 2 && buf[start + 1] === 0x30 && conn.sio === "wait-join") {
    conn.sio = "joined";
    if (conn.onJoined) conn.onJoined();
    return true;
  }
  return false;
}

function openOne(path, proto, sio) {
  return new Promise((resolve) => {
    const key = crypto.randomBytes(16).toString("base64");
    const conn = { sock: null, rest: null, open: false, head: null, sio: sio ? "wait-open" : null, onJoined: null };
    let settled = false;
    const done = (err) => {
      if (settled) return;
      settled = true;
      resolve(err ? { err } : { conn });
    };
    const onRead = (nread, buf) => {
      if (conn.open) {
        onFrames(conn, buf, nread);
        return;
      }
      if (settled) return;
      const chunk = Buffer.from(buf.subarray(0, nread));
      conn.head = conn.head === null ? chunk : Buffer.concat([conn.head, chunk]);
      const head = conn.head;
      const i = head.indexOf("\r\n\r\n");
      if (i < 0) return;
      conn.head = null;
      const status = head.subarray(0, head.indexOf("\r\n")).toString("latin1");
      if (!status.startsWith("HTTP/1.1 101")) {
        sock.destroy();
        return done(status + " " + head.subarray(i + 4, i + 204).toString("utf8"));
      }
      conn.open = true;
      if (conn.sio === null) done(null);
      else conn.onJoined = () => done(null);
      const rest = head.subarray(i + 4);
      if (rest.length) onFrames(conn, rest, rest.length);
    };
    const sock = net.connect({ host: HOST, port: PORT, onread: { buffer: SHARED, callback: onRead } });
    conn.sock = sock;
    sock.setNoDelay(true);
    sock.on("connect", () => {
      sock.write(
        `GET ${path} HTTP/1.1\r\nHost: ${HOST}:${PORT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
          (proto ? `Sec-WebSocket-Protocol: ${proto}\r\n` : "") +
          "\r\n",
      );
    });
    sock.on("error", (e) => {
      conn.open = false;
      done(String(e.message || e));
    });
    sock.on("close", () => {
      conn.open = false;
      done("closed during handshake");
    });
  });
}

async function connect(cmd) {
  let paths = cmd.paths;
  if (cmd.paths_file) paths = JSON.parse(fs.readFileSync(cmd.paths_file, "utf8"));
  const n = paths ? paths.length : cmd.n;
  const concurrency = cmd.concurrency || 50;
  const t0 = nowUs();
  let next = 0;
  let ok = 0;
  const errors = [];
  async function worker() {
    while (next < n) {
      const i = next++;
      const r = await openOne(paths ? paths[i] : cmd.path, cmd.proto, !!cmd.sio);
      if (r.conn) {
        conns.push(r.conn);
        ok++;
      } else errors.push(r.err);
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  emit({
    ev: "connected",
    ok,
    failed: errors.length,
    errors: errors.slice(0, 3),
    open: conns.filter((c) => c.open).length,
    ms: Math.round((nowUs() - t0) / 1000),
  });
}

function startArm(cmd) {
  if (arm !== null) finishArm("replaced");
  const size = Math.min(cmd.capacity || cmd.expect, 5_000_000);
  arm = {
    marker: Buffer.from(cmd.marker, "latin1"),
    mode: cmd.mode || "stamp",
    expect: cmd.expect,
    lat: new Float64Array(size),
    latDue: new Float64Array(cmd.mode === "seq" ? size : 0),
    count: 0,
    unknown: 0,
    firstSend: Infinity,
    firstRecv: 0,
    lastRecv: 0,
    armedAt: nowUs(),
    cpu0: process.cpuUsage(),
    timer: setTimeout(() => finishArm("timeout"), cmd.timeout_ms || 60000),
    label: cmd.label || null,
    perEvent: cmd.per_event ? new Map() : null,
  };
  emit({ ev: "armed", label: arm.label });
}

function finishArm(reason) {
  const a = arm;
  if (a === null) return;
  arm = null;
  clearTimeout(a.timer);
  const cpu = process.cpuUsage(a.cpu0);
  const span = a.lastRecv - a.firstSend;
  emit({
    ev: "done",
    label: a.label,
    reason,
    count: a.count,
    expect: a.expect,
    unknown: a.unknown,
    first_send_us: a.firstSend === Infinity ? null : a.firstSend,
    first_recv_us: a.firstRecv || null,
    last_recv_us: a.lastRecv || null,
    span_ms: a.count ? span / 1000 : null,
    per_s: a.count && span > 0 ? Math.round((a.count / span) * 1e6) : null,
    latency: summary(a.lat.subarray(0, Math.min(a.count, a.lat.length))),
    loadgen_cpu_ms: Math.round((cpu.user + cpu.system) / 1000),
    loadgen_sys_ms: Math.round(cpu.system / 1000),
    loadgen_busy: a.lastRecv ? (cpu.user + cpu.system) / (a.lastRecv - a.armedAt) : null,
    // per event (in send order): [send - first send, deliveries, min, max latency] in ms
    per_event:
      a.perEvent === null
        ? undefined
        : [...a.perEvent.entries()]
            .sort((x, y) => x[0] - y[0])
            .map(([s, e]) => [
              Math.round(s - a.firstSend) / 1000,
              e.n,
              Math.round(e.min) / 1000,
              Math.round(e.max) / 1000,
            ]),
  });
}

// ------------------------------------------------------------------ HTTP publishers

let pub = null;

class HttpConn {
  constructor(onFree) {
    this.sock = net.connect({ host: HOST, port: PORT });
    this.sock.setNoDelay(true);
    this.buf = null;
    this.busy = true; // until connected
    this.pending = null;
    this.onFree = onFree;
    this.dead = false;
    this.sock.on("connect", () => {
      this.busy = false;
      this.onFree(this);
    });
    this.sock.on("data", (c) => this.onData(c));
    this.sock.on("error", () => {});
    this.sock.on("close", () => {
      this.dead = true;
      if (this.pending) {
        const p = this.pending;
        this.pending = null;
        p.cb(0, nowUs());
      }
    });
  }
  send(req, cb) {
    this.busy = true;
    this.pending = { cb };
    this.sock.write(req);
  }
  onData(chunk) {
    this.buf = this.buf === null ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      const b = this.buf;
      if (b === null) return;
      const i = b.indexOf("\r\n\r\n");
      if (i < 0) return;
      const head = b.subarray(0, i).toString("latin1");
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      const len = m ? Number(m[1]) : 0;
      if (b.length < i + 4 + len) return;
      const status = Number(head.slice(9, 12));
      this.buf = b.length > i + 4 + len ? Buffer.from(b.subarray(i + 4 + len)) : null;
      const p = this.pending;
      this.pending = null;
      this.busy = false;
      if (p) p.cb(status, nowUs(), status !== 200 ? b.subarray(i + 4, i + 4 + Math.min(len, 200)).toString() : null);
      if (!this.dead) this.onFree(this);
    }
  }
}

// {"cmd":"publish","path":"/api/v1/publish","api_key":"k","users":["u1",...],
//  "conns":16, "duration_ms":10000,
//  "schedule":"closed" | "open", "period_ms":100, "batch":false,
//  "drain_ms":5000, "tag":"x"}
// Each request publishes execution.status with execution_id = tag + sequence number; the
// WebSocket side (armed with marker '"execution_id":"' + tag, mode "seq") matches each
// delivery to the send time of its request.
// closed: every HTTP connection sends its next request as soon as the previous answer
//   arrives, each request to the next user in turn (throughput).
// open:   every user gets one event every period_ms, users spread evenly over the period
//   (batch=true: one request per period naming every user); requests wait for a free
//   connection when all are busy (that wait is reported as queue lag).
function startPublish(cmd) {
  const users = cmd.users;
  const nUsers = users.length;
  const userJson = users.map((u) => JSON.stringify(u));
  const allUsersJson = "[" + userJson.join(",") + "]";
  const path = cmd.path || "/api/v1/publish";
  const headers =
    `POST ${path} HTTP/1.1\r\nHost: ${HOST}:${PORT}\r\nAuthorization: Bearer ${cmd.api_key}\r\n` +
    "Content-Type: application/json\r\n";
  const open = cmd.schedule === "open";
  const batch = !!cmd.batch;
  const period = (cmd.period_ms || 100) * 1000;
  const duration = cmd.duration_ms * 1000;
  const perDelivery = batch ? nUsers : 1;
  const tag = cmd.tag || "x";
  const state = {
    sendTimes: [],
    dueTimes: [],
    seen: [],
    queue: [],
    statuses: {},
    errors: [],
    httpLat: [],
    lag: [],
    sent: 0,
    answered: 0,
    firstSend: 0,
    lastAnswer: 0,
    stopAt: 0,
    finished: false,
    conns: [],
  };
  pub = state;
  function body(seq, userIdx) {
    const us = batch ? allUsersJson : "[" + userJson[userIdx] + "]";
    return (
      `{"users":${us},"event":"execution.status","data":{"execution_id":"${tag}${seq}",` +
      `"team_id":"bench","status":"running","progress":${seq % 101}}}`
    );
  }
  function fire(conn, item) {
    const seq = state.sendTimes.length;
    const t = nowUs();
    state.sendTimes.push(t);
    state.dueTimes.push(item.sched === undefined ? t : item.sched);
    state.seen.push(0);
    if (item.sched !== undefined) state.lag.push(t - item.sched);
    if (!state.firstSend) state.firstSend = t;
    const b = body(seq, item.user);
    state.sent++;
    conn.send(headers + `Content-Length: ${Buffer.byteLength(b)}\r\n\r\n` + b, (status, tr, text) => {
      state.answered++;
      state.statuses[status] = (state.statuses[status] || 0) + 1;
      if (status !== 200 && state.errors.length < 3) state.errors.push(`${status} ${text}`);
      state.httpLat.push(tr - t);
      state.lastAnswer = tr;
      maybeFinish();
    });
  }
  let rr = 0;
  function onFree(conn) {
    if (state.finished) return;
    if (open) {
      const item = state.queue.shift();
      if (item) fire(conn, item);
    } else if (nowUs() < state.stopAt) {
      fire(conn, { user: rr++ % nUsers });
    } else maybeFinish();
  }
  function freeConn() {
    for (const c of state.conns) if (!c.busy && !c.dead) return c;
    return null;
  }
  let scheduleDone = !open;
  function startOpen() {
    const t0 = nowUs() + 20_000;
    const total = batch ? Math.floor(duration / period) : Math.floor(duration / period) * nUsers;
    let j = 0;
    function tick() {
      const now = nowUs();
      while (j < total) {
        const k = batch ? j : Math.floor(j / nUsers);
        const i = batch ? 0 : j % nUsers;
        const at = t0 + k * period + (batch ? 0 : (i * period) / nUsers);
        if (at > now) {
          setTimeout(tick, Math.max(0, (at - now) / 1000));
          return;
        }
        j++;
        const item = { user: i, sched: at };
        const c = freeConn();
        if (c) fire(c, item);
        else state.queue.push(item);
      }
      scheduleDone = true;
      maybeFinish();
    }
    tick();
  }
  function maybeFinish() {
    if (state.finished) return;
    if (!scheduleDone) return;
    if (!open && nowUs() < state.stopAt) return;
    if (state.queue.length || state.answered < state.sent) return;
    state.finished = true;
    const wall = state.lastAnswer - state.firstSend;
    const ok = state.statuses[200] || 0;
    const expect = ok * perDelivery;
    const report = () => {
      const a = arm;
      const got = a ? a.count : 0;
      let dups = 0;
      for (const s of state.seen) if (s > perDelivery) dups += s - perDelivery;
      const out = {
        ev: "published",
        requests: state.sent,
        statuses: state.statuses,
        errors: state.errors,
        wall_ms: Math.round(wall / 1000),
        requests_per_s: wall > 0 ? Math.round((ok / wall) * 1e6) : null,
        http_latency: summary(state.httpLat),
        queue_lag: open ? summary(state.lag) : null,
        deliveries_expected: expect,
        deliveries: got,
        duplicates: dups,
        e2e: a ? summary(a.lat.subarray(0, Math.min(a.count, a.lat.length))) : null,
        // open loop: from the time the event was due (schedule) rather than sent
        e2e_from_due: a && open ? summary(a.latDue.subarray(0, Math.min(a.count, a.latDue.length))) : null,
      };
      if (a) {
        clearTimeout(a.timer);
        arm = null;
      }
      for (const c of state.conns) c.sock.destroy();
      pub = null;
      emit(out);
    };
    // wait for the deliveries of the accepted requests, at most drain_ms
    const deadline = nowUs() + (cmd.drain_ms || 5000) * 1000;
    const wait = () => {
      if (!arm || arm.count >= expect || nowUs() > deadline) report();
      else setTimeout(wait, 5);
    };
    wait();
  }
  state.stopAt = nowUs() + duration;
  for (let i = 0; i < (cmd.conns || 16); i++) state.conns.push(new HttpConn(onFree));
  if (open) startOpen();
  else setTimeout(() => maybeFinish(), duration / 1000 + 1);
}

// ------------------------------------------------------------------ command loop

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  switch (cmd.cmd) {
    case "connect":
      connect(cmd);
      break;
    case "arm":
      startArm(cmd);
      break;
    case "publish":
      startPublish(cmd);
      break;
    case "close_conn": {
      const c = conns[cmd.index || 0];
      if (c && c.open) {
        c.sock.write(maskedFrame(0x08, Buffer.from([0x03, 0xe8])));
        c.open = false;
        setTimeout(() => c.sock.destroy(), 200);
      }
      emit({ ev: "closed_conn" });
      break;
    }
    case "stats":
      emit({
        ev: "stats",
        conns: conns.length,
        open: conns.filter((c) => c.open).length,
        frames: framesTotal,
        closed_by_server: closedByServer,
        close_codes: closeCodes,
      });
      break;
    case "exit":
      for (const c of conns) c.sock.destroy();
      process.exit(0);
  }
});
rl.on("close", () => process.exit(0));
emit({ ev: "hello", pid: process.pid });
