"""Bench-only launcher of renum-rt: the real Node plus one route to trigger a burst.

    RENUM_RT_JWT_SECRET=... python bench/launch_renum.py --port 9002 [--root /path/to/renum-rt]

It builds ``renum_rt.app.Node`` exactly as ``server.py`` does (settings from the default
config file and ``RENUM_RT_*``; JSON logs on stderr) and adds ``POST /bench/burst?n=100``,
which answers at once and then publishes ``n`` ``system.announcement`` events to the
``system`` channel, yielding to the event loop between two. Each event carries its send
time (CLOCK_MONOTONIC, µs) in ``data.message`` = ``"bt=<µs>"``.

By default the burst goes through ``renum_rt.publishing.publish`` (what the HTTP publish
route and ``Gateway.publish`` call to store and fan out: engine -> hub -> ``send_frame``,
plus its log line), i.e. the broadcast the peers measure. ``Gateway.publish`` also makes a
``system.announcement`` a global notification: it stores it, fans out a second event
(``notification.created``, which carries the same ``bt=`` text) and recounts every
connected user's unread badge; ``--with-notification`` takes that path instead (the load
generator then counts both frames, so only its CPU figures are meaningful).

Bench-only changes to the settings (through ``with_changes``, no production code
touched): the per-address and per-user connection caps are raised so one load generator
on 127.0.0.1 can hold thousands of connections.

``POST /bench/burst`` also takes ``rate`` (events per second: an open loop whose
``bt=`` stamp is each event's due time, so a late loop counts in the latency; default 0,
back to back), ``bytes`` (padding appended to the message after a space) and
``channel`` (default ``system``; ``user:<id>`` sends a user the stream alone).
``GET /bench/pending?user=<id>`` answers, for each connection the user had when first
asked (kept after the gateway forgets it, until its socket ends), the bytes Tornado
holds unsent (what ``max_write_buffer_bytes`` caps) and the socket's kernel send queue
(``SIOCOUTQ``): the slow consumer's buffers as the server sees them.

``--gc-log`` prints every full garbage collection (duration, objects freed) to stdout.
``--lag-log-ms MS`` runs a 10 ms probe on the event loop and prints
``loop late <ms> ms cpu=<ms> at=<monotonic s>`` each time it ran MS or more late: every
stall, where ``/metrics``' 0.5 s probe sees only the ones that cover its due time; ``cpu``
is the CPU time the process used meanwhile (near 0: it was not running, not busy).
``--root`` imports renum_rt from another source tree (for example a scratch copy with a
candidate optimisation), so two versions can be compared in the same run.
Listens on 127.0.0.1 only. SIGTERM/SIGINT: close every connection (1012) and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import signal
import sys
import termios
import time
from pathlib import Path
from typing import Any

from gclog import log_gen2_collections


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                        help="source tree to import renum_rt from (default: this repository)")
    parser.add_argument("--log-level", default=None, help="override RENUM_RT_LOG_LEVEL / the config file")
    parser.add_argument("--gc-log", action="store_true",
                        help="print every generation-2 garbage collection (duration, objects collected)")
    parser.add_argument("--with-notification", action="store_true",
                        help="burst through Gateway.publish: each announcement is also a global notification")
    parser.add_argument("--lag-log-ms", type=float, default=0,
                        help="print every event-loop stall of at least this many ms (10 ms probe; 0 = off)")
    parser.add_argument("--max-connections", type=int, default=100_000,
                        help="per-address and per-user caps for the bench (default 100000)")
    return parser.parse_args()


async def serve(args: argparse.Namespace) -> None:
    import tornado.ioloop
    import tornado.web

    from renum_rt import channels
    from renum_rt.app import Node
    from renum_rt.config import load, with_changes
    from renum_rt.handlers import socket_write
    from renum_rt.httpserver import HTTPServer, http_server_options
    from renum_rt.logs import setup
    from renum_rt.publishing import publish

    settings = load(None, host="127.0.0.1", port=args.port, log_level=args.log_level)
    settings = with_changes(settings, max_connections_per_address=args.max_connections,
                            max_connections_per_user=args.max_connections)
    setup(settings.log_level)
    node = Node(settings)
    gateway = node.gateway

    async def burst(n: int, rate: float, pad: int, channel: str) -> None:
        start = time.monotonic()
        filler = " " + "x" * pad if pad else ""
        for i in range(n):
            if rate:
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                stamp = int(due * 1e6)
            else:
                stamp = time.monotonic_ns() // 1000
            data = {"title": "b", "message": f"bt={stamp}{filler}", "level": "info"}
            if args.with_notification:
                await gateway.publish([channel], "system.announcement", data, None)
            else:
                await publish(gateway.engine, [channel], "system.announcement", data, None,
                              settings.idempotency_ttl_s)
            if not rate:
                await asyncio.sleep(0)

    class BurstHandler(tornado.web.RequestHandler):
        def post(self) -> None:
            n = int(self.get_query_argument("n", "100"))
            rate = float(self.get_query_argument("rate", "0"))
            pad = int(self.get_query_argument("bytes", "0"))
            channel = self.get_query_argument("channel", channels.SYSTEM)
            self.finish({"started": True, "connections": len(gateway.registry), "n": n})
            tornado.ioloop.IOLoop.current().spawn_callback(burst, n, rate, pad, channel)

    #: user -> its connections and their streams (Tornado drops ws_connection at close())
    watched: dict[str, list[tuple[Any, Any]]] = {}

    class PendingHandler(tornado.web.RequestHandler):
        def get(self) -> None:
            user = self.get_query_argument("user")
            if not watched.get(user):
                watched[user] = [(c, c.ws_connection.stream) for c in gateway.registry.of_user(user)]
            self.finish({"connections": [pending(conn, stream) for conn, stream in watched[user]]})

    def pending(conn: Any, stream: Any) -> dict[str, Any]:
        if stream.closed():
            return {"open": False, "admitted": conn in gateway.registry}
        outq = fcntl.ioctl(stream.socket.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return {"open": True, "admitted": conn in gateway.registry, "closing": conn.is_closed(),
                "tornado": socket_write.pending_bytes(stream), "kernel": int.from_bytes(outq, sys.byteorder)}

    node.app.add_handlers(r".*", [(r"/bench/burst", BurstHandler), (r"/bench/pending", PendingHandler)])
    await node.start()
    if args.lag_log_ms:
        log_stalls(args.lag_log_ms / 1000)
    server = HTTPServer(node.app, **http_server_options(settings))  # as the renum-rt command builds it
    server.listen(settings.port, "127.0.0.1")
    import renum_rt

    print(f"renum-rt (bench launcher, {gateway.engine.name} engine, from {Path(renum_rt.__file__).parent}) "
          f"on 127.0.0.1:{settings.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await node.stop(1012, "server restart")
    await asyncio.sleep(0.1)
    await server.close_all_connections()


def log_stalls(threshold_s: float, every_s: float = 0.01) -> None:
    """Every ``every_s``, note how late the loop ran the probe; print the stalls of at
    least ``threshold_s`` (the bench reads them from the log, across restarts)."""
    loop = asyncio.get_running_loop()
    due = loop.time() + every_s
    cpu = time.process_time()

    def tick() -> None:
        nonlocal due, cpu
        now, cpu_now = loop.time(), time.process_time()
        if now - due >= threshold_s:  # cpu: this process's CPU time since the last tick (~0: not running)
            print(f"loop late {(now - due) * 1000:.1f} ms cpu={(cpu_now - cpu) * 1000:.1f} at={now:.3f}", flush=True)
        due, cpu = now + every_s, cpu_now
        loop.call_at(due, tick)

    loop.call_at(due, tick)


def main() -> None:
    args = parse_args()
    if args.gc_log:
        log_gen2_collections()
    sys.path.insert(0, str(Path(args.root).resolve()))
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
