"""Wiring: settings → engine → gateway → Tornado application, and the periodic work.

``build(settings)`` gives a ``Node``: the gateway, the Tornado application with every
route in one list, and ``start()``/``stop()`` for the background callbacks (idle
sweep, node heartbeat, admin statistics). ``server.py`` and the tests both use it, so
the code under test is the code that runs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from typing import Any

import tornado.ioloop
import tornado.web

from .auth import Authenticator, TokenVerifier, http_jwks_fetcher
from .config import Settings
from .engines import EngineUnavailable, Retention, make_engine
from .engines.inbox import InboxLimits
from .gateway import Gateway
from .handlers.admin import AdminBroadcastHandler, ConnectionsHandler, DisconnectHandler, StatsHandler
from .handlers.base import NotFoundHandler
from .handlers.api import BroadcastHandler, OpenApiHandler, PublishHandler
from .handlers.health import HealthHandler
from .handlers.notifications import CreateNotificationHandler, UserNotificationActionHandler, UserNotificationsHandler
from .handlers.ws import WebSocketHandler
from .limits import KeyedBuckets
from .logs import access_log, log
from .protocol.errors import CLOSE_RESTART
from .resources import static_dir

STATIC = static_dir()


class AdminPageHandler(tornado.web.RequestHandler):
    """``GET /admin``: the admin page, which an admin fills with a token, so it must
    not be framed (clickjacking), sniffed as another type, leak its URL to other
    sites, or run code that is not this server's own.

    The page's script and style are inline: the Content-Security-Policy names each
    block by its SHA-256 hash (computed from the bytes served), so they run and any
    other inline code, an injected one included, does not. ``connect-src`` allows
    this server only: its API, and its WebSocket on the host the page was loaded from.
    """

    _INLINE = re.compile(rb"<(script|style)\b([^>]*)>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
    _HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d+)?|\[[0-9A-Fa-f:.]+\](?::\d+)?")

    def get(self) -> None:
        page = (STATIC / "admin.html").read_bytes()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", self.policy(page, self.request.host))
        self.finish(page)

    @classmethod
    def policy(cls, page: bytes, host: str) -> str:
        """The Content-Security-Policy of ``page`` served to a browser that reached us as ``host``."""
        hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
        for kind, attributes, body in cls._INLINE.findall(page):
            if b"src=" not in attributes.lower():
                hashes[kind.lower()].append("'sha256-%s'" % base64.b64encode(hashlib.sha256(body).digest()).decode())
        sockets = f" ws://{host} wss://{host}" if cls._HOST.fullmatch(host) else ""
        return "; ".join([
            "default-src 'none'",
            " ".join(["script-src 'self'", *hashes[b"script"]]),
            " ".join(["style-src 'self'", *hashes[b"style"]]),
            f"connect-src 'self'{sockets}",
            "img-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ])


def make_app(gateway: Gateway) -> tornado.web.Application:
    s = gateway.settings
    buckets = KeyedBuckets(s.http_rate, s.http_burst)
    g = {"gateway": gateway}
    routes: list[Any] = [
        (r"/ws", WebSocketHandler, g),
        (r"/healthz", HealthHandler, g),
        (r"/api/v1/publish", PublishHandler, {**g, "buckets": buckets}),
        (r"/api/v1/broadcast", BroadcastHandler, {**g, "buckets": buckets}),
        (r"/api/v1/notifications", CreateNotificationHandler, {**g, "buckets": buckets}),
        (r"/api/v1/users/([^/]+)/notifications", UserNotificationsHandler, {**g, "buckets": buckets}),
        (r"/api/v1/users/([^/]+)/notifications/(read|dismiss|read_all)", UserNotificationActionHandler,
         {**g, "buckets": buckets}),
        (r"/api/v1/openapi.json", OpenApiHandler, g),
        (r"/admin/?", AdminPageHandler),
        (r"/admin/api/stats", StatsHandler, g),
        (r"/admin/api/connections", ConnectionsHandler, g),
        (r"/admin/api/users/([^/]+)/disconnect", DisconnectHandler, g),
        (r"/admin/api/broadcast", AdminBroadcastHandler, g),
    ]
    return tornado.web.Application(
        routes,
        static_path=str(STATIC),
        default_handler_class=NotFoundHandler,
        default_handler_args=g,
        log_function=access_log,
        websocket_ping_interval=s.heartbeat_ms / 1000,
        websocket_ping_timeout=s.heartbeat_ms / 1000,
        websocket_max_message_size=s.hard_frame_bytes,
    )


class Node:
    """One gateway process: the gateway, its application and its periodic callbacks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        verifier = TokenVerifier(settings)
        fetch = http_jwks_fetcher(settings.jwks_url) if settings.jwks_url else None
        inbox = InboxLimits(settings.inbox_max_per_user, settings.inbox_max_age_s, settings.inbox_global_max,
                            settings.inbox_global_max_age_s)
        engine = make_engine(settings.redis_url or None,
                             Retention(settings.history_max_len, settings.history_max_age_s),
                             prefix=settings.redis_prefix, pool_size=settings.redis_pool_size, inbox_limits=inbox)
        self.gateway = Gateway(settings, engine, Authenticator(verifier, fetch, settings.jwks_cache_s))
        self.app = make_app(self.gateway)
        self._callbacks: list[tornado.ioloop.PeriodicCallback] = []

    async def start(self) -> None:
        await self.gateway.start()
        sweep = tornado.ioloop.PeriodicCallback(lambda: self.gateway.sweep(time.time()),
                                                self.settings.idle_sweep_s() * 1000)
        beat = tornado.ioloop.PeriodicCallback(self._beat, self.settings.node_heartbeat_s * 1000)
        self._callbacks = [sweep, beat]
        for callback in self._callbacks:
            callback.start()

    async def _beat(self) -> None:
        try:
            await self.gateway.cluster.heartbeat()
        except EngineUnavailable:
            log(logging.WARNING, "engine unavailable", engine=self.gateway.engine.name)
        if self.gateway.hub.subscriber_count("admin"):
            self.gateway.cluster.push_admin_stats(await self.gateway.cluster.stats())

    async def stop(self, code: int = CLOSE_RESTART, reason: str = "server shutting down") -> None:
        for callback in self._callbacks:
            callback.stop()
        await self.gateway.stop(code, reason)
