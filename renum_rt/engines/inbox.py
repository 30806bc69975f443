"""The notification inbox: what each engine stores for it, and the rules both follow.

Modelled on the inboxes people use in products, not on a chat log: every notification
is ``unread``, ``read`` or ``dismissed``; the unread badge counts exactly the unread
ones, on every device; ``read_all`` marks everything up to a boundary as read.

Two kinds of notification share one ordering (their ids come from one generator):

- *personal* ones, stored once per user (``create``);
- *global* ones (announcements), stored **once** for everybody (``announce``), however
  many users there are, and merged at read time with each user's own state: the ids the
  user read or dismissed, and a ``read_all`` boundary. A user who never connected sees
  every retained announcement as unread.

Ids are ``"<ms>-<seq>"`` (global ones ``"g<ms>-<seq>"``); ``ids.notification_key`` turns
one into an integer that orders them (and fits a Redis sorted-set score exactly). Each user keeps at
most ``max_per_user`` personal notifications, none older than ``max_age_s``; when a new
one would pass the cap, dismissed ones go first, then read ones, then the oldest unread.

Every change bumps a version; ``Counter`` carries the unread count with the version of
the state it was read from, so a node that receives counts out of order (two changes
racing) keeps the newest.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["unread", "read", "dismissed"]
STATUSES: tuple[Status, ...] = ("unread", "read", "dismissed")
#: how long an idempotency key of a create or an announcement is remembered
IDEMPOTENCY_TTL_S = 24 * 3600


class UnknownNotification(Exception):
    """An id that is not in this user's inbox (unknown, expired, or another user's):
    the whole operation is refused and nothing changes."""

    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(f"not in this inbox: {', '.join(i[:40] for i in ids[:5])}")
        self.ids = list(ids)


@dataclass(frozen=True, slots=True)
class InboxLimits:
    max_per_user: int = 1000
    max_age_s: int = 90 * 24 * 3600
    max_global: int = 200
    global_max_age_s: int = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Counter:
    """A user's unread count and the version of the state it was read from."""

    count: int
    version: int


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a user's inbox, newest first."""

    items: list[dict[str, Any]]
    next_cursor: str | None
    unread: Counter


@dataclass(frozen=True, slots=True)
class Change:
    """What an operation changed: the ids whose status it set, and the new count."""

    ids: list[str]
    status: Status
    unread: Counter


class Inbox(abc.ABC):
    """Per-user notifications with read/dismissed state (both engines)."""

    @abc.abstractmethod
    async def create(self, users: Sequence[str], fields: dict[str, Any], now_ms: int,
                     idempotency_key: str | None = None, ttl_s: int = IDEMPOTENCY_TTL_S,
                     ) -> tuple[dict[str, Any], dict[str, Counter]]:
        """Store one notification for each user (one id for all of them); return the
        notification (status ``unread``) and each user's new unread count. With an
        ``idempotency_key`` already used (within ``ttl_s``), store nothing and return the
        first notification with no counts."""

    @abc.abstractmethod
    async def announce(self, fields: dict[str, Any], now_ms: int, idempotency_key: str | None = None,
                       ttl_s: int = IDEMPOTENCY_TTL_S) -> tuple[dict[str, Any], bool]:
        """Store one global notification for every user, once; return it, and False
        when ``idempotency_key`` was already used (nothing stored then)."""

    @abc.abstractmethod
    async def list(self, user: str, status: Status | None, limit: int, cursor: str | None, now_ms: int) -> Page:
        """Newest first: ``status`` None lists unread and read ones (not dismissed);
        ``cursor`` is the ``next_cursor`` of the previous page."""

    @abc.abstractmethod
    async def mark(self, user: str, ids: Sequence[str], status: Literal["read", "dismissed"], now_ms: int) -> Change:
        """Set ``status`` on ``ids`` (all of them in this user's inbox, or
        ``UnknownNotification`` and nothing changes). Reading a dismissed one leaves it
        dismissed; doing it twice changes nothing the second time."""

    @abc.abstractmethod
    async def read_all(self, user: str, before: str | None, now_ms: int) -> Change:
        """Mark read every unread notification up to ``before`` (inclusive; all when
        None); newer ones stay unread."""

    @abc.abstractmethod
    async def unread(self, users: Sequence[str], now_ms: int) -> dict[str, Counter]:
        """The unread count of each user."""
