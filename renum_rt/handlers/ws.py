"""``GET /ws``: the WebSocket adapter around ``Session`` and ``Gateway``.

Before the upgrade it refuses, with an HTTP status and a JSON body, what must never
become a connection: a foreign ``Origin``, a protocol version the server does not
speak, a bad token or ``system_since`` on the URL. After it, every message goes through
the session (size, rate, validation) and then the gateway; every failure is an ``error`` frame, and only
the close codes of the contract end a connection. Writes bypass ``write_message``:
frames are built once and queued on the stream, and a client that lets more than
``max_write_buffer_bytes`` pile up is closed as a slow consumer instead of growing the
server's memory. When nothing is queued for a connection (the usual case), the bytes go
straight to the socket: no Future, callback or write loop per connection, which about
halves the CPU cost of a broadcast (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import tornado.ioloop
import tornado.websocket
import ujson

from ..auth import AuthError
from ..channels import Identity
from ..gateway import RECONNECT_AFTER_MS, Gateway, Refused
from ..ids import is_valid_id
from ..logs import TRACING, log, log_frame, redact_frame
from ..protocol import SUBPROTOCOLS, ProtocolError, encode
from ..protocol.errors import CLOSE_POLICY, CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED
from ..protocol.wsframe import text_frame
from ..session import Session
from . import socket_write


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    gateway: Gateway
    session: Session

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._identity: Identity | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pinger: asyncio.TimerHandle | None = None
        #: a ping went out and no pong came back yet
        self._pong_due = False
        self._counted_address: str | None = None
        #: log this connection's frames (``logs.TRACING`` decides), as of TRACING.version ``_traced``
        self._debug = False
        self._traced = -1

    # ---------------------------------------------------------------- before the upgrade

    def _refuse(self, status: int, code: str, message: str, **extra: Any) -> None:
        log(logging.INFO, "refused", status=status, code=code, reason=message, ip=self.request.remote_ip)
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(ujson.dumps({"error": {"code": code, "message": message, **extra}}))

    async def prepare(self) -> None:
        """What must be refused before the upgrade. Here rather than in an override of
        ``get``: Tornado's ``get`` runs for the connection's whole life, and an override
        awaiting it would keep its own frame (with the token's text) alive as long, about
        0.8 KB per connection (docs/benchmarks.md, section 1)."""
        if self.request.method != "GET":
            return  # Tornado answers 405
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.gateway.settings.origin_allowed(origin, self.request.host):
            # the browser shows only a failed connection: the server's log says what to change
            log(logging.WARNING, "origin refused", origin=origin[:200], ip=self.request.remote_ip,
                fix="add it to RENUM_RT_ALLOWED_ORIGINS (comma-separated), or set RENUM_RT_PUBLIC_ORIGIN")
            return self._refuse(403, "forbidden", f"origin {origin[:200]!r} not allowed: add it to "
                                "RENUM_RT_ALLOWED_ORIGINS on the server")
        offered = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        versions = [p for p in offered if p.startswith("renum.")]
        if versions and not any(p in SUBPROTOCOLS for p in versions):
            return self._refuse(400, "unsupported_version", f"this server speaks {', '.join(SUBPROTOCOLS)}",
                                supported=list(SUBPROTOCOLS))
        system_since = self.get_query_argument("system_since", None)
        if system_since is not None and not is_valid_id(system_since):
            return self._refuse(400, "bad_request", "system_since must be an event id such as \"1700000000000-0\"",
                                field="system_since")
        token = self.get_query_argument("token", None)
        if token is not None:
            try:
                self._identity = await self.gateway.access.identity(token)
            except AuthError as exc:
                return self._refuse(401, "unauthorized", str(exc))

    def check_origin(self, origin: str) -> bool:
        return True  # checked in prepare(), with a JSON answer

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        for proto in subprotocols:
            if proto in SUBPROTOCOLS:
                return proto
        return None

    # ---------------------------------------------------------------- connection

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)  # small frames must not wait for Nagle + delayed ACK (~40 ms)
        self._ping_later()
        self.session = Session(uuid.uuid4().hex, self.request.remote_ip or "?", self.gateway.settings, time.time(),
                               self.request.headers.get("Origin"))
        self.session.system_since = self.get_query_argument("system_since", None)  # checked in prepare()
        self._forget_query()
        if not self.gateway.socket_opened(self.session.address):
            self._fail(ProtocolError("rate_limited", "too many connections from this address",
                                     retry_after_ms=RECONNECT_AFTER_MS, close=CLOSE_TOO_MANY))
            return
        self._counted_address = self.session.address
        if self._identity is not None:
            await self._admit(self._identity)
        else:
            self._schedule(self.gateway.settings.auth_timeout_s, self._auth_deadline)

    def _forget_query(self) -> None:
        """Tornado keeps the upgrade request for the connection's whole life, and its URL
        carries the token (in ``uri``, ``query`` and the parsed arguments: about 0.9
        KB). Nothing reads them once the connection is open, so they are dropped: less
        memory per idle connection (docs/benchmarks.md, section 1), and no token left in
        the heap or in Tornado's error lines, which print ``request.uri``."""
        request = self.request
        request.uri = request.path
        request.query = ""
        request.query_arguments = {}
        request.arguments = {}

    def _schedule(self, delay: float, callback: Callable[[], None]) -> None:
        """This connection's one timer (auth deadline, then token expiry), straight on the
        asyncio loop: Tornado's ``call_later`` wraps each callback in two partials, about
        200 bytes per idle connection (docs/benchmarks.md, section 1)."""
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def ping_interval(self) -> float | None:
        """None, so that Tornado starts no ping task for this connection: ``_heartbeat``
        pings instead."""
        return None

    def _heartbeat(self) -> None:
        """Every ``heartbeat_ms``: close the connection if the last ping got no pong
        (1000, "ping timed out"), else ping again; what Tornado's
        ``websocket_ping_interval`` does with an equal ping timeout, on one plain timer
        instead of an asyncio Task, its coroutine and a sleep Future per connection
        (about 1.1 KB per idle connection, docs/benchmarks.md section 1)."""
        self._pinger = None
        if self.is_closed():
            return
        if self._pong_due:
            self.close(None, "ping timed out")
            return
        self._pong_due = True
        self.ping()
        self._ping_later()

    def _ping_later(self) -> None:
        self._pinger = asyncio.get_running_loop().call_later(self.gateway.settings.heartbeat_ms / 1000,
                                                             self._heartbeat)

    def on_pong(self, data: bytes) -> None:
        self._pong_due = False

    def _auth_deadline(self) -> None:
        if self.session.identity is None:
            self._fail(ProtocolError("unauthorized", "no 'auth' frame within the deadline", close=CLOSE_UNAUTHORIZED))

    def _token_deadline(self) -> None:
        if self.session.token_expired(time.time()):
            self._fail(ProtocolError("unauthorized", "token expired; reconnect with a fresh token",
                                     close=CLOSE_UNAUTHORIZED))
        else:
            self._watch_expiry()

    def _watch_expiry(self) -> None:
        seconds = self.gateway.access.expires_in(self.session, time.time())
        if seconds is not None:
            self._schedule(seconds + 0.01, self._token_deadline)

    async def _admit(self, identity: Identity) -> None:
        self.session.authenticate(identity)
        self._traced = -1  # a followed user's frames are traced from now on
        try:
            await self.gateway.open(self)
        except Refused as refused:
            self.send(refused.error.frame())
            self.close(refused.code, refused.error.message)
            return
        self._watch_expiry()

    async def on_message(self, message: str | bytes) -> None:
        if self._traced != TRACING.version:
            self._retrace()
        if self._debug:
            log_frame("in", self.session.id, self.session.user_id, len(message),
                      redact_frame(message) if isinstance(message, str) else "<binary>")
        metrics = self.gateway.metrics
        metrics.messages_in += 1
        try:
            frame = self.session.receive(message, time.time())
            metrics.frames_in[frame.type] = metrics.frames_in.get(frame.type, 0) + 1
            if frame.type == "auth":
                identity = await self.gateway.access.login(frame.fields["token"], frame.ref)
                self._cancel_timer()
                self.session.system_since = frame.get("system_since", self.session.system_since)
                await self._admit(identity)
            else:
                await self.gateway.handle(self, frame)
                if frame.type == "refresh":
                    self._watch_expiry()
        except ProtocolError as error:
            if error.code == "rate_limited":
                self.gateway.metrics.rate_limited += 1
            self._fail(error)
        except Exception:
            metrics.internal_errors += 1
            log(logging.ERROR, "internal error", conn=self.session.id, user=self.session.user_id, exc_info=True)
            self.send(ProtocolError("internal", "internal error").frame())

    def _fail(self, error: ProtocolError) -> None:
        if error.code != "rate_limited" or error.close:
            log(logging.INFO, "client error", conn=self.session.id, user=self.session.user_id, code=error.code,
                reason=error.message)
        self.send(error.frame())
        if error.close is not None:
            self.close(error.close, error.message)

    def _retrace(self) -> None:
        self._traced = TRACING.version
        self._debug = TRACING.traces(self.session.user_id)

    def on_close(self) -> None:
        closes = self.gateway.metrics.closes
        closes[self.close_code] = closes.get(self.close_code, 0) + 1
        self._cancel_timer()
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        if self._counted_address is not None:
            self.gateway.socket_closed(self._counted_address)
            self._counted_address = None
        session = getattr(self, "session", None)
        if session is not None and session.identity is not None:
            self.gateway.closed(self, self.close_code, self.close_reason)

    def is_closed(self) -> bool:
        return self.ws_connection is None or self.ws_connection.is_closing()

    # ---------------------------------------------------------------- writing

    def send(self, frame: dict[str, Any]) -> None:
        """Encode and queue one frame for this connection only."""
        sent = self.gateway.metrics.sent
        sent[frame["type"]] = sent.get(frame["type"], 0) + 1
        self.send_frame(text_frame(encode(frame).encode()))

    def send_frame(self, frame: bytes) -> None:
        """Queue a pre-built frame. A connection whose unsent bytes would pass the limit
        with this frame is a slow consumer: it gets no more events, only a close frame
        (1008) queued behind what it already has, so its buffer never holds more than the
        limit (plus that close frame) and a client that reads again reads whole frames and
        then the reason; Tornado drops the socket if the close is not answered within 5 s.
        Never raises."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return
        stream = conn.stream
        if stream is None or stream.closed():
            return
        pending = socket_write.pending_bytes(stream)
        if pending and pending + len(frame) > self.gateway.settings.max_write_buffer_bytes:
            log(logging.WARNING, "slow consumer", conn=self.session.id, user=self.session.user_id)
            reason = "slow consumer: too many unsent bytes"
            self.close(CLOSE_POLICY, reason)
            # gone for the gateway now, not when the socket ends; on the next loop turn, because this
            # runs inside a fan-out that is walking the very set of subscribers it would change
            tornado.ioloop.IOLoop.current().add_callback(self.gateway.closed, self, CLOSE_POLICY, reason)
            return
        if self._traced != TRACING.version:
            self._retrace()
        if self._debug:
            log_frame("out", self.session.id, self.session.user_id, len(frame),
                      redact_frame(frame[frame.index(b"{"):].decode()))
        socket_write.write(stream, frame)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            log(logging.DEBUG, "closing", conn=self.session.id, code=code, reason=reason)
        super().close(code, reason)
