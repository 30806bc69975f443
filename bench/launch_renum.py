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

``--gc-log`` prints every full garbage collection (duration, objects freed) to stdout.
``--root`` imports renum_rt from another source tree (for example a scratch copy with a
candidate optimisation), so two versions can be compared in the same run.
Listens on 127.0.0.1 only. SIGTERM/SIGINT: close every connection (1012) and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

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
    parser.add_argument("--max-connections", type=int, default=100_000,
                        help="per-address and per-user caps for the bench (default 100000)")
    return parser.parse_args()


async def serve(args: argparse.Namespace) -> None:
    import tornado.ioloop
    import tornado.web

    from renum_rt import channels
    from renum_rt.app import Node
    from renum_rt.config import load, with_changes
    from renum_rt.httpserver import HTTPServer, http_server_options
    from renum_rt.logs import setup
    from renum_rt.publishing import publish

    settings = load(None, host="127.0.0.1", port=args.port, log_level=args.log_level)
    settings = with_changes(settings, max_connections_per_address=args.max_connections,
                            max_connections_per_user=args.max_connections)
    setup(settings.log_level)
    node = Node(settings)
    gateway = node.gateway

    async def burst(n: int) -> None:
        for _ in range(n):
            data = {"title": "b", "message": f"bt={time.monotonic_ns() // 1000}", "level": "info"}
            if args.with_notification:
                await gateway.publish([channels.SYSTEM], "system.announcement", data, None)
            else:
                await publish(gateway.engine, [channels.SYSTEM], "system.announcement", data, None,
                              settings.idempotency_ttl_s)
            await asyncio.sleep(0)

    class BurstHandler(tornado.web.RequestHandler):
        def post(self) -> None:
            n = int(self.get_query_argument("n", "100"))
            self.finish({"started": True, "connections": len(gateway.registry), "n": n})
            tornado.ioloop.IOLoop.current().spawn_callback(burst, n)

    node.app.add_handlers(r".*", [(r"/bench/burst", BurstHandler)])
    await node.start()
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


def main() -> None:
    args = parse_args()
    if args.gc_log:
        log_gen2_collections()
    sys.path.insert(0, str(Path(args.root).resolve()))
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
