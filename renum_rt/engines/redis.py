"""Redis engine: history, durable queues and fan-out kept in Redis.

Why Redis: what the memory engine keeps in one process must survive a restart of the
gateway (events are durable once ``publish`` returns, given Redis persistence such as
``appendfsync always``) and be shared by several gateway processes, which then fan out
each other's events and control messages through Redis pub/sub. It runs on one primary,
on a primary found through Sentinel, or on a Redis Cluster (``redis_connect.py``); it is
no place for gateway logic, only the ``Engine`` contract mapped onto Redis.

Key layout, everything under ``prefix`` (default ``renum-rt:``). In a cluster a
channel's keys carry its name as hash tag (``s:{<channel>}``: one slot per channel) and
the node-wide keys share the tag ``{g}`` (``<prefix>{g}nodes``); with one primary the
names are as below. A cluster keeps a publish's answer per slot, under
``pub:{<its first channel there>}:<key>`` (``redis_publish.py``).

| key                    | type   | holds                                                        |
| ---------------------- | ------ | ------------------------------------------------------------ |
| ``s:<channel>``        | stream | the channel's retained events: fields n (name), d (data JSON), t (ts) |
| ``id:<channel>``       | string | the last id handed out on a live-only channel (``admin``)    |
| ``latest:<channel>``   | hash   | the latest event of an ``execution:`` channel: i, n, d, t     |
| ``cursor:<channel>``   | string | the ack cursor                                               |
| ``pub:<key>``          | string | the ids (JSON ``{channel: id}``) of a publish with an Idempotency-Key |
| ``health``             | string | the write probe of ``ping`` (expires after a few seconds)    |
| ``node:<node_id>``     | string | a node's statistics JSON, expiring with its heartbeat        |
| ``nodes``              | set    | ids of nodes that sent a heartbeat (dead ones removed lazily) |
| ``conns:<user_id>``    | hash   | node_id -> open connections of that user on that node         |
| ``audit``              | list   | admin actions (JSON), newest first, capped at ``AUDIT_MAX``    |

Fan-out: with one primary, the pub/sub channel ``fanout`` carries one message per
script call (a publish, or every publish of a loop turn) to every node
(``redis_feed.py``); in a cluster each channel has its own shard channel and a node
receives only those its clients use (``redis_shards.py``).
``control`` carries JSON to every node. Streams, latest states, id counters and
cursors expire ``max_age_s`` after their last write, so idle channels vanish.

Load and failures: commands share a bounded pool (``pool_size`` connections per Redis
server) and wait for a free connection instead of opening one per concurrent command, so
a burst never becomes a connect storm. Idempotent commands (reads, acks, a publish with
an idempotency key) are tried once more after a short pause when a connection fails; a
publish without a key never is, since its first try may have run. Concurrent acks of one
channel are sent as one script call, and so are the publishes of one loop turn (group
commit, ``TurnGroup``). Redis refusing writes (out of memory, a read-only replica, ...)
is ``EngineUnavailable`` like an unreachable Redis, and each ``EngineUnavailable`` is
logged once, with the command and the reason. With ``wait_replicas``, a publish is
answered only once that many replicas have it (``WAIT``), so a failover loses nothing
that was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio
import ujson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, NoScriptError, ResponseError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..ids import format_id, parse_id
from ..logs import log
from ..protocol import encode
from . import redis_lua
from .base import (
    AUDIT_MAX,
    IDEMPOTENCY_TTL_S,
    AckRefused,
    Engine,
    EngineUnavailable,
    Event,
    Publication,
    Replay,
    Retention,
)
from .inbox import InboxLimits
from .inbox_redis import RedisInbox
from .redis_connect import POOL_WAIT_S, connect, node_client, parse
from .redis_feed import ChannelFeed, fan_out, reason
from .redis_publish import Call, answers, plan
from .redis_shards import ShardedFeed
from .turns import TurnGroup

T = TypeVar("T")

#: Errors that mean "Redis cannot be reached now" (``BusyLoadingError``, Redis still
#: loading its data after a restart, is a ``ConnectionError``; so is "no free connection
#: in the pool after ``POOL_WAIT_S``"; on a cluster, a slot whose shard is down or whose
#: owner the client does not know yet).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, ClusterDownError, SlotNotCoveredError,
                TryAgainError)
#: Error codes of replies that mean "this Redis cannot take writes now": out of memory
#: (``maxmemory`` with ``noeviction``), a read-only replica, a replica cut from its
#: primary, too few replicas (``min-replicas-to-write``), a failed RDB save
#: (``stop-writes-on-bgsave-error``), a script running too long. (``LOADING`` is among
#: the unreachable errors above.)
_REFUSING = frozenset({"OOM", "READONLY", "MASTERDOWN", "NOREPLICAS", "MISCONF", "BUSY"})
#: the pause before the one retry of an idempotent command whose connection failed
_RETRY_PAUSE_S = 0.05
#: ``ping`` probes Redis (a write) at most this often; callers in between share the answer
_PROBE_S = 1.0


def _refuses_writes(exc: ResponseError) -> bool:
    """Is this error reply one of those that mean "this Redis cannot take writes now"?"""
    code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
    return code in _REFUSING


def _unavailable(command: str, exc: BaseException | str) -> EngineUnavailable:
    """The ``EngineUnavailable`` for a failed command, logged here and only here."""
    why = exc if isinstance(exc, str) else reason(exc)
    log(logging.WARNING, "engine unavailable", engine="redis", command=command, reason=why)
    return EngineUnavailable(f"redis {command}: {why}")


def _event(channel: str, event_id: bytes, fields: dict[bytes, bytes]) -> Event:
    return Event(channel, event_id.decode(), int(fields[b"t"]), fields[b"n"].decode(), ujson.loads(fields[b"d"]))


class RedisEngine(Engine):
    """The ``Engine`` contract on Redis (7.0 or later: history needs ``max-deleted-entry-id``).

    Connection counts are per node and count only while the node's heartbeat key
    lives, so the counts of a crashed node vanish with it: a gateway must call
    ``heartbeat`` at start, before its first ``connection_opened``, and keep renewing it.
    """

    name = "redis"

    def __init__(self, url: str, retention: Retention, prefix: str = "renum-rt:", pool_size: int = 32,
                 inbox_limits: InboxLimits = InboxLimits(), wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000) -> None:
        super().__init__()
        topology = parse(url)
        self.topology = topology.kind
        self._cluster = topology.kind == "cluster"
        if self._cluster and ("{" in prefix or "}" in prefix):
            raise ValueError("a key prefix for a Redis Cluster may not contain { or }")
        if self._cluster and wait_replicas:
            raise ValueError("redis_wait_replicas needs redis:// or redis+sentinel://, not a cluster")
        self._retention = retention
        self._prefix = prefix
        self._wait = (wait_replicas, wait_timeout_ms)
        self._redis = connect(topology, pool_size)
        #: a cluster's pools fail at once when all their connections are busy: commands
        #: wait here instead, as they do in the pool of one primary
        self._slots = asyncio.Semaphore(pool_size) if self._cluster else None
        #: the node-wide keys: one slot in a cluster
        self._g = f"{prefix}{{g}}" if self._cluster else prefix
        self.inbox = RedisInbox(self._redis, prefix, inbox_limits, self._run, cluster=self._cluster)
        self._control = f"{self._g}control".encode()
        self._audit = f"{self._g}audit"
        self._scripts = {name: self._redis.register_script(getattr(redis_lua, name)) for name in (
            "PUBLISH", "HISTORY", "ACK", "NODES", "CONNECTION_OPENED", "CONNECTION_CLOSED", "HEARTBEAT",
            "AUDIT_APPEND")}
        self._acks = TurnGroup(self._ack_together)
        self._publishes = TurnGroup(self._publish_group)
        self._probe: asyncio.Future[bool] | None = None
        self._probe_at = 0.0
        self._shards: ShardedFeed | None = None
        if self._cluster:
            cluster = cast(RedisCluster, self._redis)
            self._fanout = b""
            self._shards = ShardedFeed(cluster, prefix, self._fan_out, self._lost)
            self._feed = ChannelFeed(self._control_client, {self._control: self._control_message},
                                     on_back=lambda since: None, owns_client=True)
        else:
            self._fanout = f"{prefix}fanout".encode()
            self._feed = ChannelFeed(self._single_client, {self._fanout: self._fan_out,
                                                           self._control: self._control_message},
                                     on_back=lambda since: self._on_resync(since, None))

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{{{name}}}" if self._cluster else f"{self._prefix}{kind}:{name}"

    async def _single_client(self) -> redis.asyncio.Redis:
        return cast(redis.asyncio.Redis, self._redis)

    async def _control_client(self) -> redis.asyncio.Redis:
        """A client of one cluster node for ``control`` (a plain ``PUBLISH`` reaches every
        node of a cluster): a random one, so a dead node is left after a retry."""
        cluster = cast(RedisCluster, self._redis)
        await cluster.initialize()
        return node_client(cluster, cluster.get_random_node())

    def _fan_out(self, data: bytes) -> str | None:
        self.feed_messages += 1
        self.feed_bytes += len(data)
        return fan_out(data, self._on_event)

    def _control_message(self, data: bytes) -> None:
        self._on_control(ujson.loads(data))

    def _lost(self, since: str, channels: frozenset[str]) -> None:
        self._on_resync(since, channels)

    async def start(self) -> None:
        """Subscribe now if Redis answers, so that fan-out flows as soon as this returns;
        otherwise the feed keeps trying by itself."""
        await self._feed.start()

    async def close(self) -> None:
        await self._feed.close()
        if self._shards is not None:
            await self._shards.close()
        await asyncio.gather(*self._acks.calls, *self._publishes.calls, return_exceptions=True)
        await self._redis.aclose()

    async def listen(self, channel: str) -> None:
        if self._shards is not None:
            await self._shards.listen(channel)

    def unlisten(self, channel: str) -> None:
        if self._shards is not None:
            self._shards.unlisten(channel)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Hold one of the ``pool_size`` command slots of a cluster (TimeoutError after
        ``POOL_WAIT_S``); nothing with one primary, whose pool itself waits."""
        if self._slots is None:
            yield
            return
        async with asyncio.timeout(POOL_WAIT_S):
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    async def _run(self, command: str, call: Callable[[], Awaitable[T]], idempotent: bool) -> T:
        """Run one command; turn "unreachable" and "refusing writes" into a logged
        ``EngineUnavailable``. An idempotent command whose connection failed is tried once
        more after a short pause (a connection Redis closed, a restart in progress): a
        burst should not fail for one bad connection. Refusals are not retried."""
        retried = False
        while True:
            try:
                async with self._slot():
                    return await call()
            except Exception as exc:
                if idempotent and not retried and isinstance(exc, _UNREACHABLE):
                    retried = True
                else:
                    unavailable = self._as_unavailable(command, exc)
                    if unavailable is None:
                        raise
                    raise unavailable from exc
            await asyncio.sleep(_RETRY_PAUSE_S)

    async def ping(self) -> bool:
        """A write probe, so that a Redis that answers but refuses writes (out of memory,
        a replica) is unhealthy too. At most one per ``_PROBE_S``: ``/healthz`` may be
        polled often, by many balancers."""
        now = asyncio.get_running_loop().time()
        if self._probe is None or (self._probe.done() and now - self._probe_at >= _PROBE_S):
            self._probe_at = now
            self._probe = asyncio.ensure_future(self._write_probe())
        return await asyncio.shield(self._probe)

    async def _write_probe(self) -> bool:
        try:
            await self._run("ping", lambda: self._redis.set(f"{self._g}health", "1", px=5000), idempotent=False)
        except EngineUnavailable:
            return False
        return True

    async def publish(self, channel_names: Sequence[str], name: str, data: dict[str, Any], ts: int,
                      idempotency_key: str | None = None, ttl_s: int = IDEMPOTENCY_TTL_S) -> dict[str, str]:
        """Joins the other publishes of this loop turn (``publish_batch``)."""
        return (await self.publish_batch([Publication(channel_names, name, data, ts, idempotency_key, ttl_s)]))[0]

    async def publish_batch(self, items: Sequence[Publication]) -> list[dict[str, str]]:
        """Group commit: every publish and batch of this loop turn is stored together
        (``_publish_group``), so a burst of publishes costs one round trip to Redis, not
        one each, and each caller is answered once its own events are stored."""
        results = await self._publishes.submit(items) if items else []
        for result in results:
            if isinstance(result, Exception):
                raise result
        return cast(list[dict[str, str]], results)

    async def _publish_group(self, items: list[Publication]) -> list[dict[str, str] | Exception]:
        """Store ``items`` in order (``redis_publish.plan``): per item its ids, or why it
        failed; an item of a cluster publish spanning slots fails if any part did."""
        slot_of = (lambda channel: cast(RedisCluster, self._redis).keyslot(self._key("s", channel))) \
            if self._cluster else None
        calls = plan(items, self._key, slot_of)
        head: list[str | int] = [self._fanout.decode(), f"{self._prefix}f:", self._retention.max_len,
                                 self._retention.max_age_s]
        out: list[dict[str, str] | Exception] = [{} for _ in items]
        results = await self._send_publishes(calls, head)
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, Exception):
                for index, _ in call.parts:
                    out[index] = result
                continue
            for index, ids in answers(call, result):
                answer = out[index]
                if isinstance(answer, dict):
                    answer.update(ids)
        return out

    async def _send_publishes(self, calls: list[Call], head: list[str | int]) -> list[Any]:
        """Each call's result or its ``EngineUnavailable``: one script call with one
        primary (then ``WAIT`` on the same connection when replicas must confirm), one
        pipeline of calls (a round trip per shard) in a cluster. A call is retried after
        a lost connection only when every part of it has an idempotency key."""
        if len(calls) == 1 and not self._wait[0]:
            call = calls[0]
            try:
                return [await self._run("publish", lambda: self._scripts["PUBLISH"](keys=call.keys,
                                                                                    args=head + call.args),
                                        idempotent=call.keyed)]
            except EngineUnavailable as exc:
                return [exc]
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in (0, 1):
            again = []
            for i, reply in zip(todo, await self._pipeline([calls[i] for i in todo], head), strict=True):
                results[i] = reply
                if not attempt and (isinstance(reply, NoScriptError)  # a node restarted: it did not run
                                    or (isinstance(reply, _UNREACHABLE) and calls[i].keyed)):
                    again.append(i)
            if not again:
                break
            if any(isinstance(results[i], NoScriptError) for i in again):
                with contextlib.suppress(*_UNREACHABLE, ResponseError):
                    await self._redis.script_load(redis_lua.PUBLISH)
            await asyncio.sleep(_RETRY_PAUSE_S)
            todo = again
        return [self._as_unavailable("publish", r) or r if isinstance(r, Exception) else r for r in results]

    async def _pipeline(self, calls: list[Call], head: list[str | int]) -> list[Any]:
        """The publish script once per call in one pipeline (each reply or error), followed
        by ``WAIT`` when replicas must confirm (one primary: the same connection)."""
        sha = self._scripts["PUBLISH"].sha
        try:
            async with self._slot(), self._redis.pipeline(transaction=False) as pipe:
                for call in calls:
                    pipe.execute_command("EVALSHA", sha, len(call.keys), *call.keys, *head, *call.args)
                replicas, timeout_ms = self._wait
                if replicas:
                    pipe.execute_command("WAIT", replicas, timeout_ms)
                replies = await pipe.execute(raise_on_error=False)
        except (*_UNREACHABLE, ResponseError) as exc:
            return [exc] * len(calls)
        if replicas:
            acked, replies = replies[-1], replies[:-1]
            if not isinstance(acked, Exception) and acked < replicas:
                why = f"{acked} of {replicas} replicas confirmed within {timeout_ms} ms; the write may be lost"
                return [_unavailable("wait", why) if not isinstance(r, Exception) else r for r in replies]
        return list(replies)

    def _as_unavailable(self, command: str, exc: Exception) -> EngineUnavailable | None:
        """The logged ``EngineUnavailable`` for an error that means "unreachable" or
        "refusing writes", counted in ``failures``; None for any other error."""
        if isinstance(exc, _UNREACHABLE) or (isinstance(exc, ResponseError) and _refuses_writes(exc)):
            self.failures += 1
            return _unavailable(command, exc)
        return None

    async def history(self, channel: str, since: str | None, limit: int) -> Replay:
        after = format_id(parse_id(since)) if since is not None else ""
        args: list[str | int] = [after, limit, self._retention.max_len, self._retention.max_age_s]
        complete, rows = await self._run(
            "history", lambda: self._scripts["HISTORY"](keys=[self._key("s", channel)], args=args), idempotent=True)
        events = [_event(channel, id_, dict(zip(fields[::2], fields[1::2], strict=True)))
                  for id_, fields in reversed(rows)]
        return Replay(events, bool(complete))

    async def latest(self, channel: str) -> Event | None:
        fields = cast(dict[bytes, bytes], await self._run(
            "latest", lambda: self._redis.hgetall(self._key("latest", channel)), idempotent=True))
        return _event(channel, fields[b"i"], fields) if fields else None

    async def ack(self, channel: str, event_id: str) -> str:
        """Joins the other acks of this loop turn: one script call per channel moves the
        cursor for all of that channel's acks (a user acking on several connections, or
        many events at once, costs one round trip), and each caller gets its own answer."""
        (answer,) = await self._acks.submit([(channel, format_id(parse_id(event_id)))])
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _ack_together(self, acks: list[tuple[str, str]]) -> list[str | Exception]:
        """One ack script call per channel of ``acks``; per ack, the cursor after the move,
        or why it failed (``AckRefused``, or the error of its channel's call alone)."""
        places: dict[str, list[int]] = {}
        for i, (channel, _) in enumerate(acks):
            places.setdefault(channel, []).append(i)
        answers_: list[str | Exception] = [""] * len(acks)

        async def channel_call(channel: str, indexes: list[int]) -> None:
            keys = [self._key("cursor", channel), self._key("s", channel)]
            args: list[str | int] = [self._retention.max_age_s, *(acks[i][1] for i in indexes)]
            try:
                cursor, *refused = await self._run("ack", lambda: self._scripts["ACK"](keys=keys, args=args),
                                                   idempotent=True)
            except Exception as exc:
                for i in indexes:
                    answers_[i] = exc
                return
            for i, refusal in zip(indexes, refused, strict=True):
                if refusal:
                    answers_[i] = AckRefused(f"{acks[i][1]} is after the newest event of {channel}")
                else:
                    answers_[i] = cursor.decode()

        await asyncio.gather(*(channel_call(channel, indexes) for channel, indexes in places.items()))
        return answers_

    async def cursor(self, channel: str) -> str | None:
        cursor = cast(bytes | None, await self._run(
            "cursor", lambda: self._redis.get(self._key("cursor", channel)), idempotent=True))
        return cursor.decode() if cursor is not None else None

    async def control(self, message: dict[str, Any]) -> None:
        # not retried: a lost reply would deliver the message twice
        await self._run("control", lambda: self._redis.publish(self._control, encode(message)), idempotent=False)

    async def heartbeat(self, node_id: str, stats: dict[str, Any], ttl_s: int) -> None:
        await self._run("heartbeat", lambda: self._scripts["HEARTBEAT"](
            keys=[f"{self._g}node:{node_id}", f"{self._g}nodes"], args=[encode(stats), ttl_s, node_id]),
            idempotent=True)

    async def nodes(self) -> list[dict[str, Any]]:
        alive = await self._run("nodes", lambda: self._scripts["NODES"](
            keys=[f"{self._g}nodes"], args=[f"{self._g}node:"]), idempotent=True)
        return [ujson.loads(stats) for stats in alive]

    async def connection_opened(self, node_id: str, user_id: str, limit: int) -> bool:
        args: list[str | int] = [f"{self._g}node:", node_id, limit]
        # counts are not idempotent: never retried
        counted = await self._run("connection_opened", lambda: self._scripts["CONNECTION_OPENED"](
            keys=[f"{self._g}conns:{user_id}"], args=args), idempotent=False)
        return bool(counted)

    async def connection_closed(self, node_id: str, user_id: str) -> None:
        await self._run("connection_closed", lambda: self._scripts["CONNECTION_CLOSED"](
            keys=[f"{self._g}conns:{user_id}"], args=[node_id]), idempotent=False)

    async def audit_append(self, entry: dict[str, Any]) -> None:
        # not retried: a lost reply would record the action twice
        await self._run("audit_append", lambda: self._scripts["AUDIT_APPEND"](
            keys=[self._audit], args=[encode(entry), AUDIT_MAX]), idempotent=False)

    async def audit_list(self, limit: int) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        entries = await self._run("audit_list", lambda: self._redis.lrange(self._audit, 0, limit - 1),
                                  idempotent=True)
        return [ujson.loads(entry) for entry in entries]
