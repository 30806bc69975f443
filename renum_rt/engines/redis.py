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
| ``pub:<key>``          | string | the ids (JSON ``{channel: id}``) of a publish made with an Idempotency-Key |
| ``health``             | string | the write probe of ``ping`` (expires after a few seconds)    |
| ``node:<node_id>``     | string | a node's statistics JSON, expiring with its heartbeat        |
| ``nodes``              | set    | ids of nodes that sent a heartbeat (dead ones removed lazily) |
| ``conns:<user_id>``    | hash   | node_id -> open connections of that user on that node         |
| ``audit``              | list   | admin actions (JSON), newest first, capped at ``AUDIT_MAX``    |

Pub/sub channels: ``fanout`` carries one message per publish: the frame tail, then a
channel line and an id line per channel (``tail \\n channel \\n id [\\n channel \\n id ...]``);
``control`` carries JSON. Each node builds each channel's frame from those parts
(``event_frame_head(channel) + id + tail``): the payload is never encoded again.
Streams, latest states, id counters and cursors expire ``max_age_s`` after their last
write, so idle channels vanish.

Load and failures: commands share a bounded pool (``pool_size`` connections, pub/sub
included) and wait for a free connection instead of opening one per concurrent command,
so a burst never becomes a connect storm. Idempotent commands (reads, acks, a publish
with an idempotency key) are tried once more after a short pause when a connection
fails; a publish without a key never is, since its first try may have run. Concurrent
acks of one channel are sent as one script call, and so are the publishes of one loop
turn (group commit, ``TurnGroup``). Redis refusing writes (out of memory,
a read-only replica, ...) is ``EngineUnavailable`` like an unreachable Redis, and each
``EngineUnavailable`` is logged once, with the command and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import redis.asyncio
import ujson
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from .. import channels
from ..ids import format_id, parse_id
from ..logs import log
from ..protocol import encode, event_frame_head, event_frame_tail
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

T = TypeVar("T")
R = TypeVar("R")

#: Errors that mean "Redis cannot be reached now" (``BusyLoadingError``, Redis still
#: loading its data after a restart, is a ``ConnectionError``; so is "no free connection
#: in the pool after ``_POOL_WAIT_S``").
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
#: Error codes of replies that mean "this Redis cannot take writes now": out of memory
#: (``maxmemory`` with ``noeviction``), a read-only replica, a replica cut from its
#: primary, too few replicas (``min-replicas-to-write``), a failed RDB save
#: (``stop-writes-on-bgsave-error``), a script running too long. (``LOADING`` is among
#: the unreachable errors above.)
_REFUSING = frozenset({"OOM", "READONLY", "MASTERDOWN", "NOREPLICAS", "MISCONF", "BUSY"})
_TIMEOUT_S = 2.0
#: how long a command waits for a free pooled connection before it is unavailable
_POOL_WAIT_S = 5.0
#: the pause before the one retry of an idempotent command whose connection failed
_RETRY_PAUSE_S = 0.05
#: ``ping`` probes Redis (a write) at most this often; callers in between share the answer
_PROBE_S = 1.0
#: characters of an error kept in a log line
_REASON_MAX = 200
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

# Stores every event of a group (the publishes of one loop turn, or one batch request)
# in order, as one script call. ARGV: fanout, max_len, max_age_s, then per event: tail,
# name, data, ts, the answer's ttl (0 = no key), its channel count, then per channel:
# channel and mode ('s' stored, 'l' stored + latest, 'c' live only). KEYS: per event,
# per channel its stream (or id counter), then its latest hash if it keeps one; last,
# with an idempotency key, the key's answer. Each event's storing, its answer and its
# one PUBLISH (the frame tail, then a channel and id line per channel) happen together
# and in group order, so live order is stream order and a key never holds a half
# answer; an event whose key already holds an answer (an earlier publish, or an earlier
# event of this group) stores nothing. Returns per event {the answer JSON already kept
# under the key} or {false, ids...}. Its first write is the first XADD/SET, so a Redis
# refusing writes refuses before any.
_PUBLISH = _LUA_HELPERS + r"""
local fanout, max_len, max_age = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out, k, a = {}, 1, 4
while a <= #ARGV do
  local tail, name, data, ts = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local ttl, first = tonumber(ARGV[a + 4]), a + 6
  local last = a + 5 + 2 * tonumber(ARGV[a + 5])
  a = last + 1
  local span = 0
  for i = first, last, 2 do span = span + (ARGV[i + 1] == 'l' and 2 or 1) end
  local kept = ttl > 0 and redis.call('GET', KEYS[k + span])
  if kept then
    out[#out + 1] = {kept}
  else
    local ids, answer, lines = {false}, {}, {tail}
    for i = first, last, 2 do
      local channel, mode = ARGV[i], ARGV[i + 1]
      local key, id = KEYS[k], nil
      k = k + 1
      if mode == 'c' then
        id = string.format('%d-0', now)
        local prev = redis.call('GET', key)
        if prev and not less(prev, id) then
          local ms, seq = string.match(prev, '^(%d+)-(%d+)$')
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
      answer[channel] = id
    end
    if ttl > 0 then redis.call('SET', KEYS[k], cjson.encode(answer), 'EX', ttl) end
    redis.call('PUBLISH', fanout, table.concat(lines, '\n'))
    out[#out + 1] = ids
    k = k - span
  end
  k = k + span + (ttl > 0 and 1 or 0)
end
return out
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

# KEYS: the cursor, the channel's stream. ARGV: max_age_s, then the acked ids (every ack
# of the channel made in one loop turn). Moves the cursor only forwards, to the newest
# acked id that is not after the newest stored id; the others are refused. Returns the
# cursor (false if there is none), then per acked id 1 if it was refused, else 0.
# Running it twice changes nothing more: it can be retried.
_ACK = _LUA_HELPERS + r"""
local newest = nil
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then newest = info[i + 1] end
  end
end
local cursor, refused, accepted = redis.call('GET', KEYS[1]), {}, false
local target = cursor
for i = 2, #ARGV do
  if newest == nil or less(newest, ARGV[i]) then
    refused[#refused + 1] = 1
  else
    refused[#refused + 1] = 0
    accepted = true
    if not target or less(target, ARGV[i]) then target = ARGV[i] end
  end
end
if accepted then
  if target ~= cursor then redis.call('SET', KEYS[1], target) end
  if tonumber(ARGV[1]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
end
local out = {target or false}
for i = 1, #refused do out[#out + 1] = refused[i] end
return out
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


def _reason(exc: BaseException) -> str:
    """What went wrong, for the log and the exception: the error code Redis sent (redis-py
    strips it from the message) or the exception's type, then the start of its message.
    A pipeline's error quotes its failed command, values included: only the error is kept."""
    code = getattr(exc, "status_code", None) or type(exc).__name__
    message = str(exc).rpartition(" of pipeline caused error: ")[2]
    return f"{code} {message}"[:_REASON_MAX].strip()


def _refuses_writes(exc: ResponseError) -> bool:
    """Is this error reply one of those that mean "this Redis cannot take writes now"?"""
    code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
    return code in _REFUSING


def _unavailable(command: str, exc: BaseException) -> EngineUnavailable:
    """The ``EngineUnavailable`` for a failed command, logged here and only here."""
    reason = _reason(exc)
    log(logging.WARNING, "engine unavailable", engine="redis", command=command, reason=reason)
    return EngineUnavailable(f"redis {command}: {reason}")


def _event(channel: str, event_id: bytes, fields: dict[bytes, bytes]) -> Event:
    return Event(channel, event_id.decode(), int(fields[b"t"]), fields[b"n"].decode(), ujson.loads(fields[b"d"]))


class TurnGroup(Generic[T, R]):
    """Calls made in one event-loop turn, sent as one: each ``submit(items)`` of a turn
    joins the others, and at the end of the turn ``run`` gets all their items in call
    order and returns one answer per item. Each caller gets the answers of its own
    items, or, if ``run`` fails, its error: no caller is half-answered."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._run = run
        self._waiting: list[tuple[Sequence[T], asyncio.Future[list[R]]]] | None = None
        #: the runs in flight (``close`` waits for them)
        self.calls: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        if self._waiting is None:
            self._waiting = []
            loop.call_soon(self._send)
        future: asyncio.Future[list[R]] = loop.create_future()
        self._waiting.append((items, future))
        return await future

    def _send(self) -> None:
        waiting, self._waiting = self._waiting or [], None
        call = asyncio.ensure_future(self._together(waiting))
        self.calls.add(call)
        call.add_done_callback(self.calls.discard)

    async def _together(self, waiting: list[tuple[Sequence[T], asyncio.Future[list[R]]]]) -> None:
        try:
            answers = await self._run([item for items, _ in waiting for item in items])
            start = 0
            for items, future in waiting:
                if not future.done():  # its caller went away
                    future.set_result(answers[start:start + len(items)])
                start += len(items)
        except Exception as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
        finally:
            for _, future in waiting:  # cancelled itself (the engine closing): so are its callers
                future.cancel()


class RedisEngine(Engine):
    """The ``Engine`` contract on Redis (7.0 or later: history needs ``max-deleted-entry-id``).

    Connection counts are per node and count only while the node's heartbeat key
    lives, so the counts of a crashed node vanish with it: a gateway must call
    ``heartbeat`` at start, before its first ``connection_opened``, and keep renewing it.
    """

    name = "redis"

    def __init__(self, url: str, retention: Retention, prefix: str = "renum-rt:", pool_size: int = 32,
                 inbox_limits: InboxLimits = InboxLimits()) -> None:
        super().__init__()
        self._retention = retention
        self._prefix = prefix
        # redis-py retries nothing: ``_run`` decides, per command, whether a retry is safe.
        # The pool replaces connections Redis closed meanwhile (a restart) when it hands
        # them out, a check redis-py skips when maintenance notifications (a Redis
        # Enterprise feature) are on.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=_POOL_WAIT_S,
            socket_timeout=_TIMEOUT_S,
            socket_connect_timeout=_TIMEOUT_S,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 0),
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        self._redis = redis.asyncio.Redis.from_pool(pool)
        self.inbox = RedisInbox(self._redis, prefix, inbox_limits, self._run)
        self._fanout = f"{prefix}fanout".encode()
        self._control = f"{prefix}control".encode()
        self._audit = f"{prefix}audit"
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
        self._acks = TurnGroup(self._ack_together)
        self._publishes = TurnGroup(self._publish_group)
        self._probe: asyncio.Future[bool] | None = None
        self._probe_at = 0.0

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    async def start(self) -> None:
        """Subscribe now if Redis answers, so that fan-out flows as soon as this returns;
        otherwise the listener task keeps trying by itself."""
        try:
            pubsub: PubSub | None = await self._subscribe()
        except _UNREACHABLE as exc:
            log(logging.WARNING, "redis pub/sub unavailable at start; retrying in the background", reason=_reason(exc))
            pubsub = None
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await asyncio.gather(*self._acks.calls, *self._publishes.calls, return_exceptions=True)
        await self._redis.aclose()

    async def _run(self, command: str, call: Callable[[], Awaitable[T]], idempotent: bool) -> T:
        """Run one command; turn "unreachable" and "refusing writes" into a logged
        ``EngineUnavailable``. An idempotent command whose connection failed is tried once
        more after a short pause (a connection Redis closed, a restart in progress): a
        burst should not fail for one bad connection. Refusals are not retried."""
        failures = 0
        while True:
            try:
                return await call()
            except _UNREACHABLE as exc:
                failures += 1
                if not idempotent or failures > 1:
                    self.failures += 1
                    raise _unavailable(command, exc) from exc
            except ResponseError as exc:
                if not _refuses_writes(exc):
                    raise
                self.failures += 1
                raise _unavailable(command, exc) from exc
            await asyncio.sleep(_RETRY_PAUSE_S)

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
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
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
                    log(logging.WARNING, "redis pub/sub unavailable", reason=_reason(exc), retry_in_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                delay = _RETRY_MIN_S
                log(logging.INFO, "redis pub/sub subscribed again")
                try:
                    self._on_resync(since)
                except Exception:
                    log(logging.ERROR, "engine resync listener failed", exc_info=True)
            try:
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
                    if message is not None:
                        self._dispatch(message)
            except (RedisError, OSError) as exc:
                log(logging.WARNING, "redis pub/sub interrupted", reason=_reason(exc))
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            pubsub = None

    def _dispatch(self, message: dict[str, Any]) -> None:
        """Hand one pub/sub message to its listener. A bad message or a failing
        listener must not stop the fan-out of everything else."""
        try:
            if message["type"] != "message":
                return
            if message["channel"] == self._fanout:
                tail, *targets = message["data"].split(b"\n")
                for channel_bytes, id_bytes in zip(targets[::2], targets[1::2], strict=True):
                    channel, self._mark = channel_bytes.decode(), id_bytes.decode()
                    try:
                        self._on_event(channel, self._mark, event_frame_head(channel).encode() + id_bytes + tail)
                    except Exception:  # one channel's fault must not cost the others their event
                        log(logging.ERROR, "engine listener failed", channel=channel, exc_info=True)
            elif message["channel"] == self._control:
                self._on_control(ujson.loads(message["data"]))
        except Exception:
            log(logging.ERROR, "engine listener failed on a pub/sub message", exc_info=True)

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
            await self._run("ping", lambda: self._redis.set(f"{self._prefix}health", "1", px=5000), idempotent=False)
        except EngineUnavailable:
            return False
        return True

    async def publish(self, channel_names: Sequence[str], name: str, data: dict[str, Any], ts: int,
                      idempotency_key: str | None = None, ttl_s: int = IDEMPOTENCY_TTL_S) -> dict[str, str]:
        """Joins the other publishes of this loop turn (``publish_batch``)."""
        return (await self.publish_batch([Publication(channel_names, name, data, ts, idempotency_key, ttl_s)]))[0]

    async def publish_batch(self, items: Sequence[Publication]) -> list[dict[str, str]]:
        """Group commit: every publish and batch of this loop turn is one script call
        (``_publish_group``), so a burst of publishes costs one round trip to Redis, not
        one each, and each caller is answered once its own events are stored."""
        return await self._publishes.submit(items) if items else []

    async def _publish_group(self, items: list[Publication]) -> list[dict[str, str]]:
        """One publish script call storing ``items`` in order. Retried after a lost
        connection only when every item has an idempotency key: the retry then stores
        nothing twice, while an item without one might be."""
        keys: list[str] = []
        args: list[str | int] = [self._fanout.decode(), self._retention.max_len, self._retention.max_age_s]
        for item in items:
            keyed = item.idempotency_key is not None
            args += [event_frame_tail(item.ts, item.name, item.data), item.name, encode(item.data), item.ts,
                     item.ttl_s if keyed else 0, len(item.channels)]
            for channel in item.channels:
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
            if item.idempotency_key is not None:
                keys.append(self._key("pub", item.idempotency_key))
        results = await self._run("publish", lambda: self._publish(keys=keys, args=args),
                                  idempotent=all(item.idempotency_key is not None for item in items))
        answers: list[dict[str, str]] = []
        for item, (kept, *ids) in zip(items, results, strict=True):
            if kept is not None:
                answers.append(ujson.loads(kept))
            else:
                answers.append({channel: id_.decode() for channel, id_ in zip(item.channels, ids, strict=True)})
        return answers

    async def history(self, channel: str, since: str | None, limit: int) -> Replay:
        after = format_id(parse_id(since)) if since is not None else ""
        args: list[str | int] = [after, limit, self._retention.max_len, self._retention.max_age_s]
        complete, rows = await self._run("history", lambda: self._history(keys=[self._key("s", channel)], args=args),
                                         idempotent=True)
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
        answers: list[str | Exception] = [""] * len(acks)

        async def channel_call(channel: str, indexes: list[int]) -> None:
            keys = [self._key("cursor", channel), self._key("s", channel)]
            args: list[str | int] = [self._retention.max_age_s, *(acks[i][1] for i in indexes)]
            try:
                cursor, *refused = await self._run("ack", lambda: self._ack(keys=keys, args=args), idempotent=True)
            except Exception as exc:
                for i in indexes:
                    answers[i] = exc
                return
            for i, refusal in zip(indexes, refused, strict=True):
                if refusal:
                    answers[i] = AckRefused(f"{acks[i][1]} is after the newest event of {channel}")
                else:
                    answers[i] = cursor.decode()

        await asyncio.gather(*(channel_call(channel, indexes) for channel, indexes in places.items()))
        return answers

    async def cursor(self, channel: str) -> str | None:
        cursor = cast(bytes | None, await self._run(
            "cursor", lambda: self._redis.get(self._key("cursor", channel)), idempotent=True))
        return cursor.decode() if cursor is not None else None

    async def control(self, message: dict[str, Any]) -> None:
        # not retried: a lost reply would deliver the message twice
        await self._run("control", lambda: self._redis.publish(self._control, encode(message)), idempotent=False)

    async def heartbeat(self, node_id: str, stats: dict[str, Any], ttl_s: int) -> None:
        async def beat() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key("node", node_id), encode(stats), ex=ttl_s)
                pipe.sadd(f"{self._prefix}nodes", node_id)
                await pipe.execute()

        await self._run("heartbeat", beat, idempotent=True)

    async def nodes(self) -> list[dict[str, Any]]:
        alive = await self._run(
            "nodes", lambda: self._nodes(keys=[f"{self._prefix}nodes"], args=[f"{self._prefix}node:"]), idempotent=True)
        return [ujson.loads(stats) for stats in alive]

    async def connection_opened(self, node_id: str, user_id: str, limit: int) -> bool:
        args: list[str | int] = [f"{self._prefix}node:", node_id, limit]
        # counts are not idempotent: never retried
        counted = await self._run(
            "connection_opened", lambda: self._connection_opened(keys=[self._key("conns", user_id)], args=args),
            idempotent=False)
        return bool(counted)

    async def connection_closed(self, node_id: str, user_id: str) -> None:
        await self._run("connection_closed",
                        lambda: self._connection_closed(keys=[self._key("conns", user_id)], args=[node_id]),
                        idempotent=False)

    async def audit_append(self, entry: dict[str, Any]) -> None:
        async def append() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(self._audit, encode(entry))
                pipe.ltrim(self._audit, 0, AUDIT_MAX - 1)
                await pipe.execute()

        # not retried: a lost reply would record the action twice
        await self._run("audit_append", append, idempotent=False)

    async def audit_list(self, limit: int) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        entries = await self._run("audit_list", lambda: self._redis.lrange(self._audit, 0, limit - 1),
                                  idempotent=True)
        return [ujson.loads(entry) for entry in entries]
