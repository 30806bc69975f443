"""``GET /demo/token``: tokens for the demo pages, in development mode only.

With ``--dev`` the demo pages (``/demo/``, ``/demo/executions/<id>``) sign in as
``dev-user`` without a login step: they ask this route for a user token, and for a
subscription token of the execution they show (``?channel=execution:<id>``), the way a
real frontend asks its own backend. Outside dev mode it answers 404 and the pages ask
the visitor for a token instead.
"""

from __future__ import annotations

from .. import channels
from ..auth import issue_token
from .base import HttpError, JsonHandler

DEV_USER = "dev-user"
TTL_S = 3600


class DemoTokenHandler(JsonHandler):
    def get(self) -> None:
        settings = self.gateway.settings
        try:
            if not settings.dev:
                raise HttpError(404, "not_found", "demo tokens are given in development mode only (--dev)")
            body = {"user": DEV_USER, "token": issue_token(settings.jwt_secret, DEV_USER, TTL_S, teams=["dev-team"]),
                    "expires_in": TTL_S}
            channel = self.get_query_argument("channel", None)
            if channel is not None:
                try:
                    kind, _ = channels.parse(channel)
                except channels.ChannelError as exc:
                    raise HttpError(400, "bad_request", exc.message, field="channel") from None
                if kind not in ("execution", "team"):
                    raise HttpError(400, "bad_request", "subscription tokens are for execution: and team: channels",
                                    field="channel")
                body["grant"] = issue_token(settings.jwt_secret, DEV_USER, TTL_S, channel=channel)
        except HttpError as error:
            self.fail(error)
            return
        self.reply(body)
