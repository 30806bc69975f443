"""Tokens for connections: the one place that turns a token into what a connection
may do, and says until when.

A connection's identity comes from a user token on the URL (checked before the
upgrade), in an ``auth`` frame, or in a ``refresh``; channels beyond the user's own come
from the token's claims or from a subscription token. Each kind of token does only what
it was issued for: a subscription token never opens a session, and a ``refresh`` that
carries fewer rights ends the subscriptions the new token no longer allows. Every
refusal is counted, and the token itself never reaches an error message or a log.
"""

from __future__ import annotations

from typing import Any

from . import channels
from .auth import Authenticator, AuthError
from .channels import ChannelError, Identity
from .metrics import Metrics
from .protocol.errors import CLOSE_UNAUTHORIZED, ProtocolError
from .session import Session


class Access:
    def __init__(self, auth: Authenticator, metrics: Metrics, leeway_s: float) -> None:
        self.auth = auth
        self.metrics = metrics
        self.leeway_s = leeway_s

    async def identity(self, token: str) -> Identity:
        """The user a session token speaks for; ``AuthError`` (counted) otherwise."""
        try:
            return await self.auth.identity(token)
        except AuthError:
            self.metrics.auth_failures += 1
            raise

    async def login(self, token: str, ref: str | None) -> Identity:
        """The identity of an ``auth`` frame: a refusal ends the connection (4001)."""
        try:
            return await self.identity(token)
        except AuthError as exc:
            raise ProtocolError("unauthorized", str(exc), ref=ref, close=CLOSE_UNAUTHORIZED) from None

    async def refresh(self, session: Session, token: str, ref: str | None) -> list[str]:
        """Replace the session's token (same user); return the channels the new token
        no longer allows, which the caller unsubscribes."""
        try:
            identity = await self.identity(token)
        except AuthError as exc:
            raise ProtocolError("unauthorized", str(exc), ref=ref, field="token") from None
        session.refresh(identity, ref)
        lost = []
        for channel in sorted(session.channels):
            if channel in session.granted:
                continue
            try:
                channels.check_subscribe(identity, channel)
            except ChannelError:
                lost.append(channel)
        return lost

    async def grant(self, token: str | None, ref: str | None) -> dict[str, Any] | None:
        """The claims of a subscription token, when one is presented."""
        if token is None:
            return None
        try:
            return await self.auth.grant(token)
        except AuthError as exc:
            self.metrics.auth_failures += 1
            raise ProtocolError("forbidden", f"subscription token refused: {exc}", ref=ref, field="token") from None

    def expires_in(self, session: Session, now: float) -> float | None:
        """Seconds until the session's token has expired (past the leeway)."""
        identity = session.identity
        if identity is None or identity.exp is None:
            return None
        return identity.exp + self.leeway_s - now
