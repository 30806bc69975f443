"""The engine's Lua scripts: each is one atomic step in Redis.

Each touches only the keys it is given (in ``KEYS``), all of one hash slot in a Redis
Cluster: a channel's keys share its hash tag, and the node-wide keys (nodes, heartbeats,
connection counts, audit) share theirs."""

# Lua helpers: is id a before id b (ids are "<ms>-<seq>"; ms fits a Lua double exactly),
# and the Redis clock in ms (the clock of stream ids).
HELPERS = r"""
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
# in order, as one script call. ARGV: fanout ('' in a cluster: see below), the shard
# channel prefix, max_len, max_age_s, then per event: tail,
# name, data, ts, the answer's ttl (0 = no key), its channel count, then per channel:
# channel and mode ('s' stored, 'l' stored + latest, 'c' live only). KEYS: per event,
# per channel its stream (or id counter), then its latest hash if it keeps one; last,
# with an idempotency key, the key's answer. Each event's storing, its answer and its
# fan-out (one PUBLISH for the whole group: per event the frame tail, then a channel and
# id line per channel, events separated by an empty line, since a node parsing one message
# per event spent most of its time in the pub/sub reader; in a cluster, one SPUBLISH per
# channel to ``<shard prefix>{<channel>}``, in the channel's slot, with the tail, that
# channel and its id) happen together
# and in group order, so live order is stream order and a key never holds a half
# answer; an event whose key already holds an answer (an earlier publish, or an earlier
# event of this group) stores nothing. Returns per event {the answer JSON already kept
# under the key} or {false, ids...}. Its first write is the first XADD/SET, so a Redis
# refusing writes refuses before any.
PUBLISH = HELPERS + r"""
local fanout, shard = ARGV[1], ARGV[2]
local max_len, max_age = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local out, k, a, published = {}, 1, 5, {}
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
      if fanout == '' then
        redis.call('SPUBLISH', shard .. '{' .. channel .. '}', tail .. '\n' .. channel .. '\n' .. id)
      end
      lines[#lines + 1] = channel
      lines[#lines + 1] = id
      ids[#ids + 1] = id
      answer[channel] = id
    end
    if ttl > 0 then redis.call('SET', KEYS[k], cjson.encode(answer), 'EX', ttl) end
    published[#published + 1] = table.concat(lines, '\n')
    out[#out + 1] = ids
    k = k - span
  end
  k = k + span + (ttl > 0 and 1 or 0)
end
if fanout ~= '' and #published > 0 then redis.call('PUBLISH', fanout, table.concat(published, '\n\n')) end
return out
"""

# KEYS: the stream. ARGV: since ('' for none), limit, max_len, max_age_s.
# Entries beyond max_len or older than max_age_s count as dropped even while the
# approximate (~) trimming of publish still holds them. ``gap`` is the greatest id that
# may be missing: history after ``since`` is complete when since >= gap. A stream
# created anew (after it expired) has lost everything before its first entry.
# Returns {complete (1/0), newest-first entries}.
HISTORY = HELPERS + r"""
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
ACK = HELPERS + r"""
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
NODES = r"""
local alive = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local stats = redis.call('GET', ARGV[1] .. node)
  if stats then alive[#alive + 1] = stats else redis.call('SREM', KEYS[1], node) end
end
return alive
"""

# KEYS: the user's conns hash. ARGV: node key prefix, node id, limit. Counts only nodes
# whose heartbeat key exists (forgets the others); returns 1 when counted, 0 when refused.
CONNECTION_OPENED = r"""
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
CONNECTION_CLOSED = r"""
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
"""


# KEYS: the node's stats key, the node set. ARGV: the stats JSON, their ttl (s), node id.
HEARTBEAT = r"""
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
"""

# KEYS: the audit list. ARGV: the entry JSON, how many entries the list keeps.
AUDIT_APPEND = r"""
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
"""
