"""Redis engine: history, durable queues and fan-out kept in Redis.

Why Redis: what the memory engine keeps in one process must survive a restart of the
gateway (events are durable once ``publish`` returns, given Redis persistence such as
``appendfsync always``) and be shared by several gateway processes, which then fan out
each other's events and control messages through Redis pub/sub.

What it is not: a client of Redis Cluster (the scripts name keys they build) or a
place for gateway logic; it only maps the ``Engine`` contract onto Redis.

Key layout, everything under ``prefix`` (default ``renum-rt:``):

| key                    | type   | holds                                                        |
| ---------------------- | ------ | ------------------------------------------------------------ |
| ``s:<channel>``        | stream | the channel's retained events: fields n (name), d (data JSON), t (ts) |
| ``id:<channel>``       | string | the last id handed out on a live-only channel (``admin``)    |
| ``latest:<channel>``   | hash   | the latest event of an ``execution:`` channel: i, n, d, t     |
| ``cursor:<channel>``   | string | the ack cursor                                               |
| ``idem:<key>``         | string | an idempotency record: "" while in progress, then the answer JSON |
| ``node:<node_id>``     | string | a node's statistics JSON, expiring with its heartbeat        |
| ``nodes``              | set    | ids of nodes that sent a heartbeat (dead ones removed lazily) |
| ``conns:<user_id>``    | hash   | node_id -> open connections of that user on that node         |

Pub/sub channels: ``fanout`` carries one message per publish: the frame tail, then a
channel line and an id line per channel (``tail \\n channel \\n id [\\n channel \\n id ...]``);
``control`` carries JSON. Each node builds each channel's frame from those parts
(``event_frame_head(channel) + id + tail``): the payload is never encoded again.
Streams, latest states, id counters and cursors expire ``max_age_s`` after their last
write, so idle channels vanish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Iterator, Sequence, cast

import redis.asyncio
import ujson
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from .. import channels
from ..ids import format_id, parse_id
from ..protocol import encode, event_frame_head, event_frame_tail
from .base import AckRefused, Engine, EngineUnavailable, Event, IdempotencyInProgress, Replay, Retention

log = logging.getLogger(__name__)

#: Errors that mean "Redis cannot be reached now" (``BusyLoadingError``, Redis still
#: loading its data after a restart, is a ``ConnectionError``).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_TIMEOUT_S = 2.0
_RETRY_MIN_S = 0.1
_RETRY_MAX_S = 2.0
#: How long the pub/sub reader waits for a message before checking the connection's health.
_POLL_S = 1.0
#: how far the local clock may be ahead of Redis's, for the resync mark before Redis answered once
_CLOCK_MARGIN_S = 5.0

# Lua helpers: is id a before id b (ids are "<ms>-<seq>"; ms fits a Lua double exactly),
# and the Redis clock in ms (the clock of stream ids).
_LUA_HELPERS = r"""
local function less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: per channel, its stream (or id counter), then its latest hash if it keeps one.
# ARGV: fanout, tail, name, data, ts, max_len, max_age_s, then per channel: channel and
# mode ('s' stored, 'l' stored + latest, 'c' live only). Storing and the one PUBLISH of
# the whole request (the frame tail, then a channel and id line per channel) happen
# together, so live order is stream order. Returns the ids.
_PUBLISH = _LUA_HELPERS + r"""
local fanout, tail, name, data, ts = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_len, max_age = tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
local ids, lines, k = {}, {tail}, 1
for i = 8, #ARGV, 2 do
  local channel, mode = ARGV[i], ARGV[i + 1]
  local key, id = KEYS[k], nil
  k = k + 1
  if mode == 'c' then
    id = string.format('%d-0', now)
    local last = redis.call('GET', key)
    if last and not less(last, id) then
      local ms, seq = string.match(last, '^(%d+)-(%d+)$')
      id = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
    end
    redis.call('SET', key, id)
  else
    id = redis.call('XADD', key, 'MAXLEN', '~', max_len, '*', 'n', name, 'd', data, 't', ts)
    if max_age > 0 then
      redis.call('XTRIM', key, 'MINID', '~', string.format('%d-0', now - max_age * 1000))
    end
    if mode == 'l' then
      redis.call('HSET', KEYS[k], 'i', id, 'n', name, 'd', data, 't', ts)
      if max_age > 0 then redis.call('EXPIRE', KEYS[k], max_age) end
      k = k + 1
    end
  end
  if max_age > 0 then redis.call('EXPIRE', key, max_age) end
  lines[#lines + 1] = channel
  lines[#lines + 1] = id
  ids[#ids + 1] = id
end
redis.call('PUBLISH', fanout, table.concat(lines, '\n'))
return ids
"""

# KEYS: the stream. ARGV: since ('' for none), limit, max_len, max_age_s.
# Entries beyond max_len or older than max_age_s count as dropped even while the
# approximate (~) trimming of publish still holds them. ``gap`` is the greatest id that
# may be missing: history after ``since`` is complete when since >= gap. A stream
# created anew (after it expired) has lost everything before its first entry.
# Returns {complete (1/0), newest-first entries}.
_HISTORY = _LUA_HELPERS + r"""
local key, since, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local max_len, max_age = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', key) == 0 then return {since == '' and 1 or 0, {}} end
local info, stream = redis.call('XINFO', 'STREAM', key), {}
for i = 1, #info, 2 do stream[info[i]] = info[i + 1] end
local dropped = nil
if stream['length'] > max_len then
  local over = redis.call('XRANGE', key, '-', '+', 'COUNT', stream['length'] - max_len)
  dropped = over[#over][1]
end
if max_age > 0 then
  local horizon = string.format('(%d-0', now_ms() - max_age * 1000)
  local old = redis.call('XREVRANGE', key, horizon, '-', 'COUNT', 1)
  if old[1] and (dropped == nil or less(dropped, old[1][1])) then dropped = old[1][1] end
end
local gap = dropped
if gap == nil then
  gap = stream['max-deleted-entry-id']
  if gap == '0-0' and stream['first-entry'] then gap = stream['first-entry'][1] end
end
local complete = since == '' or (not less(since, gap) and not less(stream['last-generated-id'], since))
local lower = '-'
if dropped and (since == '' or less(since, dropped)) then
  lower = '(' .. dropped
elseif since ~= '' then
  lower = '(' .. since
end
local rows = redis.call('XREVRANGE', key, '+', lower, 'COUNT', limit + 1)
if #rows > limit then
  rows[#rows] = nil
  complete = false
end
return {complete and 1 or 0, rows}
"""

# KEYS: the cursor, the channel's stream. ARGV: id, max_age_s. Moves only forwards;
# returns the cursor, or false (nothing changed) when id is after the newest stored id.
_ACK = _LUA_HELPERS + r"""
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
local info = redis.call('XINFO', 'STREAM', KEYS[2])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' and less(info[i + 1], ARGV[1]) then return false end
end
local cursor = redis.call('GET', KEYS[1])
if not cursor or less(cursor, ARGV[1]) then
  cursor = ARGV[1]
  redis.call('SET', KEYS[1], cursor)
end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return cursor
"""

# KEYS: the node set. ARGV: the node key prefix. Returns the stats of live nodes.
_NODES = r"""
local alive = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local stats = redis.call('GET', ARGV[1] .. node)
  if stats then alive[#alive + 1] = stats else redis.call('SREM', KEYS[1], node) end
end
return alive
"""

# KEYS: the user's conns hash. ARGV: node key prefix, node id, limit. Counts only nodes
# whose heartbeat key exists (forgets the others); returns 1 when counted, 0 when refused.
_CONNECTION_OPENED = r"""
local counts, total = redis.call('HGETALL', KEYS[1]), 0
for i = 1, #counts, 2 do
  if redis.call('EXISTS', ARGV[1] .. counts[i]) == 1 then
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[1], counts[i])
  end
end
if total >= tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
return 1
"""

# KEYS: the user's conns hash. ARGV: node id.
_CONNECTION_CLOSED = r"""
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
"""


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Turn "Redis cannot be reached" into ``EngineUnavailable``."""
    try:
        yield
    except _UNREACHABLE as exc:
        raise EngineUnavailable(f"redis unavailable: {exc}") from exc


def _event(channel: str, event_id: bytes, fields: dict[bytes, bytes]) -> Event:
    return Event(channel, event_id.decode(), int(fields[b"t"]), fields[b"n"].decode(), ujson.loads(fields[b"d"]))


class RedisEngine(Engine):
    """The ``Engine`` contract on Redis (7.0 or later: history needs ``max-deleted-entry-id``).

    Connection counts are per node and count only while the node's heartbeat key
    lives, so the counts of a crashed node vanish with it: a gateway must call
    ``heartbeat`` at start, before its first ``connection_opened``, and keep renewing it.
    """

    name = "redis"

    def __init__(self, url: str, retention: Retention, prefix: str = "renum-rt:") -> None:
        super().__init__()
        self._retention = retention
        self._prefix = prefix
        # No retries: a failed call answers EngineUnavailable at once and a script never
        # runs twice. The pool replaces connections Redis closed meanwhile (a restart)
        # when it hands them out, a check redis-py skips when maintenance notifications
        # (a Redis Enterprise feature) are on.
        self._redis = redis.asyncio.from_url(
            url,
            socket_timeout=_TIMEOUT_S,
            socket_connect_timeout=1,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 0),
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        self._fanout = f"{prefix}fanout".encode()
        self._control = f"{prefix}control".encode()
        self._publish = self._redis.register_script(_PUBLISH)
        self._history = self._redis.register_script(_HISTORY)
        self._ack = self._redis.register_script(_ACK)
        self._nodes = self._redis.register_script(_NODES)
        self._connection_opened = self._redis.register_script(_CONNECTION_OPENED)
        self._connection_closed = self._redis.register_script(_CONNECTION_CLOSED)
        self._listener: asyncio.Task[None] | None = None
        #: an id (Redis clock) up to which the live feed delivered everything: the last
        #: event id seen on it, or the Redis time of the last subscription; until the
        #: first one, the local clock with a margin
        self._mark = f"{int((time.time() - _CLOCK_MARGIN_S) * 1000)}-0"

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    async def start(self) -> None:
        """Subscribe now if Redis answers, so that fan-out flows as soon as this returns;
        otherwise the listener task keeps trying by itself."""
        try:
            pubsub: PubSub | None = await self._subscribe()
        except _UNREACHABLE as exc:
            log.warning("redis pub/sub unavailable at start (%s); retrying in the background", exc)
            pubsub = None
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._redis.aclose()

    async def _subscribe(self) -> PubSub:
        """A pub/sub connection subscribed to fanout and control, confirmed by Redis."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._fanout, self._control)
            confirmed = 0
            deadline = asyncio.get_running_loop().time() + _TIMEOUT_S
            while confirmed < 2:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise RedisTimeoutError("redis did not confirm the subscription")
                message = await pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] == "subscribe":
                    confirmed += 1
                elif message is not None:
                    self._dispatch(message)
            seconds, micros = await self._redis.time()
            self._mark = f"{seconds * 1000 + micros // 1000}-0"
        except BaseException:
            await pubsub.aclose()
            raise
        return pubsub

    async def _listen(self, pubsub: PubSub | None) -> None:
        """Hand every pub/sub message to the listeners, for as long as the engine runs.

        After any interruption (or a failed first subscription at start) it subscribes
        again with capped exponential backoff and calls ``on_resync``: what was published
        meanwhile is in history only. (Even the first subscription after a failed start
        does: the node was serving since ``start`` returned.)
        """
        delay = _RETRY_MIN_S
        while True:
            if pubsub is None:
                since = self._mark
                try:
                    pubsub = await self._subscribe()
                except (RedisError, OSError) as exc:
                    log.warning("redis pub/sub unavailable (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                delay = _RETRY_MIN_S
                log.info("redis pub/sub subscribed again")
                try:
                    self._on_resync(since)
                except Exception:
                    log.exception("engine resync listener failed")
            try:
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
                    if message is not None:
                        self._dispatch(message)
            except (RedisError, OSError) as exc:
                log.warning("redis pub/sub interrupted: %s", exc)
            finally:
                await pubsub.aclose()
            pubsub = None

    def _dispatch(self, message: dict[str, Any]) -> None:
        """Hand one pub/sub message to its listener. A bad message or a failing
        listener must not stop the fan-out of everything else."""
        try:
            if message["type"] != "message":
                return
            if message["channel"] == self._fanout:
                tail, *targets = message["data"].split(b"\n")
                for channel_bytes, id_bytes in zip(targets[::2], targets[1::2]):
                    channel, self._mark = channel_bytes.decode(), id_bytes.decode()
                    try:
                        self._on_event(channel, self._mark, event_frame_head(channel).encode() + id_bytes + tail)
                    except Exception:  # one channel's fault must not cost the others their event
                        log.exception("engine listener failed on channel %s", channel)
            elif message["channel"] == self._control:
                self._on_control(ujson.loads(message["data"]))
        except Exception:
            log.exception("engine listener failed on a pub/sub message")

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def publish(self, channel_names: Sequence[str], name: str, data: dict[str, Any], ts: int) -> dict[str, str]:
        keys: list[str] = []
        args: list[str | int] = [
            self._fanout.decode(),
            event_frame_tail(ts, name, data),
            name,
            encode(data),
            ts,
            self._retention.max_len,
            self._retention.max_age_s,
        ]
        for channel in channel_names:
            if not channels.is_stored(channel):
                keys.append(self._key("id", channel))
                mode = "c"
            elif channels.keeps_latest(channel):
                keys += [self._key("s", channel), self._key("latest", channel)]
                mode = "l"
            else:
                keys.append(self._key("s", channel))
                mode = "s"
            args += [channel, mode]
        with _unavailable():
            ids = await self._publish(keys=keys, args=args)
        return {channel: event_id.decode() for channel, event_id in zip(channel_names, ids)}

    async def history(self, channel: str, since: str | None, limit: int) -> Replay:
        after = format_id(parse_id(since)) if since is not None else ""
        args: list[str | int] = [after, limit, self._retention.max_len, self._retention.max_age_s]
        with _unavailable():
            complete, rows = await self._history(keys=[self._key("s", channel)], args=args)
        events = [_event(channel, id_, dict(zip(fields[::2], fields[1::2]))) for id_, fields in reversed(rows)]
        return Replay(events, bool(complete))

    async def latest(self, channel: str) -> Event | None:
        with _unavailable():
            fields = cast(dict[bytes, bytes], await self._redis.hgetall(self._key("latest", channel)))
        return _event(channel, fields[b"i"], fields) if fields else None

    async def ack(self, channel: str, event_id: str) -> str:
        args: list[str | int] = [format_id(parse_id(event_id)), self._retention.max_age_s]
        with _unavailable():
            cursor: bytes | None = await self._ack(keys=[self._key("cursor", channel), self._key("s", channel)],
                                                   args=args)
        if cursor is None:
            raise AckRefused(f"{event_id} is after the newest event of {channel}")
        return cursor.decode()

    async def cursor(self, channel: str) -> str | None:
        with _unavailable():
            cursor = cast(bytes | None, await self._redis.get(self._key("cursor", channel)))
        return cursor.decode() if cursor is not None else None

    async def control(self, message: dict[str, Any]) -> None:
        with _unavailable():
            await self._redis.publish(self._control, encode(message))

    async def idempotency_claim(self, key: str, ttl_s: int) -> dict[str, Any] | None:
        with _unavailable():
            # SET NX GET: sets and answers None, or answers the record already there
            previous = cast(
                bytes | None, await self._redis.set(self._key("idem", key), "", nx=True, ex=ttl_s, get=True)
            )
        if previous is None:
            return None
        if previous == b"":
            raise IdempotencyInProgress(key)
        answer: dict[str, Any] = ujson.loads(previous)
        return answer

    async def idempotency_store(self, key: str, answer: dict[str, Any], ttl_s: int) -> None:
        with _unavailable():
            await self._redis.set(self._key("idem", key), encode(answer), ex=ttl_s)

    async def idempotency_release(self, key: str) -> None:
        with _unavailable():
            await self._redis.delete(self._key("idem", key))

    async def heartbeat(self, node_id: str, stats: dict[str, Any], ttl_s: int) -> None:
        with _unavailable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key("node", node_id), encode(stats), ex=ttl_s)
                pipe.sadd(f"{self._prefix}nodes", node_id)
                await pipe.execute()

    async def nodes(self) -> list[dict[str, Any]]:
        with _unavailable():
            alive = await self._nodes(keys=[f"{self._prefix}nodes"], args=[f"{self._prefix}node:"])
        return [ujson.loads(stats) for stats in alive]

    async def connection_opened(self, node_id: str, user_id: str, limit: int) -> bool:
        args: list[str | int] = [f"{self._prefix}node:", node_id, limit]
        with _unavailable():
            counted = await self._connection_opened(keys=[self._key("conns", user_id)], args=args)
        return bool(counted)

    async def connection_closed(self, node_id: str, user_id: str) -> None:
        with _unavailable():
            await self._connection_closed(keys=[self._key("conns", user_id)], args=[node_id])
