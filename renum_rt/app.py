"""Wiring: settings → engine → gateway → Tornado application, and the periodic work.

``build(settings)`` gives a ``Node``: the gateway, the Tornado application with every
route in one list, and ``start()``/``stop()`` for the background callbacks (idle
sweep, node heartbeat, admin statistics). ``server.py`` and the tests both use it, so
the code under test is the code that runs.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import tornado.ioloop
import tornado.web

from .auth import Authenticator, TokenVerifier, http_jwks_fetcher
from .config import Settings
from .engines import EngineUnavailable, Retention, make_engine
from .engines.inbox import InboxLimits
from .gateway import Gateway
from .handlers.admin import (
    AdminBroadcastHandler,
    AuditHandler,
    ConnectionDisconnectHandler,
    ConnectionsHandler,
    DisconnectHandler,
    LogLevelHandler,
    StatsHandler,
)
from .handlers.api import BatchHandler, BroadcastHandler, OpenApiHandler, PublishHandler
from .handlers.base import NotFoundHandler
from .handlers.demo import DemoTokenHandler
from .handlers.health import HealthHandler
from .handlers.metrics import MetricsHandler, networks, node_registry
from .handlers.notifications import CreateNotificationHandler, UserNotificationActionHandler, UserNotificationsHandler
from .handlers.pages import PageHandler
from .handlers.ws import WebSocketHandler
from .limits import KeyedBuckets
from .logs import access_log
from .metrics import LoopLag
from .protocol.errors import CLOSE_RESTART
from .resources import static_dir

STATIC = static_dir()


def make_app(gateway: Gateway) -> tornado.web.Application:
    s = gateway.settings
    buckets = KeyedBuckets(s.http_rate, s.http_burst)
    g = {"gateway": gateway}
    routes: list[Any] = [
        (r"/ws", WebSocketHandler, g),
        (r"/healthz", HealthHandler, g),
        (r"/api/v1/publish", PublishHandler, {**g, "buckets": buckets}),
        (r"/api/v1/publish/batch", BatchHandler, {**g, "buckets": buckets}),
        (r"/api/v1/broadcast", BroadcastHandler, {**g, "buckets": buckets}),
        (r"/api/v1/notifications", CreateNotificationHandler, {**g, "buckets": buckets}),
        (r"/api/v1/users/([^/]+)/notifications", UserNotificationsHandler, {**g, "buckets": buckets}),
        (r"/api/v1/users/([^/]+)/notifications/(read|dismiss|read_all)", UserNotificationActionHandler,
         {**g, "buckets": buckets}),
        (r"/api/v1/openapi.json", OpenApiHandler, g),
        (r"/demo/?", PageHandler, {"page": "demo/index.html"}),
        (r"/demo/executions/([^/]+)", PageHandler, {"page": "demo/execution.html"}),
        (r"/demo/token", DemoTokenHandler, g),
        (r"/admin/?", PageHandler, {"page": "admin.html"}),
        (r"/admin/api/stats", StatsHandler, g),
        (r"/admin/api/connections", ConnectionsHandler, g),
        (r"/admin/api/connections/([^/]+)/disconnect", ConnectionDisconnectHandler, g),
        (r"/admin/api/users/([^/]+)/disconnect", DisconnectHandler, g),
        (r"/admin/api/broadcast", AdminBroadcastHandler, g),
        (r"/admin/api/log-level", LogLevelHandler, g),
        (r"/admin/api/audit", AuditHandler, g),
        (r"/metrics", MetricsHandler, {**g, "registry": node_registry(gateway),
                                       "allowed": networks(s.metrics_allowed_addresses)}),
    ]

    def finished(handler: tornado.web.RequestHandler) -> None:
        """Every finished request: its log line, and the publish latency it measured."""
        access_log(handler)
        gateway.metrics.observe_request(handler.request.path, handler.get_status(), handler.request.request_time())

    return tornado.web.Application(
        routes,
        static_path=str(STATIC),
        default_handler_class=NotFoundHandler,
        default_handler_args=g,
        log_function=finished,
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
                             prefix=settings.redis_prefix, pool_size=settings.redis_pool_size, inbox_limits=inbox,
                             wait_replicas=settings.redis_wait_replicas,
                             wait_timeout_ms=settings.redis_wait_timeout_ms)
        self.gateway = Gateway(settings, engine, Authenticator(verifier, fetch, settings.jwks_cache_s))
        self.app = make_app(self.gateway)
        self._callbacks: list[tornado.ioloop.PeriodicCallback] = []
        self._lag = LoopLag(self.gateway.metrics)

    async def start(self) -> None:
        await self.gateway.start()
        self._lag.start()
        sweep = tornado.ioloop.PeriodicCallback(lambda: self.gateway.sweep(time.time()),
                                                self.settings.idle_sweep_s() * 1000)
        beat = tornado.ioloop.PeriodicCallback(self._beat, self.settings.node_heartbeat_s * 1000)
        self._callbacks = [sweep, beat]
        for callback in self._callbacks:
            callback.start()

    async def _beat(self) -> None:
        with contextlib.suppress(EngineUnavailable):  # the engine logged why; try again next beat
            await self.gateway.cluster.heartbeat()
        if self.gateway.hub.subscriber_count("admin"):
            self.gateway.cluster.push_admin_stats(await self.gateway.cluster.stats())

    async def stop(self, code: int = CLOSE_RESTART, reason: str = "server shutting down") -> None:
        for callback in self._callbacks:
            callback.stop()
        self._lag.stop()
        await self.gateway.stop(code, reason)
