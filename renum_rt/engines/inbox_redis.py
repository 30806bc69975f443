"""The inbox in Redis: durable, bounded, and every script call within one hash slot.

The rules are those of ``inbox.py``; the memory inbox is the reference and the same
contract suite runs against both, on one Redis and on a Redis Cluster. A cluster runs a
script only on keys of one slot, so the data is split in two kinds of slot:

- the **feed slot** (hash tag ``{g}`` in a cluster): the id generator, the global
  announcements and their version, the idempotency keys;
- one **user slot** per user (hash tag ``{<user>}``): that user's notifications and
  state, and their version.

Keys, under the engine prefix; ``G`` is ``{g}`` in a cluster and empty on one Redis (so
one Redis keeps the key names it always had):

| key                       | type   | holds                                                     |
| ------------------------- | ------ | --------------------------------------------------------- |
| ``Gib:seq``               | string | the last notification id handed out                      |
| ``Gib:g:z`` / ``Gib:g:n`` | zset / hash | global notifications: ids by key / id -> JSON        |
| ``Gib:g:v``               | string | version of the global feed (one more per announcement)   |
| ``Gib:idem:<key>``        | string | ``<id>\\n<json>`` of an idempotency key (``?`` first: pending) |
| ``ib:{u}:n``              | hash   | id -> notification JSON (without id and status)           |
| ``ib:{u}:unread|read|dismissed`` | zset | ids by status, scored by ``inbox.key(id)``         |
| ``ib:{u}:g``              | hash   | global id -> ``read`` / ``dismissed`` for this user        |
| ``ib:{u}:gb``             | string | this user's read-all boundary over global notifications   |
| ``ib:{u}:v``              | string | version of this user's state                              |
| ``ib:{u}:seen``           | string | the newest feed version a call for this user used (60 s)  |

An operation is a call to the feed slot, then one script call per user slot (on one
Redis, one per 200 users), sent in a non-transactional pipeline: one round trip per
node. Compared with one script per operation, a create costs one more round trip (and
one more write: the id), and a count of many users in a cluster one script call per
user instead of per 200. The first call reads the feed
(the retained global ids, its version, the last id handed out) and, for a create,
hands out the id that every user of the create stores. Each user script gets the feed
version it was computed against and answers the user's own state, read in the same
atomic step as its change: its version, its personal unread count, its read-all
boundary, its marks on global ids. The count is that personal count plus the feed's
ids past the boundary the user did not mark, and its version is the user version plus
the feed version: both grow, so the sum grows with any change of either.

That sum never goes backwards because a user script refuses a feed version older than
the newest one a call for the same user already used (``seen``): the caller reads the
feed again and retries that user. So the calls of one user, in the order Redis runs
them, see user versions and feed versions that never decrease, and the last of them
counts an announcement made before its feed read. ``seen`` is written even for users
with no inbox (60 s, far longer than any call between its feed read and its script).

A create with an idempotency key is stored in three steps, each safe to repeat: the
key is taken with the new id (marked pending), each user stores that id unless it has
it already, then the key is marked done. A retry finds the key done (stores nothing,
no counts) or pending (stores what is missing, with the first call's id and content,
and answers every user's count so that they are told; a user whose copy the cap or
age removed in between gets it again). Without a key, a retry of a step stores no
second copy either: the id is handed out before any user stores it.

Scores are integers below 2^53, exact in Lua and in sorted sets; numbers are formatted
with ``%.0f`` in the scripts so that none is written in exponent notation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, cast

import redis.asyncio
import ujson
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from ..ids import NOTIFICATION_SEQ as SEQ_PER_MS
from ..ids import notification_key as key
from ..protocol import encode
from .inbox import IDEMPOTENCY_TTL_S, Change, Counter, Inbox, InboxLimits, Page, Status, UnknownNotification

_COMMON = r"""
local SEQ = 1024
local function num(x) return string.format('%.0f', x) end
-- the order of a notification id, personal or global
local function score_of(id)
  local ms, seq = string.match(id, '^g?(%d+)-(%d+)$')
  return tonumber(ms) * SEQ + tonumber(seq)
end
"""

# ---------------------------------------------------------------- the feed slot
# KEYS: seq, global zset, global hash, global version [, idempotency key]

_FEED_LUA = _COMMON + r"""
local SEQKEY, GZ, GN, GV, IDEM = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

local function next_id(now)
  local ms, seq = now, 0
  local last = redis.call('GET', SEQKEY)
  if last then
    local lm, ls = string.match(last, '^(%d+)-(%d+)$')
    lm, ls = tonumber(lm), tonumber(ls)
    if lm >= now then ms, seq = lm, ls + 1 end
    if seq >= SEQ then ms, seq = ms + 1, 0 end
  end
  local id = num(ms) .. '-' .. num(seq)
  redis.call('SET', SEQKEY, id)
  return id, ms * SEQ + seq
end

local function expire_global(horizon)
  local old = redis.call('ZRANGEBYSCORE', GZ, '-inf', '(' .. num(horizon))
  if #old > 0 then
    redis.call('ZREM', GZ, unpack(old))
    redis.call('HDEL', GN, unpack(old))
  end
end

-- what the user scripts are computed against: {version, last id handed out ('' none),
-- then every retained global id, oldest first, each followed by its JSON if asked}
local function feed(out, with_json)
  out[#out + 1] = tonumber(redis.call('GET', GV) or '0')
  out[#out + 1] = redis.call('GET', SEQKEY) or ''
  for _, id in ipairs(redis.call('ZRANGE', GZ, 0, -1)) do
    out[#out + 1] = id
    if with_json then out[#out + 1] = redis.call('HGET', GN, id) end
  end
  return out
end
"""

# ARGV: global horizon, '1' for the JSON of each global notification. Returns the feed.
_FEED = _FEED_LUA + r"""
expire_global(tonumber(ARGV[1]))
return feed({}, ARGV[2] == '1')
"""

# A create's first step. ARGV: now_ms, json, global horizon, the idempotency key's ttl_s.
# Returns {'done', "<id>\n<json>"} for a key used by a create that completed;
# {'pending', "<id>\n<json>", feed...} for one that may not have; {'new', id, feed...}.
_NEXT = _FEED_LUA + r"""
local kind, value = 'new', nil
local first = IDEM and redis.call('GET', IDEM)
if first and string.sub(first, 1, 1) ~= '?' then return {'done', first} end
if first then
  kind, value = 'pending', string.sub(first, 2)
else
  value = next_id(tonumber(ARGV[1]))
  if IDEM then redis.call('SET', IDEM, '?' .. value .. '\n' .. ARGV[2], 'EX', ARGV[4]) end
end
expire_global(tonumber(ARGV[3]))
return feed({kind, value}, false)
"""

# ARGV: now_ms, json, max_global, global horizon, the idempotency key's ttl_s.
# Returns the id, or {'', "<id>\n<json>"} for a key already used.
_ANNOUNCE = _FEED_LUA + r"""
local now, json, cap, horizon = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local first = IDEM and redis.call('GET', IDEM)
if first then return {'', first} end
expire_global(horizon)
local id, score = next_id(now)
id = 'g' .. id
if IDEM then redis.call('SET', IDEM, id .. '\n' .. json, 'EX', ARGV[5]) end
redis.call('ZADD', GZ, num(score), id)
redis.call('HSET', GN, id, json)
local over = redis.call('ZCARD', GZ) - cap
if over > 0 then
  local old = redis.call('ZRANGE', GZ, 0, over - 1)
  redis.call('ZREM', GZ, unpack(old))
  redis.call('HDEL', GN, unpack(old))
end
redis.call('INCR', GV)
return id
"""

# ---------------------------------------------------------------- user slots
# KEYS: n, unread, read, dismissed, g, gb, v, seen per user (every user of a call in one
# slot: one user in a cluster, up to BATCH on one Redis). ARGV: the feed version, the
# user horizon, the global horizon, then the operation's own. Each user's answer is
# {0, seen} when the feed is older than the one (version ``seen``) already used for this
# user (nothing changed for this user: read the feed again), else {1, version, personal
# unread, boundary, number of marks, then id, status per mark on a retained global id};
# the operation's own answer follows (scripts of one user only).

_USER_LUA = _COMMON + r"""
local FEED, HORIZON, GLOBAL_HORIZON = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

-- the user whose keys start at KEYS[i], and its seen key
local function user(i)
  return {n = KEYS[i], unread = KEYS[i + 1], read = KEYS[i + 2], dismissed = KEYS[i + 3], g = KEYS[i + 4],
          gb = KEYS[i + 5], v = KEYS[i + 6]}, KEYS[i + 7]
end

-- the newest feed version used for this user when it is newer than this call's, else nil
local function newer_seen(key)
  local seen = tonumber(redis.call('GET', key) or '-1')
  if seen > FEED then return seen end
  if seen < FEED then redis.call('SET', key, ARGV[1], 'EX', 60) end
  return nil
end

local function drop(u, zset, ids)
  if #ids > 0 then
    redis.call('ZREM', zset, unpack(ids))
    redis.call('HDEL', u.n, unpack(ids))
  end
end

local function expire_user(u)
  for _, zset in ipairs({u.unread, u.read, u.dismissed}) do
    drop(u, zset, redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. num(HORIZON)))
  end
end

local function boundary(u) return tonumber(redis.call('GET', u.gb) or '-1') end

local function touch(u, ttl)
  for _, k in pairs(u) do redis.call('EXPIRE', k, ttl) end
end

-- appends the user's state (see above) to out; forgets marks on global ids past their age
local function state(u, out)
  out[#out + 1] = 1
  out[#out + 1] = tonumber(redis.call('GET', u.v) or '0')
  out[#out + 1] = redis.call('ZCOUNT', u.unread, num(HORIZON), '+inf')
  out[#out + 1] = boundary(u)
  local count = #out + 1
  out[count] = 0
  local marks = redis.call('HGETALL', u.g)
  for i = 1, #marks, 2 do
    if score_of(marks[i]) < GLOBAL_HORIZON then
      redis.call('HDEL', u.g, marks[i])
    else
      out[#out + 1] = marks[i]
      out[#out + 1] = marks[i + 1]
      out[count] = out[count] + 1
    end
  end
  return out
end

-- runs change(u) for every user of the call whose feed is not too old; the answers
local function each_user(change)
  local out = {}
  for i = 1, #KEYS, 8 do
    local u, seen_key = user(i)
    local seen = newer_seen(seen_key)
    if seen then
      out[#out + 1] = 0
      out[#out + 1] = seen
    else
      change(u)
      state(u, out)
    end
  end
  return out
end
"""

# ARGV 4..: id, json, max_per_user, ttl_s. Each user stores the id unless it has it already.
_STORE = _USER_LUA + r"""
local id, cap = ARGV[4], tonumber(ARGV[6])
return each_user(function(u)
  if redis.call('HEXISTS', u.n, id) == 1 then return end
  expire_user(u)
  redis.call('HSET', u.n, id, ARGV[5])
  redis.call('ZADD', u.unread, num(score_of(id)), id)
  local over = redis.call('ZCARD', u.unread) + redis.call('ZCARD', u.read) + redis.call('ZCARD', u.dismissed) - cap
  for _, zset in ipairs({u.dismissed, u.read, u.unread}) do
    if over <= 0 then break end
    local victims = redis.call('ZRANGE', zset, 0, over - 1)
    drop(u, zset, victims)
    over = over - #victims
  end
  redis.call('INCR', u.v)
  touch(u, ARGV[7])
end)
"""

# Each user's state.
_COUNT = _USER_LUA + r"""
return each_user(function(u) end)
"""

# The scripts of one user begin here.
_ONE_USER_LUA = _USER_LUA + r"""
local u, seen_key = user(1)
local seen = newer_seen(seen_key)
if seen then return {0, seen} end

-- the answer of a change to ``changed`` ids: a new version and the TTL renewed when any
-- changed, then the state, then the ids
local function changed_ids(changed, ttl)
  if #changed > 0 then
    redis.call('INCR', u.v)
    touch(u, ttl)
  end
  local out = state(u, {})
  for _, id in ipairs(changed) do out[#out + 1] = id end
  return out
end
"""

# ARGV 4..: wanted statuses (space separated), below score ('' = none), limit.
# Answers the state, then id, score, status, json per personal candidate.
_LIST = _ONE_USER_LUA + r"""
local wanted, below, limit = ARGV[4], ARGV[5], tonumber(ARGV[6])
expire_user(u)
local top = '+inf'
if below ~= '' then top = '(' .. below end
local out = state(u, {})
for status in string.gmatch(wanted, '%S+') do
  local rows = redis.call('ZREVRANGEBYSCORE', u[status], top, '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
  for i = 1, #rows, 2 do
    out[#out + 1] = rows[i]
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = status
    out[#out + 1] = redis.call('HGET', u.n, rows[i])
  end
end
return out
"""

# ARGV 4..: status, ttl_s, '1' when a global id is unknown (the caller checked them
# against the feed), ids... Answers {2, unknown personal ids...} (nothing changed), or
# the state then the ids it changed.
_MARK = _ONE_USER_LUA + r"""
local target = ARGV[4]
expire_user(u)
local unknown = {2}
for i = 7, #ARGV do
  local id = ARGV[i]
  if string.sub(id, 1, 1) ~= 'g' and redis.call('HEXISTS', u.n, id) == 0 then unknown[#unknown + 1] = id end
end
if #unknown > 1 or ARGV[6] == '1' then return unknown end
local gb = boundary(u)
local changed, done = {}, {}
for i = 7, #ARGV do
  local id = ARGV[i]
  if not done[id] then
    done[id] = true
    if string.sub(id, 1, 1) == 'g' then
      local current = redis.call('HGET', u.g, id)
      if not current then current = score_of(id) <= gb and 'read' or 'unread' end
      if current ~= target and current ~= 'dismissed' then
        redis.call('HSET', u.g, id, target)
        changed[#changed + 1] = id
      end
    else
      local current, score = nil, nil
      for _, status in ipairs({'unread', 'read', 'dismissed'}) do
        score = redis.call('ZSCORE', u[status], id)
        if score then current = status break end
      end
      if current ~= target and current ~= 'dismissed' then
        redis.call('ZREM', u[current], id)
        redis.call('ZADD', u[target], score, id)
        changed[#changed + 1] = id
      end
    end
  end
end
return changed_ids(changed, ARGV[5])
"""

# ARGV 4..: upto score, ttl_s, the feed's global ids up to it. Answers the state, then
# the ids it changed.
_READ_ALL = _ONE_USER_LUA + r"""
local upto = ARGV[4]
expire_user(u)
local changed = {}
local rows = redis.call('ZRANGEBYSCORE', u.unread, '-inf', upto, 'WITHSCORES')
for i = 1, #rows, 2 do
  redis.call('ZREM', u.unread, rows[i])
  redis.call('ZADD', u.read, rows[i + 1], rows[i])
  changed[#changed + 1] = rows[i]
end
local gb = boundary(u)
for i = 6, #ARGV do
  if score_of(ARGV[i]) > gb and not redis.call('HGET', u.g, ARGV[i]) then changed[#changed + 1] = ARGV[i] end
end
if tonumber(upto) > gb then redis.call('SET', u.gb, upto) end
return changed_ids(changed, ARGV[5])
"""

#: users per script call on one Redis (a cluster's calls have the users of one slot), and
#: script calls per pipeline: so that no call holds Redis long
BATCH = 200


#: how a call is run: the engine's ``_run`` (errors mapped to EngineUnavailable, one
#: retry for idempotent calls), or a plain await in tests
Run = Callable[[str, Callable[[], Awaitable[Any]], bool], Awaitable[Any]]


async def _plain(command: str, call: Callable[[], Awaitable[Any]], idempotent: bool) -> Any:
    return await call()


def _split(reply: list[Any], users: int) -> list[list[Any]]:
    """The answer of each user of a script call (the last one's with the operation's own)."""
    parts, start = [], 0
    for i in range(users):
        if i == users - 1:
            end = len(reply)
        elif reply[start] == 0:
            end = start + 2
        else:
            end = start + 5 + 2 * int(reply[start + 4])
        parts.append(reply[start:end])
        start = end
    return parts


@dataclasses.dataclass(frozen=True, slots=True)
class _Feed:
    """The feed slot as read by one call: what user scripts are computed against."""

    version: int
    #: the key of the last id handed out (-1: none yet)
    last: int
    #: retained global ids, oldest first -> their key
    ids: dict[str, int]
    #: their JSON, when the call asked for it
    json: dict[str, bytes] | None

    @classmethod
    def parse(cls, reply: list[Any], with_json: bool) -> _Feed:
        last = reply[1].decode()
        step = 2 if with_json else 1
        ids = [i.decode() for i in reply[2::step]]
        json = dict(zip(ids, reply[3::2], strict=True)) if with_json else None
        return cls(int(reply[0]), key(last) if last else -1, {i: key(i) for i in ids}, json)


@dataclasses.dataclass(frozen=True, slots=True)
class _State:
    """A user's own state, as a user script answered it with its change."""

    version: int
    unread: int
    boundary: int
    #: global id -> ``read`` / ``dismissed``
    marks: dict[str, Status]

    @classmethod
    def parse(cls, reply: list[Any]) -> tuple[_State, list[Any]]:
        """The state, and the rest of the answer (the operation's own)."""
        end = 5 + 2 * int(reply[4])
        marks = {reply[i].decode(): cast(Status, reply[i + 1].decode()) for i in range(5, end, 2)}
        return cls(int(reply[1]), int(reply[2]), int(reply[3]), marks), reply[end:]

    def status(self, gid: str, k: int) -> Status:
        return self.marks.get(gid) or ("read" if k <= self.boundary else "unread")

    def counter(self, feed: _Feed) -> Counter:
        shared = sum(1 for gid, k in feed.ids.items() if self.status(gid, k) == "unread")
        return Counter(self.unread + shared, self.version + feed.version)


class RedisInbox(Inbox):
    def __init__(
        self,
        client: redis.asyncio.Redis | RedisCluster,
        prefix: str,
        limits: InboxLimits = InboxLimits(),
        run: Run = _plain,
        *,
        cluster: bool = False,
    ) -> None:
        self._run = run
        self._redis = client
        self._limits = limits
        self._prefix = prefix
        self._cluster = cluster
        #: the feed slot's keys: hash-tagged together in a cluster, the old names on one Redis
        self._g = f"{prefix}{{g}}ib:" if cluster else f"{prefix}ib:"
        self._shared = [self._g + k for k in ("seq", "g:z", "g:n", "g:v")]
        self._feed_script = client.register_script(_FEED)
        self._next = client.register_script(_NEXT)
        self._announce = client.register_script(_ANNOUNCE)
        self._store = client.register_script(_STORE)
        self._list = client.register_script(_LIST)
        self._mark = client.register_script(_MARK)
        self._read_all = client.register_script(_READ_ALL)
        self._count = client.register_script(_COUNT)

    def _user_keys(self, users: Sequence[str]) -> list[str]:
        """The KEYS of a user script call: 8 per user."""
        bases = [f"{self._prefix}ib:{{{user}}}:" for user in users]
        return [base + k for base in bases for k in ("n", "unread", "read", "dismissed", "g", "gb", "v", "seen")]

    def _horizons(self, now_ms: int) -> tuple[int, int]:
        return (
            (now_ms - self._limits.max_age_s * 1000) * SEQ_PER_MS,
            (now_ms - self._limits.global_max_age_s * 1000) * SEQ_PER_MS,
        )

    def _idem(self, idempotency_key: str | None) -> list[str]:
        return [f"{self._g}idem:{idempotency_key}"] if idempotency_key is not None else []

    @staticmethod
    def _first(answer: bytes) -> dict[str, Any]:
        nid, _, stored = answer.partition(b"\n")
        return {"id": nid.decode(), **ujson.loads(stored), "status": "unread"}

    async def _feed(self, now_ms: int, with_json: bool) -> _Feed:
        args = [self._horizons(now_ms)[1], int(with_json)]
        reply = await self._run("inbox.feed", lambda: self._feed_script(keys=self._shared, args=args), True)
        return _Feed.parse(cast(list[Any], reply), with_json)

    async def _pipeline(self, script: AsyncScript, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """``script`` once per call in one non-transactional pipeline (a cluster sends
        each node its calls in one round trip). Calls a restarted node answered NOSCRIPT
        are sent again once the script is loaded (on every primary of a cluster)."""

        async def send(todo: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in todo:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # a cluster blocks .evalsha
            return await pipe.execute(raise_on_error=False)

        replies = await send(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            await self._redis.script_load(script.script)
            for i, reply in zip(missing, await send([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _calls(self, users: Sequence[str]) -> list[list[str]]:
        """``users`` grouped into script calls: up to BATCH on one Redis; in a cluster,
        those of one slot (rarely more than one)."""
        groups: dict[int, list[str]] = {}
        for user in users:
            slot = key_slot(self._user_keys([user])[0].encode()) if self._cluster else 0
            groups.setdefault(slot, []).append(user)
        return [group[i : i + BATCH] for group in groups.values() for i in range(0, len(group), BATCH)]

    async def _per_user(
        self,
        command: str,
        script: AsyncScript,
        users: Sequence[str],
        args: Callable[[_Feed], list[Any]],
        feed: _Feed,
        now_ms: int,
    ) -> dict[str, tuple[_Feed, list[Any]]]:
        """``script`` for each user against ``feed``: each user's answer with the feed it
        was computed against. Users whose call refused ``feed`` as older than one
        already used for them run again against a feed read now.

        A feed read after such a refusal can only be older than the one refused if the
        feed slot lost writes (a failover to a replica that had not got them): its
        version is then raised to the newest one used, so that versions keep growing and
        the calls do not refuse it again."""
        answers: dict[str, tuple[_Feed, list[Any]]] = {}
        todo = list(users)
        while todo:
            calls = self._calls(todo)
            common = [feed.version, *self._horizons(now_ms), *args(feed)]
            replies: list[Any] = []
            for start in range(0, len(calls), BATCH):
                batch = [(self._user_keys(call), common) for call in calls[start : start + BATCH]]
                replies += await self._run(command, functools.partial(self._pipeline, script, batch), True)
            refused: dict[str, int] = {}
            for call, reply in zip(calls, replies, strict=True):
                for user, answer in zip(call, _split(reply, len(call)), strict=True):
                    if answer[0] == 0:
                        refused[user] = int(answer[1])
                    else:
                        answers[user] = (feed, answer)
            if refused:
                feed = await self._feed(now_ms, feed.json is not None)
                feed = dataclasses.replace(feed, version=max(feed.version, *refused.values()))
            todo = list(refused)
        return answers

    async def create(
        self,
        users: Sequence[str],
        fields: dict[str, Any],
        now_ms: int,
        idempotency_key: str | None = None,
        ttl_s: int = IDEMPOTENCY_TTL_S,
    ) -> tuple[dict[str, Any], dict[str, Counter]]:
        stored = {**fields, "created_at": now_ms}
        json = encode(stored).encode()
        idem = self._idem(idempotency_key)
        args: list[str | int | bytes] = [now_ms, json, self._horizons(now_ms)[1], ttl_s]
        reply = cast(
            list[Any], await self._run("inbox.create", lambda: self._next(keys=self._shared + idem, args=args), True)
        )
        if reply[0] == b"done":
            return self._first(reply[1]), {}
        if reply[0] == b"new":
            nid = reply[1].decode()
            notification = {"id": nid, **stored, "status": "unread"}
        else:  # pending: finish the first call's create, with its id and content
            notification = self._first(reply[1])
            nid, json = notification["id"], reply[1].partition(b"\n")[2]
        store = [nid, json, self._limits.max_per_user, self._limits.max_age_s]
        answers = await self._per_user(
            "inbox.create", self._store, list(dict.fromkeys(users)), lambda _: store,
            _Feed.parse(reply[2:], False), now_ms,
        )
        if idem:
            done = nid.encode() + b"\n" + json
            await self._run("inbox.create", lambda: self._redis.set(idem[0], done, xx=True, keepttl=True), True)
        return notification, {u: _State.parse(a)[0].counter(f) for u, (f, a) in answers.items()}

    async def announce(
        self, fields: dict[str, Any], now_ms: int, idempotency_key: str | None = None, ttl_s: int = IDEMPOTENCY_TTL_S
    ) -> tuple[dict[str, Any], bool]:
        stored = {**fields, "created_at": now_ms}
        args: list[str | int] = [now_ms, encode(stored), self._limits.max_global, self._horizons(now_ms)[1], ttl_s]
        keys = self._shared + self._idem(idempotency_key)
        reply = await self._run(
            "inbox.announce", lambda: self._announce(keys=keys, args=args), idempotency_key is not None
        )
        if isinstance(reply, list):
            return self._first(reply[1]), False
        return {"id": cast(bytes, reply).decode(), **stored, "status": "unread"}, True

    async def list(self, user: str, status: Status | None, limit: int, cursor: str | None, now_ms: int) -> Page:
        wanted: tuple[Status, ...] = ("unread", "read") if status is None else (status,)
        below = key(cursor) if cursor is not None else None
        args = [" ".join(wanted), "" if below is None else below, limit]
        feed = await self._feed(now_ms, True)
        feed, reply = (await self._per_user("inbox.list", self._list, [user], lambda _: args, feed, now_ms))[user]
        state, rest = _State.parse(reply)
        rows = []
        for i in range(0, len(rest), 4):
            if rest[i + 3] is None:  # a personal id whose data expired between two reads: skip it
                continue
            item = {"id": rest[i].decode(), **ujson.loads(rest[i + 3]), "status": rest[i + 2].decode()}
            rows.append((int(rest[i + 1]), item))
        for gid, k in feed.ids.items():
            gstatus = state.status(gid, k)
            if gstatus in wanted and (below is None or k < below):
                rows.append((k, {"id": gid, **ujson.loads(cast(dict[str, bytes], feed.json)[gid]), "status": gstatus}))
        rows.sort(key=lambda row: row[0], reverse=True)
        items = [item for _, item in rows[:limit]]
        next_cursor = items[-1]["id"] if len(rows) > limit else None
        return Page(items, next_cursor, state.counter(feed))

    async def mark(self, user: str, ids: Sequence[str], status: Literal["read", "dismissed"], now_ms: int) -> Change:
        def args(feed: _Feed) -> list[Any]:
            refused = any(i.startswith("g") and i not in feed.ids for i in ids)
            return [status, self._limits.max_age_s, int(refused), *ids]

        feed = await self._feed(now_ms, False)
        feed, reply = (await self._per_user("inbox.mark", self._mark, [user], args, feed, now_ms))[user]
        if reply[0] == 2:
            personal = {i.decode() for i in reply[1:]}
            raise UnknownNotification([i for i in ids if i in personal or (i.startswith("g") and i not in feed.ids)])
        state, changed = _State.parse(reply)
        return Change([i.decode() for i in changed], status, state.counter(feed))

    async def read_all(self, user: str, before: str | None, now_ms: int) -> Change:
        def args(feed: _Feed) -> list[Any]:
            upto = key(before) if before is not None else feed.last
            return [upto, self._limits.max_age_s, *(gid for gid, k in feed.ids.items() if k <= upto)]

        feed = await self._feed(now_ms, False)
        feed, reply = (await self._per_user("inbox.read_all", self._read_all, [user], args, feed, now_ms))[user]
        state, changed = _State.parse(reply)
        return Change(sorted((i.decode() for i in changed), key=key), "read", state.counter(feed))

    async def unread(self, users: Sequence[str], now_ms: int) -> dict[str, Counter]:
        feed = await self._feed(now_ms, False)
        answers = await self._per_user("inbox.unread", self._count, list(dict.fromkeys(users)), lambda _: [], feed,
                                       now_ms)
        return {u: _State.parse(answers[u][1])[0].counter(answers[u][0]) for u in users}
