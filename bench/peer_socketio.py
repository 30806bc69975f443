"""Peer server for bench/fanout.py: python-socketio on aiohttp, broadcast with ``emit``.

    bench/results/peers/venv/bin/python bench/peer_socketio.py --port 9004

Runs in the bench's own venv (bench/results/peers/venv). Socket.IO (Engine.IO v4) on
``/socket.io/``, WebSocket transport; the load generator connects with
``?EIO=4&transport=websocket``, joins the default namespace ("40") and answers pings.
``GET /healthz`` answers 200; ``POST /bench/burst?n=100`` answers at once, then emits ``n``
``event`` messages to every client (``await sio.emit(...)``), yielding to the event loop
between two. The event data is the renum-rt event object of bench/baseline_tornado.py,
with the send time (CLOCK_MONOTONIC, µs) after ``bt=``.
Listens on 127.0.0.1 only; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from importlib.metadata import version

import socketio
from aiohttp import web

TASKS: set[asyncio.Task[None]] = set()


def event(seq: int) -> dict[str, object]:
    ms = int(time.time() * 1000)
    return {"type": "event", "v": 1, "channel": "system", "id": f"{ms}-{seq}", "ts": ms,
            "event": "system.announcement",
            "data": {"title": "b", "message": f"bt={time.monotonic_ns() // 1000}", "level": "info"}}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9004)
    args = parser.parse_args()
    sio = socketio.AsyncServer(async_mode="aiohttp", transports=["websocket"], cors_allowed_origins="*")
    app = web.Application()
    sio.attach(app)

    async def burst(n: int) -> None:
        for seq in range(n):
            await sio.emit("event", event(seq))
            await asyncio.sleep(0)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def start_burst(request: web.Request) -> web.Response:
        n = int(request.query.get("n", "100"))
        task = asyncio.get_running_loop().create_task(burst(n))
        TASKS.add(task)
        task.add_done_callback(TASKS.discard)
        return web.json_response({"started": True, "n": n})

    app.router.add_get("/healthz", healthz)
    app.router.add_post("/bench/burst", start_burst)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"python-socketio {version('python-socketio')} + aiohttp {version('aiohttp')} on 127.0.0.1:{args.port}",
          flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
