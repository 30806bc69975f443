"""The gateway node: admits connections and serves their frames over one engine.

It composes the parts, each in a module named for what it does: ``connections`` (the
registry, caps, idle sweep), ``access`` (tokens), ``subscriptions`` (replay with no gap,
resync), ``commands`` (one coroutine per client frame type), ``cluster`` (statistics,
heartbeats, admin control across nodes), ``publishing`` (idempotent publish) and
``metrics`` (every counter). The gateway holds no Tornado object: connections are
anything with the ``Connection`` methods, and periodic work is called from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from . import channels
from .access import Access
from .auth import Authenticator
from .cluster import Cluster
from .commands import COMMANDS
from .config import Settings
from .connections import Connection, Registry
from .engines import Engine, EngineUnavailable
from .hub import Hub
from .ids import is_valid_id
from .logs import log
from .metrics import Metrics
from .notifications import Notifications
from .protocol import ClientFrame, ProtocolError
from .protocol.errors import CLOSE_RESTART, CLOSE_TOO_MANY
from .publishing import publish, publish_batch
from .subscriptions import Subscriptions, unavailable

#: what a connection refused for a cap is told to wait before it tries again
RECONNECT_AFTER_MS = 1000
#: how long a stopping node waits for its background work (giving back connection counts)
STOP_WAIT_S = 2.0


class Refused(Exception):
    """A connection may not open: ``code`` is the close code, ``error`` the frame."""

    def __init__(self, code: int, error: ProtocolError) -> None:
        super().__init__(error.message)
        self.code = code
        self.error = error


class Gateway:
    def __init__(self, settings: Settings, engine: Engine, auth: Authenticator) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = Metrics()
        self.hub = Hub(self.metrics, on_empty=engine.unlisten)
        self.registry = Registry()
        self.access = Access(auth, self.metrics, settings.jwt_leeway_s)
        self.cluster = Cluster(settings, engine, self.registry, self.hub, self.metrics)
        self.subscriptions = Subscriptions(settings, engine, self.hub, self.metrics, self.is_open, self._spawn)
        self.notifications = Notifications(engine, self.registry, self._spawn, self.metrics)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: admissions in progress at once: at most one per pooled Redis connection, so a
        #: connect storm waits here, as long as it takes, instead of in the pool, where a
        #: command fails after a few seconds and the client would be turned away
        self._admitting = asyncio.Semaphore(settings.redis_pool_size)
        engine.set_listeners(self.metrics.timed_fanout(self.hub.deliver), self._on_control,
                             self.subscriptions.on_resync)

    def _on_control(self, message: dict[str, Any]) -> None:
        """A cluster-wide command: each part acts on the operations it knows."""
        self.cluster.on_control(message)
        self.notifications.on_control(message)

    @property
    def node_id(self) -> str:
        return self.cluster.node_id

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.engine.start()
        with contextlib.suppress(EngineUnavailable):  # the engine logged why; the node serves anyway
            await self.cluster.heartbeat()

    async def stop(self, code: int, reason: str) -> None:
        """Close every connection with ``code`` (1012 on shutdown), give their per-user
        counts back (waiting at most ``STOP_WAIT_S``), then close the engine."""
        for conn in self.registry:
            conn.close(code, reason)
            self.closed(conn, code, reason)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_WAIT_S)
        await self.engine.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ connections

    def socket_opened(self, address: str) -> bool:
        """Count one more WebSocket from ``address`` (authenticated or not); False,
        counting nothing, when that passes the per-address cap."""
        if self.registry.address_count(address) >= self.settings.max_connections_per_address:
            self.metrics.rate_limited += 1
            return False
        self.registry.count_address(address, +1)
        return True

    def socket_closed(self, address: str) -> None:
        self.registry.count_address(address, -1)

    def is_open(self, conn: Connection) -> bool:
        return conn in self.registry and not conn.is_closed()

    async def open(self, conn: Connection) -> None:
        """Admit an authenticated connection: per-user cap, then ``welcome`` (always the
        first frame), the durable user channel from its ack cursor, ``unread_count``, and
        ``system`` (live, or replayed after the client's ``system_since`` first); at most
        ``redis_pool_size`` admissions at once, the others queued.

        A connection is never left live without its backlog: if the user channel (or,
        with ``system_since``, ``system``) cannot be read, it is closed with 1012 so that
        the client reconnects and resumes."""
        async with self._admitting:
            if not conn.is_closed():  # it may have left while queued
                await self._admit(conn)

    async def _admit(self, conn: Connection) -> None:
        session = conn.session
        identity = session.identity
        assert identity is not None
        try:
            admitted = await self.engine.connection_opened(
                self.node_id, identity.user_id, self.settings.max_connections_per_user
            )
        except EngineUnavailable:
            admitted = len(self.registry.of_user(identity.user_id)) < self.settings.max_connections_per_user
        if not admitted:
            self.metrics.rate_limited += 1
            raise Refused(
                CLOSE_TOO_MANY,
                ProtocolError("rate_limited", f"at most {self.settings.max_connections_per_user} connections per user",
                              retry_after_ms=RECONNECT_AFTER_MS),
            )
        if conn.is_closed():  # the client left while it was being counted
            self._spawn(self._release(identity.user_id))
            return
        self.registry.add(conn)
        log(logging.INFO, "connect", conn=session.id, user=identity.user_id, ip=session.address,
            admin=identity.is_admin)
        hub = self.hub
        # where the client resumes ``system`` (read once: the session keeps no copy)
        since, session.system_since = session.system_since, None
        if since is None:
            hub.warm(conn, channels.SYSTEM)  # system events wait until welcome and the backlog are out
        own = channels.user_channel(identity.user_id)
        try:
            if since is None:
                await self.engine.listen(channels.SYSTEM)
            cursor = await self.engine.cursor(own)
            if cursor is not None and not is_valid_id(cursor):  # never lock a user out over a bad cursor
                log(logging.WARNING, "bad ack cursor ignored", conn=session.id, user=identity.user_id)
                cursor = None
            await self.subscriptions.attach(conn, own, since=cursor, history=True, announce=session.welcome())
            unread = (await self.engine.inbox.unread([identity.user_id], int(time.time() * 1000)))[identity.user_id]
            if not self.is_open(conn):
                hub.remove(conn, channels.SYSTEM)
                return
            if unread.version > session.unread_version:  # a newer count may have been pushed meanwhile
                session.unread_version = unread.version
                conn.send({"type": "unread_count", "count": unread.count})
            if since is None:
                session.channels.add(channels.SYSTEM)
                self.subscriptions.flush(conn, hub.go_live(conn, channels.SYSTEM, None))
            else:
                # what the client missed on ``system`` (announced like the reply to a
                # ``subscribe`` with ``since``), then live events: attach buffers those
                # published meanwhile, so each comes once and in id order, after the
                # user's backlog as at any connect
                announce = {"type": "subscribed", "ref": None, "channel": channels.SYSTEM}
                await self.subscriptions.attach(conn, channels.SYSTEM, since=since, history=True, announce=announce)
        except (EngineUnavailable, ProtocolError):
            hub.remove(conn, channels.SYSTEM)
            if self.is_open(conn):
                conn.send(unavailable().frame())
                conn.close(CLOSE_RESTART, "the event store is unreachable; reconnect")
        except Exception:
            # handled here, not raised: Tornado would drop a socket whose ``open`` raised
            # without ``on_close``, and with it the release of every count it holds
            log(logging.ERROR, "connect failed", conn=session.id, user=identity.user_id, exc_info=True)
            self.metrics.internal_errors += 1
            hub.remove(conn, channels.SYSTEM)
            conn.close(CLOSE_RESTART, "internal error; reconnect")
        except BaseException:  # cancelled: the node is stopping
            hub.remove(conn, channels.SYSTEM)
            raise

    def closed(self, conn: Connection, code: int | None, reason: str | None) -> None:
        """Forget a connection that went away (whoever closed it)."""
        session = conn.session
        if not self.registry.remove(conn):
            return
        for channel in session.channels | {channels.SYSTEM}:
            self.hub.remove(conn, channel)
        user = session.user_id
        assert user is not None
        log(
            logging.INFO,
            "disconnect",
            conn=session.id,
            user=user,
            code=code,
            reason=reason,
            seconds=round(time.time() - session.connected_at, 3),
        )
        self._spawn(self._release(user))

    async def _release(self, user: str) -> None:
        with contextlib.suppress(EngineUnavailable):
            await self.engine.connection_closed(self.node_id, user)

    # ------------------------------------------------------------------ client frames

    async def handle(self, conn: Connection, frame: ClientFrame) -> None:
        """Serve one validated frame of an admitted connection."""
        command = COMMANDS.get(frame.type)
        if command is None:  # the session lets only known types through
            raise ProtocolError("unknown_type", f"unknown frame type {frame.type!r}", ref=frame.ref)
        await command(self, conn, frame)

    # ------------------------------------------------------------------ periodic work

    def sweep(self, now: float) -> None:
        """Idle (4008) and expired (4001) connections; every ``settings.idle_sweep_s()``."""
        self.registry.sweep(now)

    # ------------------------------------------------------------------ publishing

    async def publish(
        self, targets: list[str], name: str, data: dict[str, Any], idempotency_key: str | None
    ) -> dict[str, Any]:
        """Store and fan out one event (see ``publishing.publish``), then create the
        notification it implies (``_notify``)."""
        answer = await publish(self.engine, targets, name, data, idempotency_key, self.settings.idempotency_ttl_s)
        self.metrics.published += 1
        await self._notify(targets, name, data, idempotency_key)
        return answer

    async def publish_batch(
        self, items: list[tuple[list[str], str, dict[str, Any], str | None]]
    ) -> list[dict[str, Any]]:
        """Store and fan out ``(targets, name, data, idempotency_key)`` events in one
        engine call (see ``publishing.publish_batch``), then create each one's
        notification, as ``publish`` does; the answers in order."""
        answers = await publish_batch(self.engine, items, self.settings.idempotency_ttl_s)
        self.metrics.published += len(items)
        for targets, name, data, key in items:
            await self._notify(targets, name, data, key)
        return answers

    async def _notify(self, targets: list[str], name: str, data: dict[str, Any], idempotency_key: str | None) -> None:
        """The notification a stored event implies (``notifications.on_published``)."""
        try:
            await self.notifications.on_published(
                targets, name, data, idempotency_key, self.settings.notifications_from_events
            )
        except EngineUnavailable:
            # the event is stored, its notification is not: with a key, a retry is safe
            # (the event is not stored twice) and creates it, so ask for one; without
            # one, a retry would store the event twice
            log(logging.WARNING, "event stored, its notification not", event=name, retry=idempotency_key is not None)
            if idempotency_key is not None:
                raise
