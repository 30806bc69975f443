// Peer server for bench/fanout.py: Node socket.io 4, broadcast with io.emit().
//
//   node bench/peer_socketio.mjs --port 9006 --peers-dir bench/results/peers
//
// socket.io comes from the bench's own npm folder (--peers-dir, made by common.peers_env()).
// Socket.IO (Engine.IO v4) on /socket.io/, WebSocket transport only; the load generator
// connects with ?EIO=4&transport=websocket, joins the default namespace ("40") and
// answers pings. GET /healthz answers 200; POST /bench/burst?n=100 answers at once, then
// emits n "event" messages to every client (io.emit), yielding to the event loop
// (setImmediate) between two. The event data is the renum-rt event object of
// bench/baseline_tornado.py, with the send time (CLOCK_MONOTONIC, µs) after "bt=".
// Listens on 127.0.0.1 only; SIGTERM/SIGINT stop it.

import { arg, controlServer, nowUs, peersRequire, tick } from "./peer_common.mjs";

const PORT = Number(arg("--port", "9006"));
const require = peersRequire();
const { Server } = require("socket.io");
const SIO_VERSION = require("socket.io/package.json").version;

function event(seq) {
  const ms = Date.now();
  return {
    type: "event", v: 1, channel: "system", id: `${ms}-${seq}`, ts: ms, event: "system.announcement",
    data: { title: "b", message: `bt=${nowUs()}`, level: "info" },
  };
}

let io;
async function burst(n) {
  for (let seq = 0; seq < n; seq++) {
    io.emit("event", event(seq));
    await tick();
  }
}

const server = controlServer(burst, () => io.close());
io = new Server(server, { transports: ["websocket"], serveClient: false, perMessageDeflate: false });
server.listen(PORT, "127.0.0.1", () => console.log(`node socket.io ${SIO_VERSION} on 127.0.0.1:${PORT}`));
