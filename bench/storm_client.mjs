// Clients of the reconnect storm (bench/reconnect_storm.py): one Node.js process, no npm
// dependencies, thousands of renum-rt connections that behave like the Python SDK after a
// drop: reconnect at once, re-ack the last user-channel id, resume `system` from the last
// id seen (`system_since` in the connect URL), drop ids already seen. Unlike bench/loadgen.mjs, which reads one marker per
// frame, every frame is parsed: each event's id and sequence number are checked.
//
//   node bench/storm_client.mjs --port 8765
//
// Commands (stdin, one JSON object a line)               Answers (stdout)
//   {"cmd":"start","paths_file":"f.json","concurrency":200} {"ev":"ready","ok":N,"ms":..} once all are live
//   {"cmd":"status"}                                        {"ev":"status","live":..,"open":..,...}
//   {"cmd":"report","file":"out.json"}                      {"ev":"report"} (per client: events, sessions)
//   {"cmd":"exit"}
// Events carry data.k (user channel) or data.j (system): the sequence number the bench
// published them with. Per client and channel the process keeps the ids seen (the protocol:
// "drop an event whose id you have already seen"), not just the last one as the Python
// SDK does, and counts ids that come after a newer one (out_of_order: what the SDK would
// drop; none since `system_since`, where a resubscribe after the connect let them happen).
// A `system` resubscribe answered with an error (unavailable) is sent again after up to 0.5 s.
// An id seen on an earlier connection is a re-delivery (allowed: not acked yet); a user-
// channel id twice on one connection a duplicate. Times: CLOCK_MONOTONIC µs, the bench's clock.
// A lost connection is retried on the contract's schedule (renum_rt/client/backoff.py): attempt
// n waits a random time up to min(30 s, 0.5 s * 2^(n-1)), so all come back within 0.5 s of a
// drop; with "fast": true in start, every 100-200 ms instead (a herd that never backs off).

import net from "node:net";
import crypto from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";

const argv = process.argv.slice(2);
const PORT = Number(argv[argv.indexOf("--port") + 1]);
const HOST = "127.0.0.1";
const ACK_EVERY_MS = 1000; // the SDK acknowledges once a second

const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const idKey = (id) => {
  const [ms, seq] = id.split("-");
  return Number(ms) * 1e6 + Number(seq); // bench-only: the server's ids are "<ms>-<seq>"
};

function frame(opcode, text) {
  const payload = Buffer.from(text);
  const n = payload.length;
  const head = n < 126 ? 2 : 4;
  const out = Buffer.allocUnsafe(head + 4 + n);
  out[0] = 0x80 | opcode;
  if (n < 126) out[1] = 0x80 | n;
  else {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(n, 2);
  }
  const mask = crypto.randomBytes(4);
  mask.copy(out, head);
  for (let i = 0; i < n; i++) out[head + 4 + i] = payload[i] ^ mask[i & 3];
  return out;
}

const clients = [];
let readyWaiter = null;
let liveCount = 0;
let fast = false;

class Client {
  constructor(index, path) {
    this.index = index;
    this.path = path;
    this.sock = null;
    this.rest = null;
    this.open = false;
    this.live = false;
    this.seen = { user: new Set(), system: new Set() }; // ids, across connections
    this.last = { user: -1, system: -1 }; // the newest id keys
    this.outOfOrder = { user: 0, system: 0 };
    this.lastUserId = null;
    this.lastSystemId = null;
    this.acked = null;
    this.k = []; // user-channel sequence numbers, in arrival order (re-deliveries dropped)
    this.j = [];
    this.redelivered = 0;
    this.dupSameConn = 0;
    this.errors = {}; // error frames by code
    this.resubscribes = 0; // `subscribe` of system asked again after an error (the SDK does not)
    this.sessions = []; // [lost at, first attempt, welcome at, live at, attempts, close code, replayed]
    this.session = null;
    this.timer = null;
  }

  connect(lostAt, code) {
    this.session = { lost: lostAt, first: 0, last: 0, welcome: 0, live: 0, attempts: 0, code, replayed: 0 };
    if (lostAt === 0) this.attempt(); // the first connection
    else setTimeout(() => this.attempt(), fast ? Math.random() * 50 : Math.random() * 500);
  }

  attempt() {
    const s = this.session;
    s.attempts++;
    s.last = nowUs();
    if (!s.first) s.first = s.last;
    const key = crypto.randomBytes(16).toString("base64");
    const sock = net.connect({ host: HOST, port: PORT });
    this.sock = sock;
    this.rest = null;
    this.open = false;
    this.conn = { user: -1, system: -1, userIds: new Set(), userLeft: -1, systemLeft: -1, closeCode: null };
    sock.setNoDelay(true);
    sock.on("connect", () =>
      sock.write(
        `GET ${this.resumePath()} HTTP/1.1\r\nHost: ${HOST}:${PORT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: renum.v1\r\n\r\n`,
      ),
    );
    sock.on("data", (chunk) => this.onData(chunk));
    sock.on("error", () => {});
    sock.on("close", () => this.onClose(sock));
  }

  onClose(sock) {
    if (sock !== this.sock) return;
    const wasUp = this.session.welcome !== 0;
    if (this.live) liveCount--;
    this.live = false;
    this.open = false;
    clearInterval(this.timer);
    if (wasUp) {
      this.sessions.push(this.session);
      this.connect(nowUs(), this.conn.closeCode ?? 1006);
      return;
    }
    this.retry(); // refused or dropped before welcome: the server is not back yet
  }

  retry() {
    const n = this.session.attempts; // attempts made in this session so far
    const delay = fast ? 100 + Math.random() * 100 : Math.random() * Math.min(30000, 500 * 2 ** n);
    setTimeout(() => this.attempt(), delay);
  }

  onData(chunk) {
    let buf = this.rest === null ? chunk : Buffer.concat([this.rest, chunk]);
    if (!this.open) {
      const i = buf.indexOf("\r\n\r\n");
      if (i < 0) {
        this.rest = buf;
        return;
      }
      if (!buf.subarray(0, 12).toString("latin1").startsWith("HTTP/1.1 101")) {
        this.sock.destroy();
        return;
      }
      this.open = true;
      buf = buf.subarray(i + 4);
    }
    let off = 0;
    while (buf.length - off >= 2) {
      let len = buf[off + 1] & 0x7f;
      let hdr = 2;
      if (len === 126) {
        if (buf.length - off < 4) break;
        len = buf.readUInt16BE(off + 2);
        hdr = 4;
      } else if (len === 127) {
        if (buf.length - off < 10) break;
        len = Number(buf.readBigUInt64BE(off + 2));
        hdr = 10;
      }
      if (buf.length - off < hdr + len) break;
      const op = buf[off] & 0x0f;
      const payload = buf.subarray(off + hdr, off + hdr + len);
      off += hdr + len;
      if (op === 1) this.onFrame(JSON.parse(payload.toString("utf8")));
      else if (op === 9) this.sock.write(frame(0x0a, payload.toString("latin1")));
      else if (op === 8) {
        this.conn.closeCode = len >= 2 ? payload.readUInt16BE(0) : 1005;
        this.sock.end();
      }
    }
    this.rest = off < buf.length ? Buffer.from(buf.subarray(off)) : null;
  }

  // As the SDK: after a drop, where `system` resumes goes in the connect URL, and the server
  // replays it before `system` goes live (docs/protocol.md, system_since).
  resumePath() {
    return this.lastSystemId === null ? this.path : `${this.path}&system_since=${this.lastSystemId}`;
  }

  send(obj) {
    this.sock.write(frame(0x01, JSON.stringify(obj)));
  }

  onFrame(f) {
    const s = this.session;
    const c = this.conn;
    if (f.type === "welcome") {
      s.welcome = nowUs();
      s.replayed = f.replayed || 0;
      c.userLeft = s.replayed;
      this.user = `user:${f.user_id}`;
      if (this.lastUserId !== null) {
        this.acked = this.lastUserId; // as the SDK: an ack sent just before the drop may be lost
        this.send({ type: "ack", channel: this.user, id: this.acked });
      }
      if (this.lastSystemId !== null) {
        this.since = this.lastSystemId; // the connect URL carried it: a `subscribed` for system follows
        c.systemLeft = -1;
      } else c.systemLeft = 0;
      this.timer = setInterval(() => this.ack(), ACK_EVERY_MS + Math.random() * 200);
      this.checkLive();
    } else if (f.type === "subscribed" && f.channel === "system") {
      c.systemLeft = f.replayed || 0;
      this.checkLive();
    } else if (f.type === "event") {
      const ch = f.channel === "system" ? "system" : "user";
      const key = idKey(f.id);
      if (ch === "user") {
        if (c.userIds.has(f.id)) this.dupSameConn++;
        c.userIds.add(f.id);
        if (c.userLeft > 0) c.userLeft--;
      } else if (c.systemLeft > 0) c.systemLeft--;
      if (this.seen[ch].has(f.id)) this.redelivered++;
      else {
        this.seen[ch].add(f.id);
        if (key < c[ch]) this.outOfOrder[ch]++;
        if (ch === "user" && f.data && f.data.k !== undefined) this.k.push(f.data.k);
        if (ch === "system" && f.data && f.data.j !== undefined) this.j.push(f.data.j);
      }
      if (key > c[ch]) c[ch] = key;
      if (key > this.last[ch]) {
        this.last[ch] = key;
        if (ch === "user") this.lastUserId = f.id;
        else this.lastSystemId = f.id;
      }
      this.checkLive();
    } else if (f.type === "error") {
      this.errors[f.code] = (this.errors[f.code] || 0) + 1;
      if (f.ref === "sys") this.resubscribe(); // refused (unavailable): ask again, or `system` has a gap
    }
  }

  resubscribe() {
    const sock = this.sock;
    this.resubscribes++;
    setTimeout(() => {
      if (sock === this.sock && this.open) this.send({ type: "subscribe", channel: "system", since: this.since, ref: "sys" });
    }, Math.random() * 500);
  }

  checkLive() {
    const c = this.conn;
    if (this.live || this.session.welcome === 0 || c.userLeft !== 0 || c.systemLeft !== 0) return;
    this.live = true;
    liveCount++;
    this.session.live = nowUs();
    if (readyWaiter !== null) readyWaiter();
  }

  ack() {
    if (this.lastUserId !== null && this.lastUserId !== this.acked && this.live) {
      this.acked = this.lastUserId;
      this.send({ type: "ack", channel: this.user, id: this.acked });
    }
  }
}

function start(cmd) {
  const paths = JSON.parse(fs.readFileSync(cmd.paths_file, "utf8"));
  const t0 = nowUs();
  let next = 0;
  const concurrency = cmd.concurrency || 200;
  fast = !!cmd.fast;
  readyWaiter = () => {
    while (next < paths.length && next - liveCount < concurrency) {
      const c = new Client(next, paths[next++]);
      clients.push(c);
      c.connect(0, null);
    }
    if (next === paths.length && liveCount === clients.length) {
      readyWaiter = null;
      emit({ ev: "ready", ok: clients.length, ms: Math.round((nowUs() - t0) / 1000) });
    }
  };
  readyWaiter();
}

function status() {
  const closes = {};
  let open = 0;
  let k = 0;
  let j = 0;
  for (const c of clients) {
    if (c.open) open++;
    k += c.k.length;
    j += c.j.length;
    for (const s of c.sessions) closes[s.code] = (closes[s.code] || 0) + 1;
  }
  emit({ ev: "status", now_us: nowUs(), clients: clients.length, live: liveCount, open, closes, k_total: k, j_total: j });
}

function report(cmd) {
  const out = clients.map((c) => ({
    k: c.k,
    j: c.j,
    redelivered: c.redelivered,
    dup_same_conn: c.dupSameConn,
    out_of_order: c.outOfOrder,
    errors: c.errors,
    resubscribes: c.resubscribes,
    // [lost, first attempt, welcome, live, attempts, close code, replayed, last attempt]; the current one last
    sessions: [...c.sessions, c.session].map((s) => [
      s.lost, s.first, s.welcome, s.live, s.attempts, s.code, s.replayed, s.last,
    ]),
  }));
  fs.writeFileSync(cmd.file, JSON.stringify(out));
  emit({ ev: "report", clients: out.length });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.cmd === "start") start(cmd);
  else if (cmd.cmd === "status") status();
  else if (cmd.cmd === "report") report(cmd);
  else if (cmd.cmd === "exit") {
    for (const c of clients) c.sock.destroy();
    process.exit(0);
  }
});
rl.on("close", () => process.exit(0));
emit({ ev: "hello", pid: process.pid });
