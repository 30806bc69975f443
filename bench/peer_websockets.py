"""Peer server for bench/fanout.py: ``websockets`` (asyncio API) with ``broadcast()``.

    bench/results/peers/venv/bin/python bench/peer_websockets.py --port 9003

Runs in the bench's own venv (bench/results/peers/venv, made by ``common.peers_env()``),
never in the package's environment. ``GET /ws`` is the WebSocket; ``GET /healthz`` answers
200; ``GET /bench/burst?n=100`` (websockets' server takes only GET requests) answers at once,
then sends ``n`` events to every connection with ``websockets.broadcast()``, yielding to the
event loop (``await asyncio.sleep(0)``) between two. Each event is the same 175-byte frame
as bench/baseline_tornado.py, with the send time (CLOCK_MONOTONIC, µs) after ``bt=``.
Listens on 127.0.0.1 only; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve

TEMPLATE = ('{"type":"event","v":1,"channel":"system","id":"%d-%d","ts":%d,"event":"system.announcement",'
            '"data":{"title":"b","message":"bt=%d","level":"info"}}')
TASKS: set[asyncio.Task[None]] = set()


def message(seq: int) -> str:
    ms = int(time.time() * 1000)
    return TEMPLATE % (ms, seq, ms, time.monotonic_ns() // 1000)


async def handler(ws: ServerConnection) -> None:
    async for _ in ws:  # the load generator sends nothing but pongs and a close
        pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9003)
    args = parser.parse_args()
    servers: list[Any] = []  # the running server, for its set of connections

    async def burst(n: int) -> None:
        for seq in range(n):
            broadcast(servers[0].connections, message(seq))
            await asyncio.sleep(0)

    def process_request(conn: ServerConnection, request: Any) -> Any:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            return conn.respond(HTTPStatus.OK, "ok\n")
        if url.path == "/bench/burst":
            n = int(parse_qs(url.query).get("n", ["100"])[0])
            task = asyncio.get_running_loop().create_task(burst(n))
            TASKS.add(task)
            task.add_done_callback(TASKS.discard)
            return conn.respond(HTTPStatus.OK, f'{{"started":true,"n":{n}}}\n')
        return None

    async with serve(handler, "127.0.0.1", args.port, process_request=process_request, compression=None) as server:
        servers.append(server)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"websockets {websockets.__version__} broadcast() on 127.0.0.1:{args.port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
