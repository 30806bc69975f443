// What the Node peer servers of bench/fanout.py share: their flags, where their npm
// packages come from, the send-time stamp, and the control HTTP server (GET /healthz,
// POST /bench/burst?n=100) that the bench drives every server with.

import http from "node:http";
import path from "node:path";
import { createRequire } from "node:module";

const argv = process.argv.slice(2);
export const arg = (name, dflt) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : dflt);

/** `require` of the bench's own npm folder (--peers-dir, made by common.peers_env()). */
export const peersRequire = () =>
  createRequire(path.join(path.resolve(arg("--peers-dir", "bench/results/peers")), "package.json"));

/** CLOCK_MONOTONIC in µs, the clock the load generator reads too. */
export const nowUs = () => Number(process.hrtime.bigint() / 1000n);

/** Yield to the event loop between two broadcasts, as every server of the bench does. */
export const tick = () => new Promise((resolve) => setImmediate(resolve));

/**
 * The control server: /healthz answers 200; /bench/burst answers at once, then calls
 * `burst(n)`. `stop` closes the peer's sockets on SIGTERM/SIGINT before the server exits.
 */
export function controlServer(burst, stop) {
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
  const shutdown = () => {
    stop();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
  return server;
}
