"""The live feed on a Redis Cluster: a node receives only the channels its clients use.

Why: with one ``fanout`` channel every node receives every event, so the service is
capped by what each node's pub/sub link carries. Here each channel has a shard channel,
``<prefix>f:{<channel>}``, in the channel's own hash slot; the publish script
``SPUBLISH``es each event there, and a node ``SSUBSCRIBE``s it on the shard that owns
the slot while it has local subscribers (``listen``) and drops it when the last one
leaves (``unlisten``).

One ``_Link`` (a pub/sub connection) per shard primary carries that shard's channels.
``listen`` returns once Redis confirmed the subscription, so an event published after
it returns is delivered: a history read made then misses nothing. Confirmations are
counted per channel (each ``SSUBSCRIBE`` answers once, in order), so a channel dropped
and taken again is ready only once its latest subscription is.

When a link breaks (its primary died, failed over, restarted) only its channels are
affected: ``on_lost(mark, channels)`` tells the gateway at once (it holds them and
re-reads their history once ``listen`` succeeds again), and they are placed again on
the shard that owns their slot after a topology refresh, retried with capped backoff
while that shard is down. A slot moved away (Redis unsubscribes its channels) is
handled the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from ..logs import log
from .base import EngineUnavailable
from .redis_connect import TIMEOUT_S, node_client
from .redis_feed import POLL_S, Handler, reason, redis_mark

_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 2.0

#: ``on_lost(mark, channels)``: these channels' link broke; nothing after ``mark`` was missed
LostListener = Callable[[str, frozenset[str]], None]


class _Link:
    """One pub/sub connection to one shard primary: a writer task sends (un)subscribe
    commands in order, a reader task hands messages on. Either failing ends the link."""

    def __init__(self, feed: ShardedFeed, node: ClusterNode) -> None:
        self.feed = feed
        self.name = node.name
        self.client = node_client(feed.cluster, node)
        self.pubsub: PubSub = self.client.pubsub()
        #: confirmations still expected, per channel
        self.expected: dict[str, int] = {}
        #: our own ``SUNSUBSCRIBE``s not answered yet, per channel
        self.leaving: dict[str, int] = {}
        #: the last event id carried, or the shard's time when the link came up
        self.mark = ""
        self.queue: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self.tasks = [asyncio.create_task(self._write())]

    def subscribe(self, channel: str) -> None:
        self.expected[channel] = self.expected.get(channel, 0) + 1
        self.queue.put_nowait((True, channel))

    def unsubscribe(self, channel: str) -> None:
        self.leaving[channel] = self.leaving.get(channel, 0) + 1
        self.queue.put_nowait((False, channel))

    async def _write(self) -> None:
        try:
            while True:
                joining, channel = await self.queue.get()
                name = self.feed.shard_channel(channel)
                if joining:
                    await self.pubsub.ssubscribe(name)
                else:
                    await self.pubsub.sunsubscribe(name)
                if not self.mark:  # connected: the reader can start
                    self.mark = await redis_mark(self.client)
                    self.tasks.append(asyncio.create_task(self._read()))
        except (RedisError, OSError) as exc:
            self.feed.broken(self, exc)

    async def _read(self) -> None:
        try:
            while True:
                message = await self.pubsub.get_message(timeout=POLL_S)
                if message is not None:
                    self._dispatch(message)
        except (RedisError, OSError) as exc:
            self.feed.broken(self, exc)

    def _dispatch(self, message: dict[str, object]) -> None:
        kind = message["type"]
        try:
            if kind == "smessage":
                mark = self.feed.on_message(message["data"])  # type: ignore[arg-type]
                if mark is not None:
                    self.mark = mark
                return
            channel = self.feed.channel_of(message["channel"])  # type: ignore[arg-type]
            if kind == "ssubscribe":
                left = self.expected.pop(channel, 1) - 1
                if left:
                    self.expected[channel] = left
                else:
                    self.feed.confirmed(self, channel)
            elif kind == "sunsubscribe":
                if self.leaving.get(channel):
                    self.leaving[channel] -= 1
                else:  # Redis dropped it: its slot moved to another shard
                    self.feed.moved(self, channel)
        except Exception:
            log(logging.ERROR, "engine listener failed on a shard message", exc_info=True)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            await self.client.aclose()


class ShardedFeed:
    """Per-channel interest on a Redis Cluster (see the module's docstring)."""

    def __init__(self, cluster: RedisCluster, prefix: str, on_message: Handler, on_lost: LostListener) -> None:
        self.cluster = cluster
        self._prefix = f"{prefix}f:"
        self.on_message = on_message
        self._on_lost = on_lost
        self._links: dict[str, _Link] = {}
        #: every channel wanted, with the future that is done once it is subscribed
        self._ready: dict[str, asyncio.Future[None]] = {}
        #: the link each placed channel is on
        self._home: dict[str, _Link] = {}
        #: wanted channels not placed (their shard is down), placed by ``_placer``
        self._orphans: set[str] = set()
        self._placer: asyncio.Task[None] | None = None
        #: the placer's pause before its next try, reset once a subscription succeeds
        self._delay = _RETRY_MIN_S
        self._closing: set[asyncio.Task[None]] = set()

    def shard_channel(self, channel: str) -> str:
        return f"{self._prefix}{{{channel}}}"

    def channel_of(self, shard_channel: bytes) -> str:
        return shard_channel.decode()[len(self._prefix) + 1:-1]

    def channels(self, link: _Link) -> list[str]:
        """The channels placed on ``link``."""
        return [c for c, home in self._home.items() if home is link]

    async def listen(self, channel: str) -> None:
        """Return once ``channel`` is subscribed on its shard; ``EngineUnavailable`` if that
        takes longer than a command may (its shard is down): it stays wanted until
        ``unlisten``, and is subscribed as soon as the shard is back."""
        ready = self._ready.get(channel)
        if ready is None:
            ready = self._ready[channel] = asyncio.get_running_loop().create_future()
            self._place([channel])
        if not ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(ready), TIMEOUT_S)
            except TimeoutError:
                raise EngineUnavailable(f"redis ssubscribe: the shard of {channel} did not answer") from None

    def unlisten(self, channel: str) -> None:
        if self._ready.pop(channel, None) is None:
            return
        self._orphans.discard(channel)
        link = self._home.pop(channel, None)
        if link is not None:
            link.unsubscribe(channel)

    def _place(self, channels: list[str]) -> None:
        """Subscribe each channel on the link of the primary that owns its slot (by the
        topology known now); channels whose shard is unknown wait for ``_placer``."""
        for channel in channels:
            try:
                node = self.cluster.nodes_manager.get_node_from_slot(
                    self.cluster.keyslot(self.shard_channel(channel)))
            except (RedisError, LookupError, AttributeError):
                self._orphan([channel])
                continue
            link = self._links.get(node.name)
            if link is None:
                link = self._links[node.name] = _Link(self, node)
            self._home[channel] = link
            link.subscribe(channel)

    def confirmed(self, link: _Link, channel: str) -> None:
        ready = self._ready.get(channel)
        if ready is not None and self._home.get(channel) is link and not ready.done():
            ready.set_result(None)
            self._delay = _RETRY_MIN_S

    def broken(self, link: _Link, exc: BaseException) -> None:
        """A link failed: every channel on it is lost until placed again."""
        if self._links.get(link.name) is not link:
            return
        del self._links[link.name]
        log(logging.WARNING, "redis shard link interrupted", node=link.name, reason=reason(exc))
        self._lose(link, self.channels(link))
        task = asyncio.ensure_future(link.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def moved(self, link: _Link, channel: str) -> None:
        if self._home.get(channel) is link:
            self._lose(link, [channel])

    def _lose(self, link: _Link, channels: list[str]) -> None:
        """Hand ``channels`` to the gateway as lost (those that were subscribed: the
        others' callers are still waiting in ``listen``) and queue them for placement."""
        subscribed = frozenset(c for c in channels if self._ready[c].done())
        for channel in channels:
            del self._home[channel]
            if self._ready[channel].done():
                self._ready[channel] = asyncio.get_running_loop().create_future()
        self._orphan(channels)
        if subscribed:
            try:
                self._on_lost(link.mark, subscribed)
            except Exception:
                log(logging.ERROR, "engine resync listener failed", exc_info=True)

    def _orphan(self, channels: list[str]) -> None:
        self._orphans.update(channels)
        if self._placer is None or self._placer.done():
            self._placer = asyncio.create_task(self._place_orphans())

    async def _place_orphans(self) -> None:
        """Refresh the topology and place the orphans, with capped backoff while a shard
        stays down (each failed link orphans its channels again)."""
        while self._orphans:
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, _RETRY_MAX_S)
            try:
                await self.cluster.nodes_manager.initialize()
            except (RedisError, OSError) as exc:
                log(logging.WARNING, "redis cluster topology unavailable", reason=reason(exc))
                continue
            orphans, self._orphans = list(self._orphans), set()
            self._place(orphans)

    async def close(self) -> None:
        if self._placer is not None:
            self._placer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._placer
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links), *self._closing, return_exceptions=True)
