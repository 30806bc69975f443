"""Admin API: statistics, connections, disconnect a user, broadcast an announcement.

Every route needs ``Authorization: Bearer <admin JWT>``: 401 without a valid token,
403 with a valid non-admin one. The page ``/admin`` itself is static HTML that asks
for the token and calls these routes; it holds no data of its own.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import channels
from ..auth import AuthError
from ..channels import Identity
from ..engines import EngineUnavailable
from ..logs import log
from ..protocol.events import FieldError, validate_event
from .base import HttpError, JsonHandler



class AdminHandler(JsonHandler):
    async def admin(self) -> Identity:
        try:
            identity = await self.gateway.access.identity(self.bearer())
        except AuthError as exc:
            raise HttpError(401, "unauthorized", str(exc)) from None
        if not identity.is_admin:
            raise HttpError(403, "forbidden", "an admin token is needed")
        return identity

    async def run(self, action: Any) -> None:
        try:
            identity = await self.admin()
            self.reply(await action(identity))
        except HttpError as error:
            self.fail(error)
        except EngineUnavailable as exc:
            self.fail(HttpError(503, "unavailable", "the event store is unreachable; retry", cause=exc))


class StatsHandler(AdminHandler):
    async def get(self) -> None:
        async def stats(_: Identity) -> dict[str, Any]:
            return await self.gateway.cluster.stats()

        await self.run(stats)


class ConnectionsHandler(AdminHandler):
    async def get(self) -> None:
        async def connections(_: Identity) -> dict[str, Any]:
            try:
                limit = min(max(1, int(self.get_query_argument("limit", "1000"))), 10000)
            except ValueError:
                raise HttpError(400, "bad_request", "limit must be a whole number", field="limit") from None
            return await self.gateway.cluster.all_connections(limit)

        await self.run(connections)


class DisconnectHandler(AdminHandler):
    async def post(self, user_id: str) -> None:
        async def disconnect(identity: Identity) -> dict[str, Any]:
            try:
                channels.parse(channels.user_channel(user_id))
            except channels.ChannelError:
                raise HttpError(400, "bad_request", "not a valid user id", field="user_id") from None
            await self.gateway.cluster.disconnect_user(user_id, by=identity.user_id)
            return {"disconnected": user_id}

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
            log(logging.WARNING, "admin broadcast", by=identity.user_id, title=str(data["title"])[:80])
            return await self.gateway.publish([channels.SYSTEM], "system.announcement", data, None)

        await self.run(broadcast)
