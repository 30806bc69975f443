"""This node among the nodes that share an engine: statistics, heartbeats, and the
control messages (admin disconnects) that must reach whichever node holds a connection.

With the memory engine there is one node and every call answers for it alone; with
Redis each node reports its figures and a sample of its connections every heartbeat,
and the admin API adds them up, so any node answers for all of them.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from . import channels
from .config import Settings
from .connections import Registry
from .engines import Engine, EngineUnavailable
from .hub import Hub
from .logs import log
from .metrics import Metrics
from .protocol import event_frame
from .protocol.errors import CLOSE_KICKED

#: connections each node includes in its heartbeat, for the admin list of other nodes
CONNECTION_SAMPLE = 100
SAMPLE = "connections_sample"
#: figures that add up across nodes
SUMMED = ("connections", "users", "channels", "messages_in", "messages_out", "rate_limited", "published",
          "auth_failures", "resyncs")


class Cluster:
    def __init__(self, settings: Settings, engine: Engine, registry: Registry, hub: Hub, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.hub = hub
        self.metrics = metrics
        self.node_id = uuid.uuid4().hex[:12]
        self.started_at = time.time()

    def local_stats(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "engine": self.engine.name,
            "connections": len(self.registry),
            "users": len(self.registry.by_user),
            "channels": len(self.hub.channels()),
            **self.metrics.snapshot(),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def heartbeat(self) -> None:
        """Publish this node's statistics to the engine (they expire if the node dies)."""
        ttl = max(2, int(self.settings.node_heartbeat_s * 3 + 0.999))
        report = {**self.local_stats(), SAMPLE: self.registry.listing(self.node_id, CONNECTION_SAMPLE)}
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
        total: dict[str, Any] = {k: sum(n.get(k, 0) for n in nodes) for k in SUMMED}
        total.update(nodes=len(nodes), uptime_s=mine["uptime_s"], engine=self.engine.name, node=self.node_id,
                     per_node=sorted(nodes, key=lambda n: str(n.get("node"))))
        return total

    def push_admin_stats(self, stats: dict[str, Any]) -> None:
        """Send live statistics to this node's subscribers of the ``admin`` channel."""
        if self.hub.subscriber_count(channels.ADMIN):
            now_ms = int(time.time() * 1000)
            event_id = f"{now_ms}-0"
            self.hub.deliver(channels.ADMIN, event_id, event_frame(channels.ADMIN, event_id, now_ms, "admin.stats", stats))

    async def all_connections(self, limit: int) -> dict[str, Any]:
        """Connections of every node: this node's live, the others' from their last
        report (at most ``CONNECTION_SAMPLE`` each, a heartbeat old)."""
        rows = self.registry.listing(self.node_id, limit)
        total = len(self.registry)
        for report in await self._other_nodes():
            rows.extend(report.get(SAMPLE, ()))
            total += int(report.get("connections", 0))
        return {"node": self.node_id, "total": total, "complete": len(rows) >= total,
                "connections": rows[:limit]}

    async def disconnect_user(self, user_id: str, by: str) -> None:
        """Close every connection of ``user_id`` on every node with 4009."""
        log(logging.WARNING, "admin disconnect", user=user_id, by=by)
        await self.engine.control({"op": "disconnect", "user": user_id})

    def on_control(self, message: dict[str, Any]) -> None:
        if message.get("op") == "disconnect":
            for conn in self.registry.of_user(str(message.get("user"))):
                conn.close(CLOSE_KICKED, "disconnected by an administrator")
