"""The inbox in this process (memory engine): the reference for the Redis one.

Everything the Redis scripts do atomically happens here between two awaits, so the
same contract suite holds for both.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..ids import NOTIFICATION_SEQ as SEQ_PER_MS
from ..ids import next_id
from ..ids import notification_key as key
from .inbox import IDEMPOTENCY_TTL_S, Change, Counter, Inbox, InboxLimits, Page, Status, UnknownNotification


@dataclass(slots=True)
class _User:
    #: personal notifications: id -> (key, stored fields)
    items: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    status: dict[str, Status] = field(default_factory=dict)
    #: this user's state of global notifications, and the read_all boundary over them
    global_status: dict[str, Status] = field(default_factory=dict)
    boundary: int = -1
    version: int = 0
    #: personal notifications with status unread (kept, not counted on every call)
    unread: int = 0

    def set_status(self, nid: str, status: Status) -> None:
        self.unread += (status == "unread") - (self.status.get(nid) == "unread")
        self.status[nid] = status

    def drop(self, nid: str) -> None:
        self.unread -= self.status.pop(nid) == "unread"
        del self.items[nid]


class MemoryInbox(Inbox):
    def __init__(self, limits: InboxLimits = InboxLimits()) -> None:
        self._limits = limits
        self._last = (0, 0)
        self._users: dict[str, _User] = {}
        self._globals: dict[str, tuple[int, dict[str, Any]]] = {}
        self._global_version = 0
        #: idempotency key -> (expiry in ms, the notification it created)
        self._answers: dict[str, tuple[int, dict[str, Any]]] = {}

    # ---------------------------------------------------------------- helpers

    def _next_id(self, now_ms: int) -> tuple[str, int]:
        ms, seq = next_id(self._last, now_ms)
        if seq >= SEQ_PER_MS:
            ms, seq = ms + 1, 0
        self._last = (ms, seq)
        return f"{ms}-{seq}", ms * SEQ_PER_MS + seq

    def _user(self, user: str, create: bool = True) -> _User:
        """The user's inbox; reads of a user with none get an empty one, not stored,
        so that counting 100,000 users who never had a notification stores nothing."""
        inbox = self._users.get(user)
        if inbox is None:
            inbox = _User()
            if create:
                self._users[user] = inbox
        return inbox

    def _expire(self, inbox: _User, now_ms: int) -> None:
        """Drop what is past its age: ids grow with time, so the oldest come first."""
        horizon = (now_ms - self._limits.max_age_s * 1000) * SEQ_PER_MS
        while inbox.items:
            nid, (k, _) = next(iter(inbox.items.items()))
            if k >= horizon:
                break
            inbox.drop(nid)
        ghorizon = (now_ms - self._limits.global_max_age_s * 1000) * SEQ_PER_MS
        while self._globals:
            gid, (k, _) = next(iter(self._globals.items()))
            if k >= ghorizon:
                break
            del self._globals[gid]
        for gid in [gid for gid in inbox.global_status if gid not in self._globals]:
            del inbox.global_status[gid]

    def _trim(self, inbox: _User) -> None:
        """Past the cap: the oldest dismissed ones go first, then read, then unread."""
        over = len(inbox.items) - self._limits.max_per_user
        for status in ("dismissed", "read", "unread"):
            if over <= 0:
                return
            victims = [nid for nid in inbox.items if inbox.status[nid] == status][:over]
            for nid in victims:
                inbox.drop(nid)
            over -= len(victims)

    def _global_status(self, inbox: _User, gid: str) -> Status:
        state = inbox.global_status.get(gid)
        if state is not None:
            return state
        return "read" if self._globals[gid][0] <= inbox.boundary else "unread"

    def _counter(self, inbox: _User) -> Counter:
        shared = sum(1 for gid in self._globals if self._global_status(inbox, gid) == "unread")
        return Counter(inbox.unread + shared, inbox.version + self._global_version)

    @staticmethod
    def _item(nid: str, stored: dict[str, Any], status: Status) -> dict[str, Any]:
        return {"id": nid, **stored, "status": status}

    # ---------------------------------------------------------------- contract

    def _replayed(self, idempotency_key: str | None, now_ms: int) -> dict[str, Any] | None:
        answer = self._answers.get(idempotency_key) if idempotency_key is not None else None
        return answer[1] if answer is not None and answer[0] > now_ms else None

    def _remember(self, idempotency_key: str | None, notification: dict[str, Any], now_ms: int, ttl_s: int) -> None:
        if idempotency_key is None:
            return
        self._answers[idempotency_key] = (now_ms + ttl_s * 1000, notification)
        if len(self._answers) % 1024 == 0:  # forget expired keys now and then, not on every call
            self._answers = {k: v for k, v in self._answers.items() if v[0] > now_ms}

    async def create(self, users: Sequence[str], fields: dict[str, Any], now_ms: int,
                     idempotency_key: str | None = None, ttl_s: int = IDEMPOTENCY_TTL_S,
                     ) -> tuple[dict[str, Any], dict[str, Counter]]:
        first = self._replayed(idempotency_key, now_ms)
        if first is not None:
            return first, {}
        nid, k = self._next_id(now_ms)
        stored = {**fields, "created_at": now_ms}
        counts = {}
        for user in dict.fromkeys(users):
            inbox = self._user(user)
            self._expire(inbox, now_ms)
            inbox.items[nid] = (k, stored)
            inbox.set_status(nid, "unread")
            self._trim(inbox)
            inbox.version += 1
            counts[user] = self._counter(inbox)
        notification = self._item(nid, stored, "unread")
        self._remember(idempotency_key, notification, now_ms, ttl_s)
        return notification, counts

    async def announce(self, fields: dict[str, Any], now_ms: int, idempotency_key: str | None = None,
                       ttl_s: int = IDEMPOTENCY_TTL_S) -> tuple[dict[str, Any], bool]:
        first = self._replayed(idempotency_key, now_ms)
        if first is not None:
            return first, False
        nid, k = self._next_id(now_ms)
        gid = "g" + nid
        stored = {**fields, "created_at": now_ms}
        self._globals[gid] = (k, stored)
        while len(self._globals) > self._limits.max_global:  # the oldest first: ids grow
            del self._globals[next(iter(self._globals))]
        self._global_version += 1
        notification = self._item(gid, stored, "unread")
        self._remember(idempotency_key, notification, now_ms, ttl_s)
        return notification, True

    async def list(self, user: str, status: Status | None, limit: int, cursor: str | None, now_ms: int) -> Page:
        inbox = self._user(user, create=False)
        self._expire(inbox, now_ms)
        wanted = ("unread", "read") if status is None else (status,)
        below = key(cursor) if cursor is not None else None
        # both sources newest first and lazily: a page costs its size, not the inbox's
        personal = (
            (k, self._item(nid, stored, inbox.status[nid]))
            for nid, (k, stored) in reversed(inbox.items.items())
            if inbox.status[nid] in wanted and (below is None or k < below)
        )
        shared = (
            (k, self._item(gid, stored, self._global_status(inbox, gid)))
            for gid, (k, stored) in reversed(self._globals.items())
            if self._global_status(inbox, gid) in wanted and (below is None or k < below)
        )
        merged = heapq.merge(personal, shared, key=lambda row: row[0], reverse=True)
        rows = list(itertools.islice(merged, limit + 1))  # one more tells whether there is a next page
        page = [item for _, item in rows[:limit]]
        next_cursor = page[-1]["id"] if len(rows) > limit else None
        return Page(page, next_cursor, self._counter(inbox))

    async def mark(self, user: str, ids: Sequence[str], status: Literal["read", "dismissed"], now_ms: int) -> Change:
        inbox = self._user(user)
        self._expire(inbox, now_ms)
        unknown = [nid for nid in ids if nid not in inbox.items and nid not in self._globals]
        if unknown:
            raise UnknownNotification(unknown)
        changed = []
        for nid in dict.fromkeys(ids):
            is_global = nid in self._globals
            current = self._global_status(inbox, nid) if is_global else inbox.status[nid]
            if current == status or current == "dismissed":
                continue
            if is_global:
                inbox.global_status[nid] = status
            else:
                inbox.set_status(nid, status)
            changed.append(nid)
        if changed:
            inbox.version += 1
        return Change(changed, status, self._counter(inbox))

    async def read_all(self, user: str, before: str | None, now_ms: int) -> Change:
        inbox = self._user(user)
        self._expire(inbox, now_ms)
        upto = key(before) if before is not None else None
        changed = [
            nid for nid, (k, _) in inbox.items.items() if inbox.status[nid] == "unread" and (upto is None or k <= upto)
        ]
        for nid in changed:
            inbox.set_status(nid, "read")
        read_globals = [
            gid
            for gid, (k, _) in self._globals.items()
            if self._global_status(inbox, gid) == "unread" and (upto is None or k <= upto)
        ]
        # one boundary marks read every global notification up to it, however many there are
        last = self._last[0] * SEQ_PER_MS + self._last[1]
        inbox.boundary = max(inbox.boundary, last if upto is None else upto)
        changed += read_globals
        if changed:
            inbox.version += 1
        return Change(sorted(changed, key=key), "read", self._counter(inbox))

    async def unread(self, users: Sequence[str], now_ms: int) -> dict[str, Counter]:
        counts = {}
        for user in users:
            inbox = self._user(user, create=False)
            self._expire(inbox, now_ms)
            counts[user] = self._counter(inbox)
        return counts
