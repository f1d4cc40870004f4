"""The Lua scripts of the ``redis://`` backend: every queue operation is one atomic script.

Keys of queue ``Q`` under the url's prefix ``P`` (see docs/backends.md):

- ``P q:{Q}:opts``  hash: the declared options (strings), ``side=1`` for a dead-letter queue created on the side
- ``P q:{Q}:st``    hash: counters (ready, blocked, inflight, sent, acked, redelivered, dead_lettered, expired,
  deduplicated, consumers)
- ``P q:{Q}:prios`` sorted set of the priority levels that have a stream; ``P q:{Q}:s:<priority>`` one stream per
  level, consumer group ``g``; entry ids are ``0-<n>`` from the global counter ``P seq`` (comparable across levels)
- ``P q:{Q}:delayed`` sorted set (score: due time in ms) of msgpack-packed messages
- ``P q:{Q}:expiry`` sorted set (score: expiry in ms) of ``<priority>|<entry id>``: the waiting entries with a ttl,
  so that one expires where it waits, even behind a backlog of higher priorities that no fetch gets past
- ``P q:{Q}:holders`` hash key -> 1 and ``P q:{Q}:blocked:<key>`` lists (ordered_by_key)
- ``P q:{Q}:dedup:<id>`` string with expiry (dedup window)
- ``P q:{Q}:r:<s|a>:<second>`` rate counters (expire after 10 s)
- ``P expiring`` sorted set: each queue with an entry in its ``expiry`` set, scored (about) by the soonest one
- ``P queues`` set of names; ``P groups`` hash group -> pattern; ``P topiclog`` stream of publications

A message in a stream is the fields ``h`` (ringbus header frame), ``b`` (body frame, absent when inline), ``a``
(deliveries before), ``x`` (expiry, ms, 0 none), ``k`` (key), ``p`` (priority), ``dr``/``df`` (dead reason/from).
Every entry is delivered once (XREADGROUP ``>``): a message that comes back is added again (behind what waits at
its priority, as on the broker) with ``a`` one higher, so ``a`` is its delivery count.
"""

from __future__ import annotations

COMMON = r"""
local P = ARGV[1]
local function K(q, s) return P .. 'q:{' .. q .. '}:' .. s end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function opts(q)
  local raw = redis.call('HGETALL', K(q, 'opts'))
  if #raw == 0 then return nil end
  local o = {}
  for i = 1, #raw, 2 do o[raw[i]] = raw[i + 1] end
  return o
end
local function tofields(m)
  local f = {'h', m.h, 'a', m.a, 'x', m.x, 'k', m.k, 'p', m.p}
  if m.b then f[#f + 1] = 'b'; f[#f + 1] = m.b end
  if m.dr and m.dr ~= '' then
    f[#f + 1] = 'dr'; f[#f + 1] = m.dr; f[#f + 1] = 'df'; f[#f + 1] = m.df
  end
  return f
end
local function fromfields(f)
  local m = {b = false, dr = '', df = ''}
  for i = 1, #f, 2 do m[f[i]] = f[i + 1] end
  m.a = tonumber(m.a); m.x = tonumber(m.x); m.p = tonumber(m.p)
  return m
end
local function rate(q, kind, now)
  local rk = K(q, 'r:' .. kind .. ':' .. math.floor(now / 1000))
  redis.call('INCR', rk)
  redis.call('EXPIRE', rk, 10)
end
local function stream_add(q, m)
  local s = K(q, 's:' .. m.p)
  if redis.call('ZADD', K(q, 'prios'), 'NX', m.p, tostring(m.p)) == 1 then
    redis.pcall('XGROUP', 'CREATE', s, 'g', '0', 'MKSTREAM')
  end
  m.hold = nil
  local id = '0-' .. redis.call('INCR', P .. 'seq')
  redis.call('XADD', s, id, unpack(tofields(m)))
  if m.x > 0 then
    redis.call('ZADD', K(q, 'expiry'), m.x, m.p .. '|' .. id)
    redis.call('ZADD', P .. 'expiring', 'LT', m.x, q)
  end
  redis.call('HINCRBY', K(q, 'st'), 'ready', 1)
end
local function unindex(q, level, id, m)
  -- the entry leaves the waiting ones (delivered or removed): its ttl is no longer the sweep's business
  if m.x > 0 then redis.call('ZREM', K(q, 'expiry'), level .. '|' .. id) end
end
local function admit(q, o, m)
  if o.ordered_by_key == '1' and m.k ~= '' and not m.hold then
    if redis.call('HSETNX', K(q, 'holders'), m.k, 1) == 0 then
      redis.call('RPUSH', K(q, 'blocked:' .. m.k), cmsgpack.pack(m))
      redis.call('HINCRBY', K(q, 'st'), 'blocked', 1)
      return
    end
  end
  stream_add(q, m)
end
local function release_key(q, o, m)
  if o.ordered_by_key == '1' and m.k ~= '' then
    local nxt = redis.call('LPOP', K(q, 'blocked:' .. m.k))
    if nxt then
      redis.call('HINCRBY', K(q, 'st'), 'blocked', -1)
      stream_add(q, cmsgpack.unpack(nxt))
    else
      redis.call('HDEL', K(q, 'holders'), m.k)
    end
  end
end
local function waiting(q)
  local st = redis.call('HMGET', K(q, 'st'), 'ready', 'blocked')
  return (tonumber(st[1]) or 0) + (tonumber(st[2]) or 0) + redis.call('ZCARD', K(q, 'delayed'))
end
local function drop_level_if_empty(q, level)
  local s = K(q, 's:' .. level)
  if redis.call('XLEN', s) == 0 then
    redis.call('DEL', s)
    redis.call('ZREM', K(q, 'prios'), tostring(level))
  end
end
local function oldest_ready(q)
  -- the first undelivered entry of each level (after the group's last-delivered-id); the smallest id is oldest
  local best, best_level, best_n = nil, nil, nil
  for _, level in ipairs(redis.call('ZRANGE', K(q, 'prios'), 0, -1)) do
    local s = K(q, 's:' .. level)
    local groups = redis.call('XINFO', 'GROUPS', s)
    local last = '0-0'
    if groups[1] then
      local g = groups[1]
      for i = 1, #g, 2 do if g[i] == 'last-delivered-id' then last = g[i + 1] end end
    end
    local e = redis.call('XRANGE', s, '(' .. last, '+', 'COUNT', 1)
    if e[1] then
      local n = tonumber(string.sub(e[1][1], 3))
      if best_n == nil or n < best_n then best, best_level, best_n = e[1], level, n end
    end
  end
  return best, best_level
end

local dead
local function make_room(q, o, depth)
  -- drop_oldest: the oldest ready message (else the soonest delayed one) goes to the dead-letter queue
  local e, level = oldest_ready(q)
  if e then
    redis.call('XDEL', K(q, 's:' .. level), e[1])
    unindex(q, level, e[1], fromfields(e[2]))
    redis.call('HINCRBY', K(q, 'st'), 'ready', -1)
    drop_level_if_empty(q, level)
    dead(q, o, fromfields(e[2]), 'overflow', depth)
    return true
  end
  local d = redis.call('ZPOPMIN', K(q, 'delayed'))
  if d[1] then
    dead(q, o, cmsgpack.unpack(d[1]), 'overflow', depth)
    return true
  end
  return false
end
dead = function(q, o, m, reason, depth)
  local st = K(q, 'st')
  redis.call('HINCRBY', st, 'dead_lettered', 1)
  if reason == 'expired' then redis.call('HINCRBY', st, 'expired', 1) end
  release_key(q, o, m)
  if o.side == '1' or (depth or 0) > 1 then return end  -- dead letters do not chain
  local dq = o.dlq
  local d = opts(dq)
  if not d then return end
  m.dr = reason; m.df = q; m.hold = nil
  m.x = 0
  if d.ttl ~= '' then m.x = now_ms() + math.floor(tonumber(d.ttl) * 1000) end
  if d.max_length ~= '' then
    local max = tonumber(d.max_length)
    while waiting(dq) >= max do
      if d.overflow == 'reject' or not make_room(dq, d, (depth or 0) + 1) then return end
    end
  end
  admit(dq, d, m)
  redis.call('HINCRBY', K(dq, 'st'), 'sent', 1)
end
local function comeback(q, o, m, delay, now)
  -- m.a already counts the delivery that ended
  if m.a >= tonumber(o.max_attempts) then dead(q, o, m, 'max_attempts'); return end
  if m.x > 0 and m.x <= now then dead(q, o, m, 'expired'); return end
  if delay > 0 then
    if o.ordered_by_key == '1' and m.k ~= '' then m.hold = 1 end
    m.n = redis.call('INCR', P .. 'seq')
    redis.call('ZADD', K(q, 'delayed'), now + delay, cmsgpack.pack(m))
  else
    stream_add(q, m)
  end
end
local function give_back(q, o, s, id, now)
  -- a delivery that ended unsettled (lease lapsed, bus closed): back to the queue, counted as an attempt
  local e = redis.call('XRANGE', s, id, id)
  redis.call('XACK', s, 'g', id)
  redis.call('XDEL', s, id)
  redis.call('HINCRBY', K(q, 'st'), 'inflight', -1)
  if not e[1] then return false end
  local m = fromfields(e[1][2])
  m.a = m.a + 1
  comeback(q, o, m, 0, now)
  return true
end
local function expire_waiting(q, o, now)
  -- entries waiting in q past their ttl, wherever they wait (a fetch reads only from the highest priority down)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', K(q, 'expiry'), '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', K(q, 'expiry'), member)
    local level, id = string.match(member, '^(.-)|(.+)$')
    local s = K(q, 's:' .. level)
    local e = redis.call('XRANGE', s, id, id)
    if e[1] and not redis.call('XPENDING', s, 'g', id, id, 1)[1] then
      redis.call('XDEL', s, id)
      redis.call('HINCRBY', K(q, 'st'), 'ready', -1)
      drop_level_if_empty(q, level)
      dead(q, o, fromfields(e[1][2]), 'expired')
    end
  end
  local soonest = redis.call('ZRANGE', K(q, 'expiry'), 0, 0, 'WITHSCORES')
  if soonest[2] then redis.call('ZADD', P .. 'expiring', soonest[2], q) else redis.call('ZREM', P .. 'expiring', q) end
end
local function expire_everywhere(now)
  -- every script that maintains a queue also expires what waits past its ttl in any queue of the prefix: a
  -- queue whose consumers are all busy (or which nobody reads) still sends its expired messages on in time
  for _, q in ipairs(redis.call('ZRANGEBYSCORE', P .. 'expiring', '-inf', now, 'LIMIT', 0, 16)) do
    local o = opts(q)
    if o then expire_waiting(q, o, now) else redis.call('ZREM', P .. 'expiring', q) end
  end
end
local function maintain(q, o, now, reclaim)
  -- delayed messages that are due join their stream (or their key's line)
  local due = redis.call('ZRANGEBYSCORE', K(q, 'delayed'), '-inf', now, 'LIMIT', 0, 1000)
  for _, packed in ipairs(due) do
    redis.call('ZREM', K(q, 'delayed'), packed)
    local m = cmsgpack.unpack(packed)
    if m.x > 0 and m.x <= now then dead(q, o, m, 'expired') else admit(q, o, m) end
  end
  expire_everywhere(now)
  if not reclaim then return end
  -- leases past the visibility timeout (a slow or dead consumer): the message comes back, one more attempt
  local vt = math.floor(tonumber(o.visibility_timeout) * 1000)
  for _, level in ipairs(redis.call('ZRANGE', K(q, 'prios'), 0, -1)) do
    local s = K(q, 's:' .. level)
    local expired = redis.call('XPENDING', s, 'g', 'IDLE', vt, '-', '+', 100)
    for _, p in ipairs(expired) do give_back(q, o, s, p[1], now) end
    drop_level_if_empty(q, level)
  end
end
"""

SEND = COMMON + r"""
-- ARGV: P, queue, h, nb (0|1), b, key, priority, delay_ms (-1), ttl_ms (-1), dedup_id (''), id
local q = ARGV[2]
local o = opts(q)
if not o then return {'notfound'} end
local now = now_ms()
local st = K(q, 'st')
local dedup = ARGV[10]
local window = math.floor(tonumber(o.dedup_window) * 1000)
local dk = nil
if dedup ~= '' and window > 0 then
  dk = K(q, 'dedup:' .. dedup)
  local prev = redis.call('GET', dk)
  if prev then
    redis.call('HINCRBY', st, 'deduplicated', 1)
    return {'ok', prev}
  end
end
maintain(q, o, now, false)
if o.max_length ~= '' then
  local max = tonumber(o.max_length)
  while waiting(q) >= max do
    if o.overflow == 'reject' then return {'full', tostring(max)} end
    if not make_room(q, o, 0) then break end
  end
end
if dk then redis.call('SET', dk, ARGV[11], 'PX', window) end
local ttl = tonumber(ARGV[9])
if ttl < 0 and o.ttl ~= '' then ttl = math.floor(tonumber(o.ttl) * 1000) end
local m = {h = ARGV[3], b = false, a = 0, x = 0, k = ARGV[6], p = tonumber(ARGV[7]), dr = '', df = ''}
if ARGV[4] == '1' then m.b = ARGV[5] end
if ttl >= 0 then m.x = now + ttl end
local delay = tonumber(ARGV[8])
if delay > 0 then
  m.n = redis.call('INCR', P .. 'seq')
  redis.call('ZADD', K(q, 'delayed'), now + delay, cmsgpack.pack(m))
else
  admit(q, o, m)
end
redis.call('HINCRBY', st, 'sent', 1)
rate(q, 's', now)
return {'ok', ARGV[11]}
"""

FETCH = COMMON + r"""
-- ARGV: P, queue, consumer, count. Returns {'ok', level, id, h, nb, b, a, dr, df, ...} or {'notfound'}
local q = ARGV[2]
local o = opts(q)
if not o then return {'notfound'} end
local consumer = ARGV[3]
local count = tonumber(ARGV[4])
local now = now_ms()
maintain(q, o, now, true)
local out = {'ok'}
local got = 0
local st = K(q, 'st')
if count > 0 then
  for _, level in ipairs(redis.call('ZREVRANGE', K(q, 'prios'), 0, -1)) do
    local s = K(q, 's:' .. level)
    while got < count do
      local r = redis.call('XREADGROUP', 'GROUP', 'g', consumer, 'COUNT', count - got, 'STREAMS', s, '>')
      if not r or not r[1] or #r[1][2] == 0 then break end
      for _, e in ipairs(r[1][2]) do
        local m = fromfields(e[2])
        unindex(q, level, e[1], m)
        redis.call('HINCRBY', st, 'ready', -1)
        if m.x > 0 and m.x <= now then
          redis.call('XACK', s, 'g', e[1])
          redis.call('XDEL', s, e[1])
          dead(q, o, m, 'expired')
        else
          redis.call('HINCRBY', st, 'inflight', 1)
          if m.a > 0 then redis.call('HINCRBY', st, 'redelivered', 1) end
          got = got + 1
          local nb = '0'
          if m.b then nb = '1' end
          for _, v in ipairs({level, e[1], m.h, nb, m.b or '', tostring(m.a), m.dr, m.df}) do out[#out + 1] = v end
        end
      end
    end
    drop_level_if_empty(q, level)
    if got >= count then break end
  end
end
return out
"""

SETTLE = COMMON + r"""
-- ARGV: P, queue, consumer, level, id, action (ack|nack|reject|unfetch|release), requeue (0|1), delay_ms
local q = ARGV[2]
local o = opts(q)
if not o then return 'stale' end
local consumer, level, id, action = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local s = K(q, 's:' .. level)
local pend = redis.pcall('XPENDING', s, 'g', id, id, 1)
if type(pend) ~= 'table' or pend.err or not pend[1] or pend[1][2] ~= consumer then return 'stale' end
local e = redis.call('XRANGE', s, id, id)
redis.call('XACK', s, 'g', id)
redis.call('XDEL', s, id)
local st = K(q, 'st')
redis.call('HINCRBY', st, 'inflight', -1)
if not e[1] then drop_level_if_empty(q, level); return 'stale' end
local m = fromfields(e[1][2])
local now = now_ms()
if action == 'ack' then
  redis.call('HINCRBY', st, 'acked', 1)
  rate(q, 'a', now)
  release_key(q, o, m)
elseif action == 'reject' then
  m.a = m.a + 1
  dead(q, o, m, 'rejected')
elseif action == 'nack' then
  m.a = m.a + 1
  if ARGV[7] == '1' then comeback(q, o, m, tonumber(ARGV[8]), now) else dead(q, o, m, 'nacked') end
elseif action == 'release' then
  m.a = m.a + 1
  comeback(q, o, m, 0, now)
else -- unfetch: never handed to the application, no attempt counted
  m.hold = 1
  stream_add(q, m)
end
drop_level_if_empty(q, level)
return 'ok'
"""

RELEASE = COMMON + r"""
-- ARGV: P, queue, consumer: every message this consumer holds comes back (counted as an attempt)
local q = ARGV[2]
local o = opts(q)
if not o then return 0 end
local consumer = ARGV[3]
local now = now_ms()
local n = 0
for _, level in ipairs(redis.call('ZRANGE', K(q, 'prios'), 0, -1)) do
  local s = K(q, 's:' .. level)
  local held = redis.call('XPENDING', s, 'g', '-', '+', 100000, consumer)
  for _, p in ipairs(held) do
    if give_back(q, o, s, p[1], now) then n = n + 1 end
  end
  redis.pcall('XGROUP', 'DELCONSUMER', s, 'g', consumer)
  drop_level_if_empty(q, level)
end
return n
"""

STATS = COMMON + r"""
-- ARGV: P, queue
local q = ARGV[2]
local o = opts(q)
if not o then return {'notfound'} end
local now = now_ms()
maintain(q, o, now, true)
local st = redis.call('HMGET', K(q, 'st'), 'ready', 'blocked', 'inflight', 'consumers', 'sent', 'acked',
                      'redelivered', 'dead_lettered', 'expired', 'deduplicated')
local out = {'ok'}
for i = 1, #st do out[#out + 1] = tostring(tonumber(st[i]) or 0) end
out[#out + 1] = tostring(redis.call('ZCARD', K(q, 'delayed')))
local sec = math.floor(now / 1000)
local s, a = 0, 0
for i = 1, 5 do
  s = s + (tonumber(redis.call('GET', K(q, 'r:s:' .. (sec - i)))) or 0)
  a = a + (tonumber(redis.call('GET', K(q, 'r:a:' .. (sec - i)))) or 0)
end
out[#out + 1] = tostring(s)
out[#out + 1] = tostring(a)
return out
"""

DECLARE = COMMON + r"""
-- ARGV: P, name, dlq, then option name/value pairs. Returns {'ok'} or {'diff', option names...}
local q, dlq = ARGV[2], ARGV[3]
local o = opts(q)
if o and o.side ~= '1' then
  local diff = {'diff'}
  for i = 4, #ARGV, 2 do
    if o[ARGV[i]] ~= ARGV[i + 1] then diff[#diff + 1] = ARGV[i] end
  end
  if #diff > 1 then return diff end
  return {'ok'}
end
local fields = {'dlq', dlq}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HDEL', K(q, 'opts'), 'side')
redis.call('HSET', K(q, 'opts'), unpack(fields))
redis.call('SADD', P .. 'queues', q)
if not opts(dlq) then
  local durable = '1'
  for i = 4, #ARGV, 2 do if ARGV[i] == 'durable' then durable = ARGV[i + 1] end end
  redis.call('HSET', K(dlq, 'opts'), 'dlq', dlq .. '.dlq', 'side', '1', 'durable', durable,
             'max_length', '', 'overflow', 'reject', 'dead_letter', '', 'max_attempts', '5',
             'visibility_timeout', '30.0', 'ordered_by_key', '0', 'ttl', '', 'dedup_window', '300.0')
  redis.call('SADD', P .. 'queues', dlq)
end
return {'ok'}
"""

TOPICS = r"""
local function words(s)
  local t = {}
  for w in string.gmatch(s, '[^%.]+') do t[#t + 1] = w end
  return t
end
local function match_at(p, i, t, j)
  if i > #p then return j > #t end
  local w = p[i]
  if w == '#' then
    for k = j, #t + 1 do if match_at(p, i + 1, t, k) then return true end end
    return false
  end
  if j > #t then return false end
  if w == '*' or w == t[j] then return match_at(p, i + 1, t, j + 1) end
  return false
end
local function matches(pattern, topic) return match_at(words(pattern), 1, words(topic), 1) end
local function enqueue_group(group, m, now)
  local q = '@' .. group
  local o = opts(q)
  if not o then return end
  local c = {h = m.h, b = m.b, a = 0, x = 0, k = m.k, p = 0, dr = '', df = ''}
  if o.ttl ~= '' then c.x = now + math.floor(tonumber(o.ttl) * 1000) end
  admit(q, o, c)
  redis.call('HINCRBY', K(q, 'st'), 'sent', 1)
  rate(q, 's', now)
end
"""

PUBLISH = COMMON + TOPICS + r"""
-- ARGV: P, topic, h, nb, b, key, retention
local topic = ARGV[2]
local m = {h = ARGV[3], b = false, k = ARGV[6]}
if ARGV[4] == '1' then m.b = ARGV[5] end
local now = now_ms()
local f = {'t', topic, 'h', m.h, 'k', m.k}
if m.b then f[#f + 1] = 'b'; f[#f + 1] = m.b end
redis.call('XADD', P .. 'topiclog', 'MAXLEN', '~', ARGV[7], '*', unpack(f))
local payload = struct.pack('>BI4', m.b and 2 or 1, #m.h) .. m.h .. (m.b or '')
redis.call('PUBLISH', P .. 't:' .. topic, payload)
local groups = redis.call('HGETALL', P .. 'groups')
for i = 1, #groups, 2 do
  if matches(groups[i + 1], topic) then enqueue_group(groups[i], m, now) end
end
return 'ok'
"""

GROUP = COMMON + TOPICS + r"""
-- ARGV: P, group, pattern, start, then the group queue's declaration (as for DECLARE: dlq, option pairs)
local group, pattern, start = ARGV[2], ARGV[3], ARGV[4]
local existing = redis.call('HGET', P .. 'groups', group)
if existing then
  if existing ~= pattern then return {'pattern', existing} end
  return {'ok'}
end
local q = '@' .. group
local fields = {'dlq', ARGV[5]}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', K(q, 'opts'), unpack(fields))
if not opts(ARGV[5]) then
  redis.call('HSET', K(ARGV[5], 'opts'), 'dlq', ARGV[5] .. '.dlq', 'side', '1', 'durable', '1',
             'max_length', '', 'overflow', 'reject', 'dead_letter', '', 'max_attempts', '5',
             'visibility_timeout', '30.0', 'ordered_by_key', '0', 'ttl', '', 'dedup_window', '300.0')
end
redis.call('HSET', P .. 'groups', group, pattern)
if start == 'earliest' then
  local now = now_ms()
  for _, e in ipairs(redis.call('XRANGE', P .. 'topiclog', '-', '+')) do
    local m = {b = false, k = ''}
    local f = e[2]
    for i = 1, #f, 2 do m[f[i]] = f[i + 1] end
    if matches(pattern, m.t) then enqueue_group(group, m, now) end
  end
end
return {'ok'}
"""
