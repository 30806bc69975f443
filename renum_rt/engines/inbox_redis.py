"""The inbox in Redis: durable, bounded, one Lua script per operation.

Each operation is one script, so it is atomic (two tabs marking the same notification
at once change it once) and its answer (the unread count with its version) is the
state right after it. The rules are those of ``inbox.py``; the memory inbox is the
reference and the same contract suite runs against both.

Keys, under the engine prefix; a user's keys share the hash tag ``{<user>}``:

| key                       | type   | holds                                                     |
| ------------------------- | ------ | --------------------------------------------------------- |
| ``ib:seq``                | string | the last notification id handed out                      |
| ``ib:{u}:n``              | hash   | id -> notification JSON (without id and status)           |
| ``ib:{u}:unread|read|dismissed`` | zset | ids by status, scored by ``inbox.key(id)``         |
| ``ib:{u}:g``              | hash   | global id -> ``read`` / ``dismissed`` for this user        |
| ``ib:{u}:gb``             | string | this user's read-all boundary over global notifications   |
| ``ib:{u}:v``              | string | version of this user's state                              |
| ``ib:g:z`` / ``ib:g:n``   | zset / hash | global notifications: ids by key / id -> JSON        |
| ``ib:g:v``                | string | version of the global feed                                |

A user's unread count is ``ZCARD unread`` plus the global ids newer than the boundary
that the user has not read or dismissed: an announcement to 100,000 users is one write.
Scores are integers below 2^53, exact in Lua and in sorted sets; numbers are formatted
with ``%.0f`` in the scripts so that none is written in exponent notation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, cast

import redis.asyncio
import ujson

from ..ids import NOTIFICATION_SEQ as SEQ_PER_MS
from ..ids import notification_key as key
from ..protocol import encode
from .inbox import IDEMPOTENCY_TTL_S, Change, Counter, Inbox, InboxLimits, Page, Status, UnknownNotification

_LUA = r"""
local SEQ = 1024
local function num(x) return string.format('%.0f', x) end

-- a user's keys come in KEYS as: n, unread, read, dismissed, g, gb, v (7 keys from index i)
local function user_keys(i)
  return {n = KEYS[i], unread = KEYS[i + 1], read = KEYS[i + 2], dismissed = KEYS[i + 3],
          g = KEYS[i + 4], gb = KEYS[i + 5], v = KEYS[i + 6]}
end
-- the shared keys come first: seq, global zset, global hash, global version
local SEQKEY, GZ, GN, GV = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

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

local function drop(u, zset, ids)
  if #ids > 0 then
    redis.call('ZREM', zset, unpack(ids))
    redis.call('HDEL', u.n, unpack(ids))
  end
end

local function expire_global(horizon)
  local old = redis.call('ZRANGEBYSCORE', GZ, '-inf', '(' .. num(horizon))
  if #old > 0 then
    redis.call('ZREM', GZ, unpack(old))
    redis.call('HDEL', GN, unpack(old))
  end
end

local function expire_user(u, horizon)
  for _, zset in ipairs({u.unread, u.read, u.dismissed}) do
    drop(u, zset, redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. num(horizon)))
  end
end

local function boundary(u) return tonumber(redis.call('GET', u.gb) or '-1') end

local function global_status(u, id, score, gb)
  local state = redis.call('HGET', u.g, id)
  if state then return state end
  if score <= gb then return 'read' end
  return 'unread'
end

-- the user's unread count and version; forgets state of expired global ids
local function counter(u)
  local gb = boundary(u)
  local shared = redis.call('ZCOUNT', GZ, '(' .. num(gb), '+inf')
  local states = redis.call('HGETALL', u.g)
  for i = 1, #states, 2 do
    local score = redis.call('ZSCORE', GZ, states[i])
    if not score then
      redis.call('HDEL', u.g, states[i])
    elseif tonumber(score) > gb then
      shared = shared - 1
    end
  end
  local version = tonumber(redis.call('GET', u.v) or '0') + tonumber(redis.call('GET', GV) or '0')
  return {redis.call('ZCARD', u.unread) + shared, version}
end

local function touch(u, ttl)
  for _, k in pairs(u) do redis.call('EXPIRE', k, ttl) end
end

-- an idempotency key already used: its "<id>\n<json>"; else nil
local function replayed(idem)
  if idem == '' then return nil end
  return redis.call('GET', idem)
end
local function remember(idem, id, json, ttl)
  if idem ~= '' then redis.call('SET', idem, id .. '\n' .. json, 'EX', ttl) end
end
"""

# ARGV: now_ms, json, max_per_user, user horizon score, ttl_s, idempotency key ('' none),
# its ttl_s. KEYS: shared, then 7 per user. Returns {id, count, version per user}, or
# {'', "<id>\n<json>"} for a key already used.
_CREATE = _LUA + r"""
local now, json, cap, horizon, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local first = replayed(ARGV[6])
if first then return {'', first} end
local id, score = next_id(now)
remember(ARGV[6], id, json, ARGV[7])
local out = {id}
for i = 5, #KEYS, 7 do
  local u = user_keys(i)
  expire_user(u, horizon)
  redis.call('HSET', u.n, id, json)
  redis.call('ZADD', u.unread, num(score), id)
  local over = redis.call('ZCARD', u.unread) + redis.call('ZCARD', u.read) + redis.call('ZCARD', u.dismissed) - cap
  for _, zset in ipairs({u.dismissed, u.read, u.unread}) do
    if over <= 0 then break end
    local victims = redis.call('ZRANGE', zset, 0, over - 1)
    drop(u, zset, victims)
    over = over - #victims
  end
  redis.call('INCR', u.v)
  touch(u, ttl)
  local c = counter(u)
  out[#out + 1] = c[1]
  out[#out + 1] = c[2]
end
return out
"""

# ARGV: now_ms, json, max_global, global horizon score, idempotency key ('' none), its
# ttl_s. Returns the id, or {'', "<id>\n<json>"} for a key already used.
_ANNOUNCE = _LUA + r"""
local now, json, cap, horizon = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local first = replayed(ARGV[5])
if first then return {'', first} end
expire_global(horizon)
local id, score = next_id(now)
id = 'g' .. id
remember(ARGV[5], id, json, ARGV[6])
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

# ARGV: wanted statuses (space separated), below score ('' = none), limit, user horizon,
# global horizon. Returns {count, version, then id, score, status, json per candidate}.
_LIST = _LUA + r"""
local wanted, below, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local u = user_keys(5)
expire_user(u, tonumber(ARGV[4]))
expire_global(tonumber(ARGV[5]))
local top = '+inf'
if below ~= '' then top = '(' .. below end
local c = counter(u)
local out = {c[1], c[2]}
for status in string.gmatch(wanted, '%S+') do
  local rows = redis.call('ZREVRANGEBYSCORE', u[status], top, '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
  for i = 1, #rows, 2 do
    out[#out + 1] = rows[i]
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = status
    out[#out + 1] = redis.call('HGET', u.n, rows[i])
  end
end
local gb = boundary(u)
local rows = redis.call('ZREVRANGEBYSCORE', GZ, top, '-inf', 'WITHSCORES')
for i = 1, #rows, 2 do
  local status = global_status(u, rows[i], tonumber(rows[i + 1]), gb)
  if string.find(' ' .. wanted .. ' ', ' ' .. status .. ' ', 1, true) then
    out[#out + 1] = rows[i]
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = status
    out[#out + 1] = redis.call('HGET', GN, rows[i])
  end
end
return out
"""

# ARGV: status, user horizon, global horizon, ttl_s, ids... Returns {0, unknown ids...}
# or {1, count, version, changed ids...}.
_MARK = (
    _LUA
    + r"""
local target = ARGV[1]
local u = user_keys(5)
expire_user(u, tonumber(ARGV[2]))
expire_global(tonumber(ARGV[3]))
local unknown = {0}
for i = 5, #ARGV do
  local id = ARGV[i]
  local found
  if string.sub(id, 1, 1) == 'g' then
    found = redis.call('ZSCORE', GZ, id)
  else
    found = redis.call('HEXISTS', u.n, id) == 1
  end
  if not found then unknown[#unknown + 1] = id end
end
if #unknown > 1 then return unknown end
local gb = boundary(u)
local changed, seen = {}, {}
for i = 5, #ARGV do
  local id = ARGV[i]
  if not seen[id] then
    seen[id] = true
    if string.sub(id, 1, 1) == 'g' then
      local current = global_status(u, id, tonumber(redis.call('ZSCORE', GZ, id)), gb)
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
if #changed > 0 then
  redis.call('INCR', u.v)
  touch(u, ARGV[4])
end
local c = counter(u)
local out = {1, c[1], c[2]}
for _, id in ipairs(changed) do out[#out + 1] = id end
return out
"""
)

# ARGV: upto score ('' = everything), user horizon, global horizon, ttl_s.
# Returns {count, version, changed ids...}.
_READ_ALL = (
    _LUA
    + r"""
local u = user_keys(5)
expire_user(u, tonumber(ARGV[2]))
expire_global(tonumber(ARGV[3]))
local upto = ARGV[1]
if upto == '' then
  local last = redis.call('GET', SEQKEY)
  if last then
    local lm, ls = string.match(last, '^(%d+)-(%d+)$')
    upto = num(tonumber(lm) * SEQ + tonumber(ls))
  else
    upto = '-1'
  end
end
local changed = {}
local rows = redis.call('ZRANGEBYSCORE', u.unread, '-inf', upto, 'WITHSCORES')
for i = 1, #rows, 2 do
  redis.call('ZREM', u.unread, rows[i])
  redis.call('ZADD', u.read, rows[i + 1], rows[i])
  changed[#changed + 1] = rows[i]
end
local gb = boundary(u)
local globals = redis.call('ZRANGEBYSCORE', GZ, '(' .. num(gb), upto, 'WITHSCORES')
for i = 1, #globals, 2 do
  if not redis.call('HGET', u.g, globals[i]) then changed[#changed + 1] = globals[i] end
end
if tonumber(upto) > gb then redis.call('SET', u.gb, upto) end
if #changed > 0 then
  redis.call('INCR', u.v)
  touch(u, ARGV[4])
end
local c = counter(u)
local out = {c[1], c[2]}
for _, id in ipairs(changed) do out[#out + 1] = id end
return out
"""
)

# ARGV: global horizon. KEYS: shared, then 7 per user. Returns count, version per user.
_UNREAD = (
    _LUA
    + r"""
expire_global(tonumber(ARGV[1]))
local out = {}
for i = 5, #KEYS, 7 do
  local c = counter(user_keys(i))
  out[#out + 1] = c[1]
  out[#out + 1] = c[2]
end
return out
"""
)

#: users counted per script call, so that one call never holds Redis for long
UNREAD_BATCH = 200


#: how a script call is run: the engine's ``_run`` (errors mapped to EngineUnavailable,
#: one retry for idempotent calls), or a plain await in tests
Run = Callable[[str, Callable[[], Awaitable[Any]], bool], Awaitable[Any]]


async def _plain(command: str, call: Callable[[], Awaitable[Any]], idempotent: bool) -> Any:
    return await call()


class RedisInbox(Inbox):
    def __init__(
        self, client: redis.asyncio.Redis, prefix: str, limits: InboxLimits = InboxLimits(), run: Run = _plain
    ) -> None:
        self._run = run
        self._redis = client
        self._limits = limits
        self._shared = [f"{prefix}ib:seq", f"{prefix}ib:g:z", f"{prefix}ib:g:n", f"{prefix}ib:g:v"]
        self._prefix = prefix
        self._create = client.register_script(_CREATE)
        self._announce = client.register_script(_ANNOUNCE)
        self._list = client.register_script(_LIST)
        self._mark = client.register_script(_MARK)
        self._read_all = client.register_script(_READ_ALL)
        self._unread = client.register_script(_UNREAD)

    def _user_keys(self, user: str) -> list[str]:
        base = f"{self._prefix}ib:{{{user}}}:"
        return [base + k for k in ("n", "unread", "read", "dismissed", "g", "gb", "v")]

    def _horizons(self, now_ms: int) -> tuple[int, int]:
        return (
            (now_ms - self._limits.max_age_s * 1000) * SEQ_PER_MS,
            (now_ms - self._limits.global_max_age_s * 1000) * SEQ_PER_MS,
        )

    def _idem(self, idempotency_key: str | None) -> str:
        return f"{self._prefix}ib:idem:{idempotency_key}" if idempotency_key is not None else ""

    @staticmethod
    def _first(answer: bytes) -> dict[str, Any]:
        nid, _, stored = answer.partition(b"\n")
        return {"id": nid.decode(), **ujson.loads(stored), "status": "unread"}

    async def create(
        self,
        users: Sequence[str],
        fields: dict[str, Any],
        now_ms: int,
        idempotency_key: str | None = None,
        ttl_s: int = IDEMPOTENCY_TTL_S,
    ) -> tuple[dict[str, Any], dict[str, Counter]]:
        unique = list(dict.fromkeys(users))
        stored = {**fields, "created_at": now_ms}
        keys = list(self._shared)
        for user in unique:
            keys += self._user_keys(user)
        args: list[str | int] = [
            now_ms,
            encode(stored),
            self._limits.max_per_user,
            self._horizons(now_ms)[0],
            self._limits.max_age_s,
            self._idem(idempotency_key),
            ttl_s,
        ]
        reply = cast(
            list[Any],
            await self._run("inbox.create", lambda: self._create(keys=keys, args=args), idempotency_key is not None),
        )
        if reply[0] == b"":
            return self._first(reply[1]), {}
        nid = reply[0].decode()
        counts = {user: Counter(int(reply[1 + 2 * i]), int(reply[2 + 2 * i])) for i, user in enumerate(unique)}
        return {"id": nid, **stored, "status": "unread"}, counts

    async def announce(
        self, fields: dict[str, Any], now_ms: int, idempotency_key: str | None = None, ttl_s: int = IDEMPOTENCY_TTL_S
    ) -> tuple[dict[str, Any], bool]:
        stored = {**fields, "created_at": now_ms}
        args: list[str | int] = [
            now_ms,
            encode(stored),
            self._limits.max_global,
            self._horizons(now_ms)[1],
            self._idem(idempotency_key),
            ttl_s,
        ]
        reply = await self._run(
            "inbox.announce", lambda: self._announce(keys=self._shared, args=args), idempotency_key is not None
        )
        if isinstance(reply, list):
            return self._first(reply[1]), False
        return {"id": cast(bytes, reply).decode(), **stored, "status": "unread"}, True

    async def list(self, user: str, status: Status | None, limit: int, cursor: str | None, now_ms: int) -> Page:
        wanted = "unread read" if status is None else status
        below = str(key(cursor)) if cursor is not None else ""
        args: list[str | int] = [wanted, below, limit, *self._horizons(now_ms)]
        keys = self._shared + self._user_keys(user)
        reply = cast(list[Any], await self._run("inbox.list", lambda: self._list(keys=keys, args=args), True))
        rows = []
        for i in range(2, len(reply), 4):
            if reply[i + 3] is None:  # a personal id whose data expired between two reads: skip it
                continue
            rows.append(
                (
                    int(reply[i + 1]),
                    {"id": reply[i].decode(), **ujson.loads(reply[i + 3]), "status": reply[i + 2].decode()},
                )
            )
        rows.sort(key=lambda row: row[0], reverse=True)
        items = [item for _, item in rows[:limit]]
        next_cursor = items[-1]["id"] if len(rows) > limit else None
        return Page(items, next_cursor, Counter(int(reply[0]), int(reply[1])))

    async def mark(self, user: str, ids: Sequence[str], status: Literal["read", "dismissed"], now_ms: int) -> Change:
        args: list[str | int] = [status, *self._horizons(now_ms), self._limits.max_age_s, *ids]
        keys = self._shared + self._user_keys(user)
        reply = cast(list[Any], await self._run("inbox.mark", lambda: self._mark(keys=keys, args=args), True))
        if reply[0] == 0:
            raise UnknownNotification([i.decode() for i in reply[1:]])
        return Change([i.decode() for i in reply[3:]], status, Counter(int(reply[1]), int(reply[2])))

    async def read_all(self, user: str, before: str | None, now_ms: int) -> Change:
        upto = str(key(before)) if before is not None else ""
        args: list[str | int] = [upto, *self._horizons(now_ms), self._limits.max_age_s]
        keys = self._shared + self._user_keys(user)
        reply = cast(list[Any], await self._run("inbox.read_all", lambda: self._read_all(keys=keys, args=args), True))
        changed = sorted((i.decode() for i in reply[2:]), key=key)
        return Change(changed, "read", Counter(int(reply[0]), int(reply[1])))

    async def unread(self, users: Sequence[str], now_ms: int) -> dict[str, Counter]:
        counts: dict[str, Counter] = {}
        horizon = self._horizons(now_ms)[1]
        for start in range(0, len(users), UNREAD_BATCH):
            batch = users[start : start + UNREAD_BATCH]
            keys = list(self._shared)
            for user in batch:
                keys += self._user_keys(user)
            reply = cast(list[Any], await self._run(
                "inbox.unread", lambda keys=keys: self._unread(keys=keys, args=[horizon]), True))  # type: ignore[misc]
            for i, user in enumerate(batch):
                counts[user] = Counter(int(reply[2 * i]), int(reply[2 * i + 1]))
        return counts
