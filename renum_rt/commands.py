"""What each client frame does, once the session has validated it: one coroutine per
frame type, looked up in ``COMMANDS``.

The session (``session.py``) decides whether a frame may be served at all (rate, size,
shape, authentication); these functions serve it against the gateway. ``auth`` is not
here: it is handled before a connection is admitted (``Gateway.login``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

from . import channels
from .connections import Connection
from .engines import EngineUnavailable
from .engines.base import AckRefused
from .engines.inbox import UnknownNotification
from .logs import log
from .protocol import ClientFrame, ProtocolError
from .subscriptions import unavailable

if TYPE_CHECKING:
    from .gateway import Gateway

Command = Callable[["Gateway", Connection, ClientFrame], Awaitable[None]]


def _not_subscribed(channel: str, ref: str | None) -> ProtocolError:
    return ProtocolError("not_found", f"not subscribed to {channel[:80]!r}", ref=ref, field="channel")


async def ping(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    conn.send({"type": "pong", "ref": frame.ref})


async def subscribe(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    """Authorize, replay what the client missed, then go live."""
    session, ref = conn.session, frame.ref
    channel, since = frame.fields["channel"], frame.get("since")
    grant = await gateway.access.grant(frame.get("token"), ref)
    session.check_subscribe(channel, grant, ref)
    log(logging.INFO, "subscribe", conn=session.id, user=session.user_id, channel=channel, since=since)
    first = channel not in session.channels
    await gateway.subscriptions.attach(
        conn,
        channel,
        since=since,
        history=since is not None,
        latest=first and since is None and channels.keeps_latest(channel),
        ref=ref,
        announce={"type": "subscribed", "ref": ref, "channel": channel},
    )
    if grant is not None and channel in session.channels:
        session.granted.add(channel)


async def unsubscribe(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    channel = frame.fields["channel"]
    if channel not in conn.session.channels:
        raise _not_subscribed(channel, frame.ref)
    gateway.subscriptions.detach(conn, channel)
    conn.send({"type": "unsubscribed", "ref": frame.ref, "channel": channel})


async def ack(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    """Move the durable cursor of the user's own channel; other channels only confirm
    (their history is shared, there is no per-user cursor to move)."""
    channel, event_id, ref = frame.fields["channel"], frame.fields["id"], frame.ref
    if channel not in conn.session.channels:
        raise _not_subscribed(channel, ref)
    if channels.is_durable(channel):
        try:
            await gateway.engine.ack(channel, event_id)
        except EngineUnavailable:
            raise unavailable(ref) from None
        except AckRefused as exc:
            raise ProtocolError("bad_request", str(exc), ref=ref, field="id") from None
    if ref is not None:
        conn.send({"type": "ok", "ref": ref})


async def refresh(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    """A fresh token for the same user; channels it no longer allows are dropped, each
    with a ``forbidden`` error naming it."""
    lost = await gateway.access.refresh(conn.session, frame.fields["token"], frame.ref)
    for channel in lost:
        gateway.subscriptions.detach(conn, channel)
        conn.send({**ProtocolError("forbidden", "the refreshed token does not allow this channel: unsubscribed",
                                   field="channel").frame(), "channel": channel})
    conn.send({"type": "ok", "ref": frame.ref})


async def _inbox(gateway: Gateway, conn: Connection, frame: ClientFrame, work: Awaitable[object]) -> object:
    """Run an inbox operation of the connection's user; its failures as error frames."""
    try:
        return await work
    except EngineUnavailable:
        raise unavailable(frame.ref) from None
    except UnknownNotification as exc:
        raise ProtocolError("not_found", str(exc), ref=frame.ref, field="ids") from None


async def notifications_list(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    """One page of the inbox, newest first; ``limit`` is capped, not refused."""
    user = conn.session.user_id
    assert user is not None
    limit = min(
        frame.get("limit", gateway.settings.notifications_page_default), gateway.settings.notifications_page_max
    )
    page = await _inbox(
        gateway, conn, frame, gateway.notifications.page(user, frame.get("status"), limit, frame.get("cursor"))
    )
    conn.send({"type": "notifications", "ref": frame.ref, **page})  # type: ignore[dict-item]


async def notifications_read(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    await _mark(gateway, conn, frame, "read")


async def notifications_dismiss(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    await _mark(gateway, conn, frame, "dismissed")


async def _mark(gateway: Gateway, conn: Connection, frame: ClientFrame, status: Literal["read", "dismissed"]) -> None:
    user = conn.session.user_id
    assert user is not None
    await _inbox(gateway, conn, frame, gateway.notifications.mark(user, frame.fields["ids"], status))
    conn.send({"type": "ok", "ref": frame.ref})


async def notifications_read_all(gateway: Gateway, conn: Connection, frame: ClientFrame) -> None:
    user = conn.session.user_id
    assert user is not None
    await _inbox(gateway, conn, frame, gateway.notifications.read_all(user, frame.get("before")))
    conn.send({"type": "ok", "ref": frame.ref})


COMMANDS: dict[str, Command] = {
    "ping": ping,
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "ack": ack,
    "refresh": refresh,
    "notifications.list": notifications_list,
    "notifications.read": notifications_read,
    "notifications.dismiss": notifications_dismiss,
    "notifications.read_all": notifications_read_all,
}
