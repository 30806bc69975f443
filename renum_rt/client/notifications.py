"""``RealtimeClient.notifications``: the user's inbox, over the client's connection.

The same operations as the browser library's ``rt.notifications``; each waits for the
server's reply and raises ``RealtimeError`` (``not_found`` for an id that is not in this
user's inbox) or ``ConnectionClosedError`` like every other request. The unread count
the server pushes is on ``RealtimeClient.unread_count``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .realtime import RealtimeClient


class Notifications:
    def __init__(self, client: RealtimeClient) -> None:
        self._client = client

    async def list(self, status: str | None = None, limit: int | None = None,
                   cursor: str | None = None) -> dict[str, Any]:
        """One page, newest first: ``{"items", "next_cursor", "unread"}``. ``status`` is
        ``unread``, ``read`` or ``dismissed`` (default: unread and read); pass the
        previous page's ``next_cursor`` as ``cursor`` for the next one."""
        fields = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor)) if v is not None}
        reply = await self._client.request("notifications.list", **fields)
        return {k: reply[k] for k in ("items", "next_cursor", "unread")}

    async def read(self, ids: Sequence[str]) -> None:
        """Mark notifications read (dismissed ones stay dismissed)."""
        await self._client.request("notifications.read", ids=list(ids))

    async def dismiss(self, ids: Sequence[str]) -> None:
        await self._client.request("notifications.dismiss", ids=list(ids))

    async def read_all(self, before: str | None = None) -> None:
        """Mark everything read, or everything up to ``before`` (a notification id)."""
        await self._client.request("notifications.read_all", **({"before": before} if before else {}))
