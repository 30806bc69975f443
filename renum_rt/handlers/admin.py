"""Admin API: statistics, connections, disconnects, broadcast, log level, audit log.

Every route needs ``Authorization: Bearer <admin JWT>``: 401 without a valid token
(missing, malformed, expired), 403 with a valid non-admin one. Every action that
changes something is audited (``audit.record``) with the admin's id and address. The
page ``/admin`` itself is static and holds no data of its own: it calls these routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .. import audit, channels
from ..auth import AuthError
from ..channels import Identity
from ..engines import EngineUnavailable
from ..logs import LEVELS, TRACING
from ..protocol.events import FieldError, validate_event
from .base import HttpError, JsonHandler

Action = Callable[[Identity], Awaitable[dict[str, Any]]]


def valid_user(user_id: str, field: str) -> str:
    """``user_id`` if it can name a user channel; 400 naming ``field`` otherwise."""
    try:
        channels.parse(channels.user_channel(user_id))
    except channels.ChannelError:
        raise HttpError(400, "bad_request", "not a valid user id", field=field) from None
    return user_id


class AdminHandler(JsonHandler):
    async def admin(self) -> Identity:
        try:
            identity = await self.gateway.access.identity(self.bearer())
        except AuthError as exc:
            raise HttpError(401, "unauthorized", str(exc)) from None
        if not identity.is_admin:
            raise HttpError(403, "forbidden", "an admin token is needed")
        return identity

    async def run(self, action: Action) -> None:
        try:
            identity = await self.admin()
            self.reply(await action(identity))
        except HttpError as error:
            self.fail(error)
        except EngineUnavailable as exc:
            self.fail(HttpError(503, "unavailable", "the event store is unreachable; retry", cause=exc))

    async def audit(self, identity: Identity, action: str, target: str, **details: Any) -> None:
        await audit.record(self.gateway.engine, by=identity.user_id, action=action, target=target,
                           address=self.request.remote_ip, node=self.gateway.node_id, **details)

    def whole_number(self, name: str, default: int, low: int, high: int) -> int:
        """A query argument between ``low`` and ``high`` (clamped); 400 if not a number."""
        try:
            return min(max(low, int(self.get_query_argument(name, str(default)))), high)
        except ValueError:
            raise HttpError(400, "bad_request", f"{name} must be a whole number", field=name) from None


class StatsHandler(AdminHandler):
    async def get(self) -> None:
        async def stats(_: Identity) -> dict[str, Any]:
            return await self.gateway.cluster.stats()

        await self.run(stats)


class ConnectionsHandler(AdminHandler):
    """``GET /admin/api/connections?user=&offset=&limit=``: a page of every node's
    connections, newest first, live (each node is asked)."""

    async def get(self) -> None:
        async def connections(_: Identity) -> dict[str, Any]:
            user = self.get_query_argument("user", "", strip=False) or None
            limit = self.whole_number("limit", 1000, 1, 10000)
            offset = self.whole_number("offset", 0, 0, 10000)
            return await self.gateway.cluster.connections(
                valid_user(user, "user") if user is not None else None, offset, limit)

        await self.run(connections)


class DisconnectHandler(AdminHandler):
    async def post(self, user_id: str) -> None:
        async def disconnect(identity: Identity) -> dict[str, Any]:
            valid_user(user_id, "user_id")
            await self.audit(identity, "disconnect_user", f"user:{user_id}")
            await self.gateway.cluster.disconnect_user(user_id)
            return {"disconnected": user_id}

        await self.run(disconnect)


class ConnectionDisconnectHandler(AdminHandler):
    """``POST /admin/api/connections/<id>/disconnect``: 404 when no node answering
    within ``cluster.REPLY_TIMEOUT_S`` holds it."""

    async def post(self, connection_id: str) -> None:
        async def disconnect(identity: Identity) -> dict[str, Any]:
            node = await self.gateway.cluster.disconnect_connection(connection_id)
            if node is None:
                raise HttpError(404, "not_found", "no live connection has this id")
            await self.audit(identity, "disconnect_connection", f"connection:{connection_id}", held_by=node)
            return {"disconnected": connection_id, "node": node}

        await self.run(disconnect)


class AdminBroadcastHandler(AdminHandler):
    async def post(self) -> None:
        async def broadcast(identity: Identity) -> dict[str, Any]:
            body = self.json_body()
            if not isinstance(body, dict):
                raise HttpError(400, "bad_request", "body must be a JSON object", field="body")
            data = {"title": body.get("title"), "message": body.get("message"), "level": body.get("level", "info")}
            try:
                validate_event("system.announcement", data)
            except FieldError as exc:
                field = exc.field.removeprefix("data.")
                raise HttpError(400, "bad_request", exc.message.replace(exc.field, field, 1), field=field) from None
            answer = await self.gateway.publish([channels.SYSTEM], "system.announcement", data, None)
            await self.audit(identity, "broadcast", channels.SYSTEM, title=str(data["title"])[:80], level=data["level"])
            return answer

        await self.run(broadcast)


class LogLevelHandler(AdminHandler):
    """``GET``: this node's level and followed users. ``POST {"level", "user"?}``: on
    every node, the level, or (with ``user``) follow that user's frames at debug
    (``level`` debug) or stop (any other level)."""

    async def get(self) -> None:
        async def level(_: Identity) -> dict[str, Any]:
            return {"level": TRACING.level(), "followed": sorted(TRACING.followed), "node": self.gateway.node_id}

        await self.run(level)

    async def post(self) -> None:
        async def change(identity: Identity) -> dict[str, Any]:
            body = self.json_body()
            if not isinstance(body, dict):
                raise HttpError(400, "bad_request", "body must be a JSON object", field="body")
            level, user = body.get("level"), body.get("user")
            if level not in LEVELS:
                raise HttpError(400, "bad_request", f"level must be one of {', '.join(LEVELS)}", field="level")
            if user is not None and not isinstance(user, str):
                raise HttpError(400, "bad_request", "user must be a string", field="user")
            if user is not None:
                valid_user(user, "user")
            await self.audit(identity, "log_level", f"user:{user}" if user is not None else "nodes", level=level)
            await self.gateway.cluster.set_log_level(level, user)
            return {"level": level, "user": user}

        await self.run(change)


class AuditHandler(AdminHandler):
    """``GET /admin/api/audit?limit=``: the newest admin actions, the same on every node."""

    async def get(self) -> None:
        async def entries(_: Identity) -> dict[str, Any]:
            return {"entries": await self.gateway.engine.audit_list(self.whole_number("limit", 100, 1, 1000))}

        await self.run(entries)
