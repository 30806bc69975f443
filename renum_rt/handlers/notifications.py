"""The notification API for backend services (API key, like publishing).

- ``POST /api/v1/notifications``: create one notification per user (``Idempotency-Key``
  honoured); 200 ``{"notification": {...}}`` once it is stored.
- ``GET /api/v1/users/<id>/notifications?status=&limit=&cursor=``: one page of a user's
  inbox, as the ``notifications.list`` frame answers it.
- ``POST /api/v1/users/<id>/notifications/read`` and ``.../dismiss`` with ``{"ids": [...]}``,
  ``.../read_all`` with an optional ``{"before": id}``: the user's operations, done for
  them; every connection of the user sees the new unread count. An id that is not in
  that user's inbox is 404 ``not_found`` and nothing changes.
"""

from __future__ import annotations

from typing import Any

from .. import channels
from ..engines import EngineUnavailable
from ..engines.inbox import UnknownNotification
from ..ids import is_notification_id
from ..protocol.events import FieldError, validate_notification
from ..protocol.frames import MAX_NOTIFICATION_IDS
from .api import ServiceHandler, unavailable
from .base import HttpError

STATUSES = ("unread", "read", "dismissed")


def _user(user_id: str) -> str:
    try:
        channels.parse(channels.user_channel(user_id))
    except channels.ChannelError:
        raise HttpError(400, "bad_request", "not a valid user id", field="user_id") from None
    return user_id


class CreateNotificationHandler(ServiceHandler):
    async def post(self) -> None:
        try:
            try:
                users, fields = validate_notification(self.body(),
                                                      max_users=self.gateway.settings.max_users_per_publish)
            except FieldError as exc:
                raise HttpError(400, "bad_request", exc.message, field=exc.field) from None
            try:
                notification = await self.gateway.notifications.create(users, fields, self.idempotency_key())
            except EngineUnavailable as exc:
                raise unavailable(exc) from None
        except HttpError as error:
            self.fail(error)
            return
        self.reply({"notification": notification})


class UserNotificationsHandler(ServiceHandler):
    async def get(self, user_id: str) -> None:
        settings = self.gateway.settings
        try:
            user = _user(user_id)
            status = self.get_query_argument("status", None)
            if status is not None and status not in STATUSES:
                raise HttpError(400, "bad_request", "status must be one of unread, read, dismissed", field="status")
            raw_limit = self.get_query_argument("limit", str(settings.notifications_page_default))
            if not raw_limit.isdigit() or int(raw_limit) < 1:
                raise HttpError(400, "bad_request", "limit must be a whole number from 1", field="limit")
            cursor = self.get_query_argument("cursor", None)
            if cursor is not None and not is_notification_id(cursor):
                raise HttpError(400, "bad_request", "cursor must be the next_cursor of a previous page",
                                field="cursor")
            limit = min(int(raw_limit), settings.notifications_page_max)
            try:
                page = await self.gateway.notifications.page(user, status, limit, cursor)  # type: ignore[arg-type]
            except EngineUnavailable as exc:
                raise unavailable(exc) from None
        except HttpError as error:
            self.fail(error)
            return
        self.reply(page)


class UserNotificationActionHandler(ServiceHandler):
    async def post(self, user_id: str, action: str) -> None:
        try:
            user = _user(user_id)
            body: Any = self.body() if self._body else {}
            if not isinstance(body, dict):
                raise HttpError(400, "bad_request", "the body must be a JSON object", field="body")
            notifications = self.gateway.notifications
            try:
                if action == "read_all":
                    before = body.get("before")
                    if before is not None and not is_notification_id(before):
                        raise HttpError(400, "bad_request", "before must be a notification id", field="before")
                    change = await notifications.read_all(user, before)
                else:
                    ids = body.get("ids")
                    if not (isinstance(ids, list) and 0 < len(ids) <= MAX_NOTIFICATION_IDS
                            and all(isinstance(i, str) and i for i in ids)):
                        raise HttpError(400, "bad_request",
                                        f"ids must be a list of 1 to {MAX_NOTIFICATION_IDS} notification ids",
                                        field="ids")
                    change = await notifications.mark(user, ids, "read" if action == "read" else "dismissed")
            except EngineUnavailable as exc:
                raise unavailable(exc) from None
            except UnknownNotification as exc:
                raise HttpError(404, "not_found", str(exc), field="ids") from None
        except HttpError as error:
            self.fail(error)
            return
        self.reply({"changed": change.ids, "status": change.status, "unread": change.unread.count})
