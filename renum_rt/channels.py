"""Channel names and who may receive them: pure rules, no I/O.

| channel            | receivers                                        | stored        |
| ------------------ | ------------------------------------------------ | ------------- |
| ``user:<id>``      | that user (subscribed at connect)                | durable queue |
| ``system``         | every user (subscribed at connect)               | history       |
| ``team:<id>``      | ``teams`` claim lists it, or a subscription token | history       |
| ``execution:<id>`` | a subscription token, or an ``executions`` claim | history + latest state |
| ``admin``          | admin tokens                                     | live only     |
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_ID = r"[A-Za-z0-9_.@|=+\-]{1,128}"
_CHANNEL = re.compile(rf"(?:(user|team|execution):({_ID})|(system)|(admin))")

SYSTEM = "system"
ADMIN = "admin"


class ChannelError(Exception):
    """A channel name is malformed, or the caller may not use that channel."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    user_id: str
    exp: float | None = None
    is_admin: bool = False
    teams: frozenset[str] = field(default_factory=frozenset)
    executions: frozenset[str] = field(default_factory=frozenset)


def parse(channel: object) -> tuple[str, str | None]:
    """Split a channel name into ``(kind, id)``; raise ``ChannelError`` if malformed."""
    if not isinstance(channel, str):
        raise ChannelError("bad_request", "channel must be a string")
    m = _CHANNEL.fullmatch(channel)
    if m is None:
        raise ChannelError(
            "bad_request",
            f"unknown channel {channel[:80]!r}: expected user:<id>, team:<id>, execution:<id>, system or admin",
        )
    if m.group(1):
        return m.group(1), m.group(2)
    return (m.group(3) or m.group(4)), None


def user_channel(user_id: str) -> str:
    return f"user:{user_id}"


def is_durable(channel: str) -> bool:
    """Durable channels keep events until the user acknowledges them."""
    return channel.startswith("user:")


def is_stored(channel: str) -> bool:
    """Stored channels have history for ``since``; ``admin`` is live only."""
    return channel != ADMIN


def keeps_latest(channel: str) -> bool:
    """Channels whose latest event is sent first to every new subscriber."""
    return channel.startswith("execution:")


def check_publishable(channel: object) -> str:
    """Validate a channel named by a backend service on the publish API."""
    kind, _ = parse(channel)
    if kind == ADMIN:
        raise ChannelError("bad_request", "the admin channel carries server statistics only")
    assert isinstance(channel, str)
    return channel


def check_subscribe(identity: Identity, channel: object, grant: dict[str, Any] | None = None) -> str:
    """Return ``channel`` if ``identity`` may receive it, else raise ``ChannelError``.

    ``grant`` is the verified claims of a subscription token, when one was presented:
    a JWT signed with the user-token key with ``sub`` (the user) and ``channel``.
    """
    kind, ident = parse(channel)
    assert isinstance(channel, str)
    if grant is not None and grant.get("channel") == channel and grant.get("sub") == identity.user_id:
        if kind not in (ADMIN, "user"):  # grants open team and execution channels only
            return channel
    if kind == "user":
        if ident == identity.user_id:
            return channel
        raise ChannelError("forbidden", "a user channel belongs to its user only")
    if kind == SYSTEM:
        return channel
    if kind == ADMIN:
        if identity.is_admin:
            return channel
        raise ChannelError("forbidden", "the admin channel needs an admin token")
    if kind == "team" and ident in identity.teams:
        return channel
    if kind == "execution" and ident in identity.executions:
        return channel
    if grant is not None:
        raise ChannelError("forbidden", "the subscription token is for another channel or user")
    raise ChannelError(
        "forbidden", f"{kind} channels need a subscription token (or a '{kind}s' claim in the user token)"
    )
