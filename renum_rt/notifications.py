"""Notifications: where they come from, and how every tab learns of them.

Sources:
- ``POST /api/v1/notifications`` (a backend creates them);
- events the backend already publishes, when ``notifications_from_events`` is on: an
  ``execution.status`` that reaches ``completed``, ``failed`` or ``cancelled``, and
  ``team.created`` / ``team.updated``, create one for each user of the publish's
  ``users`` list (a publish to a channel only creates none);
- ``system.announcement`` (the broadcast API and the admin console): one *global*
  notification, stored once, unread for every user until each reads it.

After each change the inbox answers with the unread count and its version; the node
publishes ``notification.created`` / ``notification.updated`` on the user channel (or
``system``) and pushes ``unread_count`` to every connection of the user on every node,
through the engine's control messages. A node keeps the newest version per connection,
so counts that cross on the way never move a badge backwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from . import channels
from .connections import Registry
from .engines import Engine, EngineUnavailable
from .engines.inbox import Change, Counter, Status
from .logs import log
from .metrics import Metrics
from .protocol.events import NOTIFICATION_CONTENT

#: execution statuses that end an execution, with the level of their notification
FINAL = {"completed": "success", "failed": "error", "cancelled": "warning"}
#: what the statuses read as in a title
TITLES = {"completed": "Execution completed", "failed": "Execution failed", "cancelled": "Execution cancelled"}


def from_event(name: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """The notification an event creates for its users, or None."""
    if name == "execution.status" and data.get("status") in FINAL:
        status = data["status"]
        execution = str(data.get("execution_id"))
        error = data.get("error") if isinstance(data.get("error"), dict) else None
        body = (error or {}).get("message") if status == "failed" else None
        return {
            "title": TITLES[status],
            "body": body or f"Execution {execution} {status}.",
            "level": FINAL[status],
            "category": "execution",
            "data": {"execution_id": execution, "team_id": data.get("team_id"), "status": status,
                     **({"error": error} if error else {})},
            "link": f"/executions/{execution}",
        }
    if name in ("team.created", "team.updated"):
        team = str(data.get("team_id"))
        verb = "created" if name == "team.created" else "updated"
        return {
            "title": f"Team {data.get('name') or team} {verb}",
            "body": None,
            "level": "info",
            "category": "team",
            "data": {"team_id": team, **({"changes": data["changes"]} if data.get("changes") else {})},
            "link": f"/teams/{team}",
        }
    return None


def from_announcement(data: dict[str, Any]) -> dict[str, Any]:
    return {"title": data["title"], "body": data.get("message"), "level": data.get("level", "info"),
            "category": "announcement", "data": None, "link": None}


def complete(fields: dict[str, Any]) -> dict[str, Any]:
    """Every notification field, None where the creator gave none."""
    return {name: fields.get(name) for name in NOTIFICATION_CONTENT}


class Notifications:
    def __init__(self, engine: Engine, registry: Registry, spawn: Callable[[Any], None], metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.metrics = metrics
        self.registry = registry
        self._spawn = spawn
        #: None: no recount running; False: one running; True: run again when it ends
        self._recount_wanted: bool | None = None
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ---------------------------------------------------------------- sources

    async def create(self, users: Sequence[str], fields: dict[str, Any],
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """Store one notification per user (durable before this returns), then tell
        their connections. With an ``idempotency_key`` already used, return the first
        notification and do nothing. Raises ``EngineUnavailable`` when it could not be
        stored."""
        notification, counts = await self.engine.inbox.create(users, complete(fields), self._now_ms(),
                                                               idempotency_key)
        if counts:
            self.metrics.notifications_created += len(counts)
            log(logging.INFO, "notification", users=len(counts), id=notification["id"],
                category=fields.get("category"))
            await self._tell([channels.user_channel(u) for u in counts], "notification.created", notification,
                             counts)
        return notification

    async def announce(self, fields: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """One global notification for every user, stored once."""
        notification, fresh = await self.engine.inbox.announce(complete(fields), self._now_ms(), idempotency_key)
        if not fresh:
            return notification
        self.metrics.notifications_created += 1
        log(logging.INFO, "announcement", id=notification["id"])
        try:
            await self.engine.publish([channels.SYSTEM], "notification.created", notification, self._now_ms())
            await self.engine.control({"op": "unread_recount"})
        except EngineUnavailable:
            log(logging.WARNING, "announcement stored but not pushed live", id=notification["id"])
        return notification

    async def on_published(self, targets: Sequence[str], name: str, data: dict[str, Any],
                           idempotency_key: str | None, from_events: bool) -> None:
        """The notification a published event creates, if any. A retried publish (same
        ``idempotency_key``) creates it once: its key is derived from the publish's."""
        key = f"{idempotency_key}:notification" if idempotency_key is not None else None
        if name == "system.announcement" and channels.SYSTEM in targets:
            await self.announce(from_announcement(data), key)
            return
        fields = from_event(name, data) if from_events else None
        users = [t.removeprefix("user:") for t in targets if t.startswith("user:")]
        if fields is not None and users:
            await self.create(users, fields, key)

    # ---------------------------------------------------------------- a user's operations

    async def page(self, user: str, status: Status | None, limit: int, cursor: str | None) -> dict[str, Any]:
        page = await self.engine.inbox.list(user, status, limit, cursor, self._now_ms())
        return {"items": page.items, "next_cursor": page.next_cursor, "unread": page.unread.count}

    async def mark(self, user: str, ids: Sequence[str], status: Literal["read", "dismissed"]) -> Change:
        change = await self.engine.inbox.mark(user, ids, status, self._now_ms())
        await self._changed(user, change)
        return change

    async def read_all(self, user: str, before: str | None) -> Change:
        change = await self.engine.inbox.read_all(user, before, self._now_ms())
        await self._changed(user, change)
        return change

    async def _changed(self, user: str, change: Change) -> None:
        if change.status == "read":
            self.metrics.notifications_read += len(change.ids)
        if change.ids:
            await self._tell([channels.user_channel(user)], "notification.updated",
                             {"ids": change.ids, "status": change.status}, {user: change.unread})

    async def _tell(self, targets: list[str], name: str, data: dict[str, Any], counts: dict[str, Counter]) -> None:
        """The event on the users' channels, then their counts to every node. The
        change is stored already: if this fails, clients see it on their next list or
        connect, so it is logged, not raised."""
        try:
            await self.engine.publish(targets, name, data, self._now_ms())
            await self.engine.control({"op": "unread", "counts": {u: [c.count, c.version] for u, c in counts.items()}})
        except EngineUnavailable:
            log(logging.WARNING, "notification change stored but not pushed live", event=name, users=len(counts))

    # ---------------------------------------------------------------- this node's connections

    def on_control(self, message: dict[str, Any]) -> None:
        """Counts for users with connections on this node, or a recount of all of them."""
        if message.get("op") == "unread":
            for user, (count, version) in dict(message.get("counts", {})).items():
                self.push(user, Counter(int(count), int(version)))
        elif message.get("op") == "unread_recount":
            if self._recount_wanted is None:
                self._recount_wanted = False
                self._spawn(self.recount())
            else:  # one is running: one more after it covers every announcement so far
                self._recount_wanted = True

    async def recount(self) -> None:
        """Every local user's count, after announcements. A burst of announcements costs
        at most two recounts, not one each: the running one, then one more."""
        try:
            while True:
                users = list(self.registry.by_user)
                try:
                    counts = await self.engine.inbox.unread(users, self._now_ms())
                except EngineUnavailable:
                    log(logging.WARNING, "unread recount failed: the store is unreachable", users=len(users))
                    return
                for user, counter in counts.items():
                    self.push(user, counter)
                if not self._recount_wanted:
                    return
                self._recount_wanted = False
        finally:
            self._recount_wanted = None

    def push(self, user: str, counter: Counter) -> None:
        """``unread_count`` to each connection of ``user`` here that has not seen a newer one."""
        for conn in self.registry.of_user(user):
            session = conn.session
            if counter.version > session.unread_version:
                session.unread_version = counter.version
                conn.send({"type": "unread_count", "count": counter.count})
