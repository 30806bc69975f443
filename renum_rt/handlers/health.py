"""``GET /healthz``: 200 once the server accepts connections, 503 while its engine is
unreachable (a load balancer then sends new clients to another node)."""

from __future__ import annotations

from .base import JsonHandler


class HealthHandler(JsonHandler):
    async def get(self) -> None:
        ok = await self.gateway.engine.ping()
        body = {"status": "ok" if ok else "unavailable", "engine": self.gateway.engine.name,
                "node": self.gateway.node_id, "connections": len(self.gateway.registry)}
        self.reply(body, 200 if ok else 503)
