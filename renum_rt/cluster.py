"""This node among the nodes that share an engine: statistics, heartbeats, and the
control messages (admin disconnects, connection lists, log levels) that must reach
whichever node holds a connection.

With the memory engine there is one node and every call answers for it alone; with
Redis each node reports its figures every heartbeat, and the admin API adds them up,
so any node answers for all of them. What must be exact and live (which node holds a
connection, the connections of a user) is asked of every node through the engine's
control messages instead: each live node answers, and the asking node waits for the
answers of the nodes whose heartbeat it sees, at most ``REPLY_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import channels
from .config import Settings
from .connections import Registry
from .engines import Engine, EngineUnavailable
from .hub import Hub
from .logs import TRACING, log
from .metrics import Metrics
from .protocol import event_frame
from .protocol.errors import CLOSE_KICKED

#: figures that add up across nodes
SUMMED = ("connections", "users", "channels", "messages_in", "messages_out", "rate_limited", "published",
          "auth_failures", "resyncs", "errors", "messages_in_per_s", "messages_out_per_s", "published_per_s")
#: how long an admin request waits for the other nodes' answers
REPLY_TIMEOUT_S = 2.0
Replies = list[dict[str, Any]]
#: rows of the connection list one request may reach (offset + limit)
MAX_LISTED = 10000


@dataclass
class _Waiting:
    """The answers to one control request, as they arrive."""

    expected: int
    enough: Callable[[Replies], bool]
    replies: Replies = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Cluster:
    def __init__(self, settings: Settings, engine: Engine, registry: Registry, hub: Hub, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.hub = hub
        self.metrics = metrics
        self.node_id = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        #: did the last heartbeat reach the engine?
        self.engine_ok = True
        self._rates = {"messages_in_per_s": 0.0, "messages_out_per_s": 0.0, "published_per_s": 0.0}
        self._sample: tuple[float, int, int, int] | None = None
        self._waiting: dict[str, _Waiting] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ statistics

    def local_stats(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "engine": self.engine.name,
            "engine_ok": self.engine_ok,
            "connections": len(self.registry),
            "users": len(self.registry.by_user),
            "channels": len(self.hub.channels()),
            **self.metrics.snapshot(),
            "errors": self.engine.failures + self.metrics.internal_errors,
            **self._rates,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def _update_rates(self) -> None:
        """Per-second rates since the previous heartbeat (so every reader of one
        heartbeat period sees the same figures, whenever it asks)."""
        now, m = time.monotonic(), self.metrics
        sample = (now, m.messages_in, m.messages_out, m.published)
        if self._sample is not None and now > self._sample[0]:
            seconds = now - self._sample[0]
            names = ("messages_in_per_s", "messages_out_per_s", "published_per_s")
            for name, new, old in zip(names, sample[1:], self._sample[1:], strict=True):
                self._rates[name] = round((new - old) / seconds, 2)
        self._sample = sample

    async def heartbeat(self) -> None:
        """Publish this node's statistics to the engine (they expire if the node dies)."""
        self._update_rates()
        ttl = max(2, int(self.settings.node_heartbeat_s * 3 + 0.999))
        try:
            await self.engine.heartbeat(self.node_id, self.local_stats(), ttl)
        except EngineUnavailable:
            self.engine_ok = False
            raise
        self.engine_ok = True

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
        nodes = await self._other_nodes()
        nodes.append(mine)
        total: dict[str, Any] = {k: round(sum(n.get(k, 0) for n in nodes), 2) for k in SUMMED}
        total.update(nodes=len(nodes), uptime_s=mine["uptime_s"], engine=self.engine.name, node=self.node_id,
                     engine_ok=all(n.get("engine_ok", True) for n in nodes),
                     per_node=sorted(nodes, key=lambda n: str(n.get("node"))))
        return total

    def push_admin_stats(self, stats: dict[str, Any]) -> None:
        """Send live statistics to this node's subscribers of the ``admin`` channel."""
        if self.hub.subscriber_count(channels.ADMIN):
            now_ms = int(time.time() * 1000)
            event_id = f"{now_ms}-0"
            frame = event_frame(channels.ADMIN, event_id, now_ms, "admin.stats", stats)
            self.hub.deliver(channels.ADMIN, event_id, frame)

    # ------------------------------------------------------------------ asking every node

    async def _ask(self, message: dict[str, Any], enough: Callable[[Replies], bool] = lambda replies: False,
                   ) -> tuple[Replies, bool]:
        """Send ``message`` to every node and gather their answers until ``enough`` of
        them came, every node with a live heartbeat answered, or ``REPLY_TIMEOUT_S``
        passed. Returns the answers and whether every expected node answered."""
        request = uuid.uuid4().hex
        waiting = _Waiting(expected=len(await self._other_nodes()) + 1, enough=enough)
        self._waiting[request] = waiting
        try:
            await self.engine.control({**message, "request": request})
            await asyncio.wait_for(waiting.done.wait(), REPLY_TIMEOUT_S)
        except TimeoutError:
            pass
        finally:
            del self._waiting[request]
        return waiting.replies, len(waiting.replies) >= waiting.expected

    def _answer(self, request: Any, body: dict[str, Any]) -> None:
        """Reply to a control request (every node receives it; the asking one keeps it)."""
        async def send() -> None:
            try:
                await self.engine.control({"op": "reply", "request": request, "node": self.node_id, **body})
            except EngineUnavailable:
                log(logging.WARNING, "admin request not answered: the engine is unreachable", request=request)

        task = asyncio.ensure_future(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _received(self, message: dict[str, Any]) -> None:
        waiting = self._waiting.get(str(message.get("request")))
        if waiting is not None:
            waiting.replies.append(message)
            if len(waiting.replies) >= waiting.expected or waiting.enough(waiting.replies):
                waiting.done.set()

    # ------------------------------------------------------------------ admin actions

    async def connections(self, user: str | None, offset: int, limit: int) -> dict[str, Any]:
        """A page of the connections of every node (of ``user`` only, when given),
        newest first: each node sends its first ``offset + limit`` and its count."""
        want = min(offset + limit, MAX_LISTED)
        replies, complete = await self._ask({"op": "list", "user": user, "limit": want})
        rows = sorted((row for r in replies for row in r.get("rows", ())), key=_newest_first)
        total = sum(int(r.get("total", 0)) for r in replies)
        page = rows[offset:offset + limit]
        return {"node": self.node_id, "total": total, "offset": offset, "limit": limit,
                "complete": complete and offset == 0 and len(page) >= total,
                "nodes_answered": len(replies), "connections": page}

    def _list(self, user: str | None, limit: int) -> dict[str, Any]:
        rows = sorted(self.registry.listing(self.node_id, len(self.registry), user), key=_newest_first)
        return {"total": len(rows), "rows": rows[:limit]}

    async def disconnect_user(self, user_id: str) -> None:
        """Close every connection of ``user_id`` on every node with 4009."""
        await self.engine.control({"op": "disconnect", "user": user_id})

    async def disconnect_connection(self, connection_id: str) -> str | None:
        """Close one connection, on whichever node holds it, with 4009; the id of that
        node, or None when no node that answered in time holds it."""
        replies, _ = await self._ask({"op": "disconnect_connection", "connection": connection_id},
                                     enough=lambda replies: any(r.get("found") for r in replies))
        found = [r for r in replies if r.get("found")]
        return str(found[0]["node"]) if found else None

    async def set_log_level(self, level: str, user: str | None) -> None:
        """On every node: the log level (no ``user``), or follow ``user``'s frames
        (``level`` debug) or stop following them (any other level). This node applies it
        at once (the answer to the admin is then true here), the others when the control
        message reaches them."""
        message = {"op": "log_level", "level": level, "user": user, "node": self.node_id}
        self._apply_log_level(message)
        await self.engine.control(message)

    def _apply_log_level(self, message: dict[str, Any]) -> None:
        level, user = str(message.get("level")), message.get("user")
        if user is None:
            TRACING.set_level(level)
        else:
            TRACING.follow(str(user), level == "debug")
        log(logging.WARNING, "log level changed", to=level, user=user, node=self.node_id)

    def on_control(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "disconnect":
            for conn in self.registry.of_user(str(message.get("user"))):
                conn.close(CLOSE_KICKED, "disconnected by an administrator")
        elif op == "disconnect_connection":
            held = self.registry.get(str(message.get("connection")))
            if held is not None:
                held.close(CLOSE_KICKED, "disconnected by an administrator")
            self._answer(message.get("request"), {"found": held is not None})
        elif op == "list":
            user = message.get("user")
            limit = min(max(0, int(message.get("limit", 0))), MAX_LISTED)
            self._answer(message.get("request"), self._list(str(user) if user is not None else None, limit))
        elif op == "reply":
            self._received(message)
        elif op == "log_level" and message.get("node") != self.node_id:  # the sender applied it already
            self._apply_log_level(message)


def _newest_first(row: dict[str, Any]) -> tuple[float, str]:
    return (-float(row["connected_at"]), str(row["connection_id"]))
