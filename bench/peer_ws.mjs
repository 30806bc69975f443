// Peer server for bench/fanout.py: Node `ws`, broadcast with a loop of send().
//
//   node bench/peer_ws.mjs --port 9005 --peers-dir bench/results/peers
//
// `ws` comes from the bench's own npm folder (--peers-dir, made by common.peers_env()).
// GET /ws is the WebSocket; GET /healthz answers 200; POST /bench/burst?n=100 answers at
// once, then sends n events to every client (client.send in a loop), yielding to the event
// loop (setImmediate) between two. Each event is the same 175-byte frame as
// bench/baseline_tornado.py, with the send time (CLOCK_MONOTONIC, µs) after "bt=".
// Listens on 127.0.0.1 only; SIGTERM/SIGINT stop it.

import http from "node:http";
import path from "node:path";
import { createRequire } from "node:module";

const argv = process.argv.slice(2);
const arg = (name, dflt) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : dflt);
const PORT = Number(arg("--port", "9005"));
const require = createRequire(path.join(path.resolve(arg("--peers-dir", "bench/results/peers")), "package.json"));
const { WebSocketServer } = require("ws");
const WS_VERSION = require("ws/package.json").version;

const nowUs = () => Number(process.hrtime.bigint() / 1000n);
function message(seq) {
  const ms = Date.now();
  return (
    `{"type":"event","v":1,"channel":"system","id":"${ms}-${seq}","ts":${ms},"event":"system.announcement",` +
    `"data":{"title":"b","message":"bt=${nowUs()}","level":"info"}}`
  );
}
const tick = () => new Promise((resolve) => setImmediate(resolve));

let wss;
async function burst(n) {
  for (let seq = 0; seq < n; seq++) {
    const msg = message(seq);
    for (const client of wss.clients) if (client.readyState === 1) client.send(msg);
    await tick();
  }
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  if (url.pathname === "/healthz") {
    res.writeHead(200, { "Content-Type": "application/json" }).end('{"ok":true}');
  } else if (url.pathname === "/bench/burst" && req.method === "POST") {
    const n = Number(url.searchParams.get("n") || "100");
    res.writeHead(200, { "Content-Type": "application/json" }).end(`{"started":true,"n":${n}}`);
    req.resume();
    setImmediate(() => burst(n));
  } else {
    res.writeHead(404).end();
  }
});
wss = new WebSocketServer({ server, path: "/ws", perMessageDeflate: false });
server.listen(PORT, "127.0.0.1", () => console.log(`node ws ${WS_VERSION} on 127.0.0.1:${PORT}`));
const stop = () => {
  for (const c of wss.clients) c.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
