"""A small WebSocket test client: send dicts, await frames with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import tornado.httpclient
import tornado.websocket
import ujson

from .schemas import assert_server_frame


class Client:
    """Every frame received is checked against the protocol's JSON Schema.

    ``unread_count`` frames (sent on connect and on every change of the user's inbox)
    are kept apart, in ``unread``, so that a test about something else reads the frames
    it is about; ``wait_unread`` awaits a given count.
    """

    def __init__(self, conn: tornado.websocket.WebSocketClientConnection) -> None:
        self.conn = conn
        self.unread: list[int] = []
        self._held: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.conn.write_message(frame if isinstance(frame, str) else ujson.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next frame but ``unread_count``, or None once the server closed the connection."""
        if self._held:
            return self._held.pop(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv_any(max(0.01, deadline - loop.time()))
            if frame is None or frame["type"] != "unread_count":
                return frame
            self.unread.append(frame["count"])

    async def recv_any(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next frame, whatever its type."""
        text = await asyncio.wait_for(self.conn.read_message(), timeout)
        if text is None:
            return None
        frame: dict[str, Any] = ujson.loads(text)
        assert_server_frame(frame)
        return frame

    async def wait_unread(self, count: int, timeout: float = 5.0) -> None:
        """Return once the latest ``unread_count`` received is ``count``; other frames
        read meanwhile are kept for ``recv``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.unread and self.unread[-1] == count):
            frame = await self.recv_any(max(0.01, deadline - loop.time()))
            assert frame is not None, f"closed ({self.close_code}) while waiting for unread_count {count}"
            if frame["type"] == "unread_count":
                self.unread.append(frame["count"])
            else:
                self._held.append(frame)

    async def recv_until(self, wanted: Callable[[dict[str, Any]], bool], what: str,
                         timeout: float = 5.0) -> dict[str, Any]:
        """Skip frames until one for which ``wanted`` holds arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            assert frame is not None, f"closed ({self.close_code}) while waiting for {what}"
            if wanted(frame):
                return frame

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """Skip frames until one of type ``kind`` arrives."""
        return await self.recv_until(lambda f: f["type"] == kind, repr(kind), timeout)

    async def request(self, frame: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send a frame with a ref and return the reply or error carrying that ref."""
        ref = frame.setdefault("ref", f"r{id(frame)}")
        await self.send(frame)
        return await self.recv_until(lambda f: f.get("ref") == ref, f"ref {ref}", timeout)

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; return the close code."""
        while await self.recv(timeout) is not None:
            pass
        return self.close_code

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    @property
    def close_reason(self) -> str | None:
        return self.conn.close_reason

    def close(self) -> None:
        self.conn.close()


async def connect(url: str, token: str | None = None, *, subprotocols: list[str] | None = None,
                  headers: dict[str, str] | None = None, welcome: bool = True) -> Client:
    """Open ``url`` (``ws://.../ws``); with ``welcome`` wait for and check the welcome."""
    if token is not None:
        url = f"{url}{'&' if '?' in url else '?'}token={token}"
    request = tornado.httpclient.HTTPRequest(url, headers=headers or {})
    conn = await tornado.websocket.websocket_connect(request, subprotocols=subprotocols)
    client = Client(conn)
    if welcome:
        first = await client.recv()
        assert first is not None and first["type"] == "welcome", first
    return client
