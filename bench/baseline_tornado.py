"""Bare Tornado 6 WebSocket broadcast server: the same-run baseline of bench/fanout.py.

    python bench/baseline_tornado.py --port 9001 [--mode write_message|preframed]

``GET /ws[?user=<id>]`` accepts any WebSocket client and keeps it in a set (and under its
user id); ``POST /bench/burst?n=100``
answers at once, then broadcasts ``n`` events to every connection, yielding to the event
loop (``await asyncio.sleep(0)``) between two broadcasts. Each event is the same bytes
renum-rt would send for a ``system.announcement`` (175 bytes of JSON), with the send
time (CLOCK_MONOTONIC, µs) in ``"message":"bt=<µs>"`` for the load generator.

Modes (the peers' rows):
- ``write_message`` (default): a loop of ``WebSocketHandler.write_message(text)``, which
  frames the message for each connection and wraps each write in a task;
- ``preframed``: the frame is built once and the same bytes go to each connection's
  ``IOStream.write``.

``POST /api/v1/publish`` is the bare-Tornado reference of bench/publish.py: it checks the
bearer key (``--api-key``), parses the JSON body, and writes one event frame (the same
shape renum-rt sends) with ``write_message`` to the connection of each user named in
``users``, then answers ``{"ids": {...}}``: what Tornado's HTTP and WebSocket stacks cost
without storage, validation, logging or limits.

Listens on 127.0.0.1 only. ``GET /healthz`` answers 200. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import tornado.httpserver
import tornado.ioloop
import tornado.iostream
import tornado.web
import tornado.websocket
from gclog import log_gen2_collections

from renum_rt.protocol.wsframe import text_frame

#: byte for byte the event frame renum-rt builds for the same announcement
TEMPLATE = ('{"type":"event","v":1,"channel":"system","id":"%d-%d","ts":%d,"event":"system.announcement",'
            '"data":{"title":"b","message":"bt=%d","level":"info"}}')

CONNS: set[WsHandler] = set()
USERS: dict[str, WsHandler] = {}
SEQ = [0]


class WsHandler(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def open(self) -> None:
        CONNS.add(self)
        self.user = self.get_query_argument("user", None)
        if self.user is not None:
            USERS[self.user] = self

    def on_message(self, message: str | bytes) -> None:
        pass

    def on_close(self) -> None:
        CONNS.discard(self)
        if self.user is not None and USERS.get(self.user) is self:
            del USERS[self.user]


def message(seq: int) -> str:
    ms = int(time.time() * 1000)
    return TEMPLATE % (ms, seq, ms, time.monotonic_ns() // 1000)


async def burst_write_message(n: int) -> None:
    for seq in range(n):
        msg = message(seq)
        for conn in CONNS:
            try:
                conn.write_message(msg)
            except tornado.websocket.WebSocketClosedError:
                pass
        await asyncio.sleep(0)


async def burst_preframed(n: int) -> None:
    for seq in range(n):
        frame = text_frame(message(seq).encode())
        for conn in CONNS:
            ws = conn.ws_connection
            if ws is None or ws.is_closing():
                continue
            try:
                ws.stream.write(frame)  # type: ignore[union-attr]
            except tornado.iostream.StreamClosedError:
                pass
        await asyncio.sleep(0)


class BurstHandler(tornado.web.RequestHandler):
    def initialize(self, mode: str) -> None:
        self.mode = mode

    def post(self) -> None:
        n = int(self.get_query_argument("n", "100"))
        self.finish({"started": True, "connections": len(CONNS), "n": n})
        run = burst_preframed if self.mode == "preframed" else burst_write_message
        tornado.ioloop.IOLoop.current().spawn_callback(run, n)


class PublishHandler(tornado.web.RequestHandler):
    def initialize(self, api_key: str) -> None:
        self.api_key = api_key

    def post(self) -> None:
        if self.request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.set_status(401)
            self.finish({"error": {"code": "unauthorized"}})
            return
        body = json.loads(self.request.body)
        ms = int(time.time() * 1000)
        data = json.dumps(body["data"], separators=(",", ":"))
        tail = '","ts":%d,"event":%s,"data":%s}' % (ms, json.dumps(body["event"]), data)  # noqa: UP031 (as renum-rt)
        ids = {}
        for user in body.get("users", ()):
            SEQ[0] += 1
            event_id = f"{ms}-{SEQ[0]}"
            channel = f"user:{user}"
            ids[channel] = event_id
            conn = USERS.get(user)
            if conn is not None:
                conn.write_message(f'{{"type":"event","v":1,"channel":{json.dumps(channel)},"id":"{event_id}{tail}')
        self.finish({"ids": ids})


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish({"ok": True, "connections": len(CONNS)})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--mode", choices=["write_message", "preframed"], default="write_message")
    parser.add_argument("--api-key", default="bench", help="bearer key of POST /api/v1/publish (default bench)")
    parser.add_argument("--gc-log", action="store_true",
                        help="print every generation-2 garbage collection (duration, objects collected)")
    args = parser.parse_args()
    if args.gc_log:
        log_gen2_collections()
    app = tornado.web.Application([
        (r"/ws", WsHandler),
        (r"/healthz", HealthHandler),
        (r"/bench/burst", BurstHandler, {"mode": args.mode}),
        (r"/api/v1/publish", PublishHandler, {"api_key": args.api_key}),
    ])
    server = tornado.httpserver.HTTPServer(app)
    server.listen(args.port, "127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"baseline tornado {tornado.version} ({args.mode}) on 127.0.0.1:{args.port}", flush=True)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
