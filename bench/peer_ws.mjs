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

import { arg, controlServer, nowUs, peersRequire, tick } from "./peer_common.mjs";

const PORT = Number(arg("--port", "9005"));
const require = peersRequire();
const { WebSocketServer } = require("ws");
const WS_VERSION = require("ws/package.json").version;

function message(seq) {
  const ms = Date.now();
  return (
    `{"type":"event","v":1,"channel":"system","id":"${ms}-${seq}","ts":${ms},"event":"system.announcement",` +
    `"data":{"title":"b","message":"bt=${nowUs()}","level":"info"}}`
  );
}

let wss;
async function burst(n) {
  for (let seq = 0; seq < n; seq++) {
    const msg = message(seq);
    for (const client of wss.clients) if (client.readyState === 1) client.send(msg);
    await tick();
  }
}

const server = controlServer(burst, () => {
  for (const c of wss.clients) c.terminate();
});
wss = new WebSocketServer({ server, path: "/ws", perMessageDeflate: false });
server.listen(PORT, "127.0.0.1", () => console.log(`node ws ${WS_VERSION} on 127.0.0.1:${PORT}`));
