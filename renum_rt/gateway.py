"""The gateway node: connections, subscriptions, publishing and admin, over one engine.

This is where the two hot paths meet. *Publish*: a validated request is stored by the
engine, which fans it out to every node's ``on_event``; the hub frames it once and
writes the same bytes to each subscriber. *Connect*: a verified identity is counted
against the per-user cap (across nodes), greeted, and given its durable user channel
from its ack cursor on, then live. The gateway holds no Tornado object: connections
are anything with the ``Connection`` methods, and periodic work is called from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from typing import Any, Protocol

from . import channels
from .auth import Authenticator, AuthError
from .config import Settings
from .engines import Engine, EngineUnavailable
from .hub import Hub
from .logs import log
from .protocol import ClientFrame, ProtocolError, event_frame
from .protocol.wsframe import text_frame
from .protocol.errors import CLOSE_IDLE, CLOSE_KICKED, CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED
from .session import Session


#: what a connection refused for a cap is told to wait before it tries again
RECONNECT_AFTER_MS = 1000
#: connections each node includes in its heartbeat, for the admin list of other nodes
CONNECTION_SAMPLE = 100
SAMPLE = "connections_sample"


class Connection(Protocol):
    """What the gateway needs of one client connection (the WebSocket handler)."""

    session: Session

    def send_frame(self, frame: bytes) -> None: ...

    def send(self, frame: dict[str, Any]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def is_closed(self) -> bool: ...


class Refused(Exception):
    """A connection may not open: ``code`` is the close code, ``error`` the frame."""

    def __init__(self, code: int, error: ProtocolError) -> None:
        super().__init__(error.message)
        self.code = code
        self.error = error


def _unavailable(ref: str | None = None) -> ProtocolError:
    return ProtocolError("unavailable", "the event store is unreachable; retry shortly", ref=ref)


class Gateway:
    def __init__(self, settings: Settings, engine: Engine, auth: Authenticator) -> None:
        self.settings = settings
        self.engine = engine
        self.auth = auth
        self.hub = Hub()
        self.node_id = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        self.connections: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self.by_address: dict[str, int] = {}
        self.messages_in = 0
        self.messages_out = 0
        self.rate_limited = 0
        self.published = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        engine.set_listeners(self.hub.deliver, self._on_control, self._on_resync)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.engine.start()
        try:
            await self.heartbeat()
        except EngineUnavailable:
            log(logging.WARNING, "engine unavailable at start", engine=self.engine.name)

    async def stop(self, code: int, reason: str) -> None:
        """Close every connection with ``code`` (1012 on shutdown), then the engine."""
        for conn in list(self.connections.values()):
            conn.close(code, reason)
        await self.engine.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ connections

    def address_allowed(self, address: str) -> bool:
        return self.by_address.get(address, 0) < self.settings.max_connections_per_address

    async def open(self, conn: Connection) -> None:
        """Admit an authenticated connection: caps, welcome, user channel, system."""
        session = conn.session
        identity = session.identity
        assert identity is not None
        if not self.address_allowed(session.address):
            raise Refused(CLOSE_TOO_MANY, ProtocolError("rate_limited", "too many connections from this address",
                                                        retry_after_ms=RECONNECT_AFTER_MS))
        try:
            admitted = await self.engine.connection_opened(
                self.node_id, identity.user_id, self.settings.max_connections_per_user
            )
        except EngineUnavailable:
            admitted = len(self.by_user.get(identity.user_id, ())) < self.settings.max_connections_per_user
        if not admitted:
            raise Refused(
                CLOSE_TOO_MANY,
                ProtocolError("rate_limited", f"at most {self.settings.max_connections_per_user} connections per user",
                              retry_after_ms=RECONNECT_AFTER_MS),
            )
        if conn.is_closed():  # the client left while it was being counted
            self._spawn(self._release(identity.user_id))
            return
        self.connections[session.id] = conn
        self.by_user.setdefault(identity.user_id, set()).add(conn)
        self.by_address[session.address] = self.by_address.get(session.address, 0) + 1
        log(logging.INFO, "connect", conn=session.id, user=identity.user_id, ip=session.address, admin=identity.is_admin)
        await self._attach(conn, channels.SYSTEM)
        own = channels.user_channel(identity.user_id)
        welcome = session.welcome()
        try:
            cursor = await self.engine.cursor(own)
            await self._attach(conn, own, since=cursor, history=True, announce=welcome)
        except (EngineUnavailable, ProtocolError):
            # the store is down: go live on the user channel; what is pending stays
            # stored and is delivered on a later connect, nothing is lost
            conn.send({**welcome, "recovered": False, "replayed": 0})
            conn.send(_unavailable().frame())
            await self._attach(conn, own)

    def closed(self, conn: Connection, code: int | None, reason: str | None) -> None:
        """Forget a connection that went away (whoever closed it)."""
        session = conn.session
        if self.connections.pop(session.id, None) is None:
            return
        for channel in session.channels:
            self.hub.remove(conn, channel)
        user = session.user_id
        assert user is not None
        users = self.by_user.get(user)
        if users is not None:
            users.discard(conn)
            if not users:
                del self.by_user[user]
        left = self.by_address.get(session.address, 1) - 1
        if left > 0:
            self.by_address[session.address] = left
        else:
            self.by_address.pop(session.address, None)
        self.messages_in += session.messages_in
        self.messages_out += session.messages_out
        log(logging.INFO, "disconnect", conn=session.id, user=user, code=code, reason=reason,
            seconds=round(time.time() - session.connected_at, 3))
        self._spawn(self._release(user))

    async def _release(self, user: str) -> None:
        with contextlib.suppress(EngineUnavailable):
            await self.engine.connection_closed(self.node_id, user)

    # ------------------------------------------------------------------ client frames

    async def handle(self, conn: Connection, frame: ClientFrame) -> None:
        """Serve one validated frame of an authenticated connection."""
        session = conn.session
        ref = frame.ref
        kind = frame.type
        if kind == "ping":
            conn.send({"type": "pong", "ref": ref})
        elif kind == "subscribe":
            await self.subscribe(conn, frame.fields["channel"], frame.get("since"), frame.get("token"), ref)
        elif kind == "unsubscribe":
            channel = frame.fields["channel"]
            if channel not in session.channels:
                raise ProtocolError("not_found", f"not subscribed to {channel[:80]!r}", ref=ref, field="channel")
            session.channels.discard(channel)
            self.hub.remove(conn, channel)
            conn.send({"type": "unsubscribed", "ref": ref, "channel": channel})
        elif kind == "ack":
            await self._ack(conn, frame.fields["channel"], frame.fields["id"], ref)
        elif kind == "refresh":
            try:
                identity = await self.auth.identity(frame.fields["token"])
            except AuthError as exc:
                raise ProtocolError("unauthorized", str(exc), ref=ref, field="token") from None
            session.refresh(identity, ref)
            conn.send({"type": "ok", "ref": ref})
        else:  # the session only lets known types through
            raise ProtocolError("unknown_type", f"unknown frame type {kind!r}", ref=ref)

    async def subscribe(
        self, conn: Connection, channel: str, since: str | None, token: str | None, ref: str | None
    ) -> None:
        """Serve ``subscribe``: authorize, replay what the client missed, then go live."""
        session = conn.session
        grant = None
        if token is not None:
            try:
                grant = await self.auth.grant(token)
            except AuthError as exc:
                raise ProtocolError("forbidden", f"subscription token refused: {exc}", ref=ref, field="token") from None
        session.check_subscribe(channel, grant, ref)
        log(logging.INFO, "subscribe", conn=session.id, user=session.user_id, channel=channel, since=since)
        first = channel not in session.channels
        await self._attach(
            conn,
            channel,
            since=since,
            history=since is not None,
            latest=first and since is None and channels.keeps_latest(channel),
            ref=ref,
            announce={"type": "subscribed", "ref": ref, "channel": channel},
        )

    async def _attach(
        self,
        conn: Connection,
        channel: str,
        *,
        since: str | None = None,
        history: bool = False,
        latest: bool = False,
        ref: str | None = None,
        announce: dict[str, Any] | None = None,
    ) -> None:
        """Add ``channel`` to ``conn`` with no gap and no duplicate.

        Live events are buffered (the hub's *warming* state) from before the history
        read until the replay is sent; then the buffer is released without what the
        replay already covered. ``history`` replays everything after ``since`` (all
        retained events when ``since`` is None); ``latest`` sends the channel's latest
        state first. ``announce`` is a frame (the ``subscribed`` reply, or ``welcome``
        for the user channel at connect) sent before the replay, with ``recovered`` and
        ``replayed`` added, so the client knows what is coming and whether it is whole.
        """
        session = conn.session
        hub = self.hub
        hub.warm(conn, channel)
        recovered = True
        events: list[Any] = []
        try:
            if history:
                replay = await self.engine.history(channel, since, self.settings.replay_limit)
                events, recovered = replay.events, replay.complete
            elif latest:
                state = await self.engine.latest(channel)
                events = [state] if state is not None else []
        except EngineUnavailable:
            if channel in session.channels:
                self._flush(conn, hub.go_live(conn, channel, None))
            else:
                hub.remove(conn, channel)
            raise _unavailable(ref) from None
        if conn.session.id not in self.connections:  # closed during the read
            hub.remove(conn, channel)
            return
        session.channels.add(channel)
        if announce is not None:
            conn.send({**announce, "recovered": recovered, "replayed": len(events)})
        last = since
        for event in events:
            conn.send_frame(text_frame(event_frame(event.channel, event.id, event.ts, event.name, event.data)))
            last = event.id
        self._flush(conn, hub.go_live(conn, channel, last))

    @staticmethod
    def _flush(conn: Connection, payloads: list[bytes]) -> None:
        for payload in payloads:
            conn.send_frame(text_frame(payload))

    async def _ack(self, conn: Connection, channel: str, event_id: str, ref: str | None) -> None:
        """Move the durable cursor of the user's own channel; other channels only
        confirm (their history is shared, there is no per-user cursor to move)."""
        session = conn.session
        if channel not in session.channels:
            raise ProtocolError("not_found", f"not subscribed to {channel[:80]!r}", ref=ref, field="channel")
        if channels.is_durable(channel):
            try:
                await self.engine.ack(channel, event_id)
            except EngineUnavailable:
                raise _unavailable(ref) from None
        if ref is not None:
            conn.send({"type": "ok", "ref": ref})

    # ------------------------------------------------------------------ periodic work

    def sweep(self, now: float) -> None:
        """Close connections idle past the idle timeout (4008) or whose token expired
        without a refresh (4001). Called every ``settings.idle_sweep_s()``."""
        for conn in list(self.connections.values()):
            session = conn.session
            if session.is_idle(now):
                conn.send(ProtocolError("bad_request", "idle for longer than the idle timeout").frame())
                conn.close(CLOSE_IDLE, "idle timeout")
            elif session.token_expired(now):
                conn.send(ProtocolError("unauthorized", "token expired; reconnect with a fresh token").frame())
                conn.close(CLOSE_UNAUTHORIZED, "token expired")

    def local_stats(self) -> dict[str, Any]:
        live = self.connections.values()
        return {
            "node": self.node_id,
            "engine": self.engine.name,
            "connections": len(self.connections),
            "users": len(self.by_user),
            "channels": len(self.hub.channels()),
            "messages_in": self.messages_in + sum(c.session.messages_in for c in live),
            "messages_out": self.messages_out + self.hub.delivered + sum(c.session.messages_out for c in live),
            "rate_limited": self.rate_limited,
            "published": self.published,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def heartbeat(self) -> None:
        """Publish this node's statistics to the engine (expire if the node dies)."""
        ttl = max(2, int(self.settings.node_heartbeat_s * 3 + 0.999))
        report = {**self.local_stats(), SAMPLE: self.connection_list(CONNECTION_SAMPLE)}
        await self.engine.heartbeat(self.node_id, report, ttl)

    async def _other_nodes(self) -> list[dict[str, Any]]:
        """The last reports of the other live nodes (none when the engine is down)."""
        try:
            return [n for n in await self.engine.nodes() if n.get("node") != self.node_id]
        except EngineUnavailable:
            return []

    async def stats(self) -> dict[str, Any]:
        """Statistics of every node sharing the engine, added up; this node's alone
        when the engine is unreachable."""
        mine = self.local_stats()
        nodes = [{k: v for k, v in n.items() if k != SAMPLE} for n in await self._other_nodes()]
        nodes.append(mine)
        total: dict[str, Any] = {k: sum(n.get(k, 0) for n in nodes) for k in
                                 ("connections", "users", "channels", "messages_in", "messages_out",
                                  "rate_limited", "published")}
        total.update(nodes=len(nodes), uptime_s=mine["uptime_s"], engine=self.engine.name, node=self.node_id,
                     per_node=sorted(nodes, key=lambda n: str(n.get("node"))))
        return total

    def push_admin_stats(self, stats: dict[str, Any]) -> None:
        """Send live statistics to this node's subscribers of the ``admin`` channel."""
        if self.hub.subscriber_count(channels.ADMIN):
            now_ms = int(time.time() * 1000)
            event_id = f"{now_ms}-0"
            self.hub.deliver(channels.ADMIN, event_id, event_frame(channels.ADMIN, event_id, now_ms, "admin.stats", stats))

    # ------------------------------------------------------------------ publishing

    async def publish(self, targets: list[str], name: str, data: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        """Store and fan out one event; with an Idempotency-Key, a retry returns the
        first answer and creates nothing new. Raises ``EngineUnavailable`` (nothing
        was accepted) and ``IdempotencyInProgress``."""
        key = idempotency_key
        if key is not None:
            previous = await self.engine.idempotency_claim(key, self.settings.idempotency_ttl_s)
            if previous is not None:
                return previous
        try:
            ids = await self.engine.publish(targets, name, data, int(time.time() * 1000))
        except BaseException:
            if key is not None:
                with contextlib.suppress(EngineUnavailable):
                    await self.engine.idempotency_release(key)
            raise
        answer = {"ids": ids}
        self.published += 1
        if key is not None:
            # the event is stored: if its answer cannot be, a retry publishes it again,
            # under new ids, which clients de-duplicate by content at worst
            with contextlib.suppress(EngineUnavailable):
                await self.engine.idempotency_store(key, answer, self.settings.idempotency_ttl_s)
        log(logging.INFO, "publish", event=name, channels=len(targets), idempotency=key is not None)
        return answer

    # ------------------------------------------------------------------ admin and cluster

    async def disconnect_user(self, user_id: str, by: str) -> None:
        """Close every connection of ``user_id`` on every node with 4009."""
        log(logging.WARNING, "admin disconnect", user=user_id, by=by)
        await self.engine.control({"op": "disconnect", "user": user_id})

    def _on_control(self, message: dict[str, Any]) -> None:
        if message.get("op") == "disconnect":
            for conn in list(self.by_user.get(str(message.get("user")), ())):
                conn.close(CLOSE_KICKED, "disconnected by an administrator")

    def _on_resync(self, since: str) -> None:
        """The engine's live feed was interrupted and is back: hold every channel this
        node serves *now* (before the feed delivers anything newer), then re-read."""
        held = self.hub.channels()
        for channel in held:
            self.hub.pause(channel)
        self._spawn(self.resync(held, since))

    async def resync(self, held: list[str], since: str) -> None:
        """Deliver, in order and once, what this node's subscribers missed while the
        live feed was down: each channel's history after the last id this node fanned
        out on it (``since``, a mark from the engine, when it fanned out none), followed
        by what arrived live meanwhile."""
        missed = 0
        for channel in held:
            events: list[Any] = []
            if channels.is_stored(channel):
                try:
                    replay = await self.engine.history(channel, self.hub.last_ids.get(channel, since),
                                                       self.settings.replay_limit)
                    events = replay.events
                except EngineUnavailable:
                    pass  # the feed broke again: the engine will call for another resync
            self.hub.resume(channel, [(e.id, event_frame(channel, e.id, e.ts, e.name, e.data)) for e in events])
            missed += len(events)
        log(logging.INFO, "resync", channels=len(held), events=missed)

    async def all_connections(self, limit: int) -> dict[str, Any]:
        """Connections of every node: this node's live, the others' from their last
        report (at most ``CONNECTION_SAMPLE`` each, a heartbeat old)."""
        rows = self.connection_list(limit)
        total = len(self.connections)
        for report in await self._other_nodes():
            rows.extend(report.get(SAMPLE, ()))
            total += int(report.get("connections", 0))
        return {"node": self.node_id, "total": total, "complete": len(rows) >= total,
                "connections": rows[:limit]}

    def connection_list(self, limit: int) -> list[dict[str, Any]]:
        """This node's connections, at most ``limit`` of them."""
        return [
            {
                "connection_id": c.session.id,
                "user_id": c.session.user_id,
                "address": c.session.address,
                "origin": c.session.origin,
                "node": self.node_id,
                "connected_at": c.session.connected_at,
                "last_active": c.session.last_active,
                "channels": sorted(c.session.channels),
            }
            for c in itertools.islice(self.connections.values(), limit)
        ]
