"""The live feed from Redis pub/sub: one connection kept subscribed to a fixed set of
channels (``ChannelFeed``), and the fan-out message format shared by every topology.

A fan-out message holds one or more events (those one script call stored), separated by
an empty line; each is the event frame's tail, then a channel line and an id line per
channel (``tail \\n channel \\n id [\\n channel \\n id ...]``; JSON has no raw newline).
Each node builds each channel's frame from those parts (``event_frame_head(channel) + id
+ tail``): the payload is never encoded again.

``ChannelFeed`` is the feed of one primary (``fanout`` and ``control``) and, in a
cluster, the feed of ``control`` alone. After any interruption it subscribes again with
capped exponential backoff and calls ``on_back(mark)``: what was published meanwhile is
in history only, and ``mark`` is an id (Redis clock) up to which the feed delivered
everything: the last event id it carried, or the Redis time of its last subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..logs import log
from ..protocol import event_frame_head
from .base import EventListener
from .redis_connect import TIMEOUT_S

#: what a subscribed channel's messages go to; returns the feed's new mark, if any
Handler = Callable[[bytes], str | None]

_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 2.0
#: How long the reader waits for a message before checking the connection's health.
POLL_S = 1.0
#: how far the local clock may be ahead of Redis's, for the mark before Redis answered once
_CLOCK_MARGIN_S = 5.0
#: characters of an error kept in a log line
_REASON_MAX = 200


def reason(exc: BaseException) -> str:
    """What went wrong, for the log and the exception: the error code Redis sent (redis-py
    strips it from the message) or the exception's type, then the start of its message.
    A pipeline's error quotes its failed command, values included: only the error is kept."""
    code = getattr(exc, "status_code", None) or type(exc).__name__
    message = str(exc).rpartition(" of pipeline caused error: ")[2]
    return f"{code} {message}"[:_REASON_MAX].strip()


def local_mark() -> str:
    """A mark on the local clock, early enough to be before any Redis clock we meet."""
    return f"{int((time.time() - _CLOCK_MARGIN_S) * 1000)}-0"


async def redis_mark(client: redis.asyncio.Redis) -> str:
    seconds, micros = await client.time()
    return f"{seconds * 1000 + micros // 1000}-0"


@functools.lru_cache(maxsize=4096)
def _head(channel: str) -> bytes:
    return event_frame_head(channel).encode()


def fan_out(data: bytes, on_event: EventListener) -> str | None:
    """Hand each event and channel of one fan-out message to ``on_event``; return the last
    id. One channel's failing listener must not cost the others their event."""
    last = None
    for event in data.split(b"\n\n"):
        tail, *targets = event.split(b"\n")
        for channel_bytes, id_bytes in zip(targets[::2], targets[1::2], strict=True):
            channel, last = channel_bytes.decode(), id_bytes.decode()
            try:
                on_event(channel, last, _head(channel) + id_bytes + tail)
            except Exception:
                log(logging.ERROR, "engine listener failed", channel=channel, exc_info=True)
    return last


class ChannelFeed:
    """A pub/sub connection kept subscribed to ``handlers``' channels."""

    def __init__(self, client: Callable[[], Awaitable[redis.asyncio.Redis]], handlers: Mapping[bytes, Handler],
                 on_back: Callable[[str], None], owns_client: bool = False) -> None:
        """``client`` gives the client to subscribe with (a new one each time, closed by
        the feed, when ``owns_client``)."""
        self._client = client
        self._owns_client = owns_client
        self._handlers = handlers
        self._on_back = on_back
        self.mark = local_mark()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe now if Redis answers, so that the feed flows as soon as this returns;
        otherwise keep trying in the background."""
        try:
            pubsub: PubSub | None = await self._subscribe()
        except (RedisError, OSError) as exc:
            log(logging.WARNING, "redis pub/sub unavailable at start; retrying in the background", reason=reason(exc))
            pubsub = None
        self._task = asyncio.create_task(self._listen(pubsub))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _subscribe(self) -> PubSub:
        """A pub/sub connection subscribed to every channel, confirmed by Redis."""
        client = await self._client()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(*self._handlers)
            confirmed = 0
            deadline = asyncio.get_running_loop().time() + TIMEOUT_S
            while confirmed < len(self._handlers):
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise RedisTimeoutError("redis did not confirm the subscription")
                message = await pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] == "subscribe":
                    confirmed += 1
                elif message is not None:
                    self._dispatch(message)
            self.mark = await redis_mark(client)
        except BaseException:
            await self._release(pubsub)
            raise
        return pubsub

    async def _release(self, pubsub: PubSub) -> None:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        if self._owns_client:
            await pubsub.connection_pool.disconnect()

    async def _listen(self, pubsub: PubSub | None) -> None:
        """Hand every message to its handler for as long as the feed runs; after an
        interruption (or a failed first subscription) subscribe again and call
        ``on_back``, even the first time: the node was serving since ``start`` returned."""
        delay = _RETRY_MIN_S
        while True:
            if pubsub is None:
                since = self.mark
                try:
                    pubsub = await self._subscribe()
                except (RedisError, OSError) as exc:
                    log(logging.WARNING, "redis pub/sub unavailable", reason=reason(exc), retry_in_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                delay = _RETRY_MIN_S
                log(logging.INFO, "redis pub/sub subscribed again")
                try:
                    self._on_back(since)
                except Exception:
                    log(logging.ERROR, "engine resync listener failed", exc_info=True)
            try:
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                    if message is not None:
                        self._dispatch(message)
            except (RedisError, OSError) as exc:
                log(logging.WARNING, "redis pub/sub interrupted", reason=reason(exc))
            finally:
                await self._release(pubsub)
            pubsub = None

    def _dispatch(self, message: dict[str, Any]) -> None:
        """Hand one message to its handler. A bad message or a failing handler must not
        stop the feed."""
        try:
            if message["type"] != "message":
                return
            handler = self._handlers.get(message["channel"])
            if handler is not None:
                mark = handler(message["data"])
                if mark is not None:
                    self.mark = mark
        except Exception:
            log(logging.ERROR, "engine listener failed on a pub/sub message", exc_info=True)
