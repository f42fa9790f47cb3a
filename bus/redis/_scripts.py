"""The Lua scripts of the Redis broker: each runs atomically, so two consumers never claim the
same entry.  Their keys are described in :mod:`bus.redis`.
"""

from __future__ import annotations

from redis.asyncio import Redis

# KEYS: stream, retry zset.  ARGV: group, consumer, now ms, count, min idle ms (-1: due retries
# only).  Claims due retries, then entries idle past min idle (any consumer's) that have no
# future retry time.  Returns {next due ms or -1, trimmed, id, fields, attempt, id, ...}.
_CLAIM = """
local stream, retries, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local now, count, min_idle = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out, got, trimmed = {0, 0}, 0, 0
local function claim(id, idle, deliveries)
  local entries = redis.call('XCLAIM', stream, group, consumer, idle, id)
  if #entries == 0 or not entries[1] then
    redis.call('XACK', stream, group, id)
    trimmed = trimmed + 1
    return
  end
  out[#out + 1] = entries[1][1]
  out[#out + 1] = entries[1][2]
  out[#out + 1] = deliveries + 1
  got = got + 1
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', retries, '-inf', now, 'LIMIT', 0, count)) do
  redis.call('ZREM', retries, id)
  local info = redis.call('XPENDING', stream, group, id, id, 1)
  if #info > 0 then claim(id, 0, info[1][4]) end
end
if min_idle >= 0 then
  local start = '-'
  for _ = 1, 10 do
    if got >= count then break end
    local page = redis.call('XPENDING', stream, group, 'IDLE', min_idle, start, '+', count)
    if #page == 0 then break end
    for _, p in ipairs(page) do
      if got >= count then break end
      if not redis.call('ZSCORE', retries, p[1]) then claim(p[1], min_idle, p[4]) end
    end
    start = '(' .. page[#page][1]
  end
end
local first = redis.call('ZRANGE', retries, 0, 0, 'WITHSCORES')
out[1] = -1
if #first > 0 then out[1] = tonumber(first[2]) end
out[2] = trimmed
return out
"""

# KEYS: stream, dead-letter stream, retry zset.  ARGV: group, entry id, data, metadata, maxlen
# (0 = none).  Publish to the dead-letter topic and ack, as one step.
_DEAD_LETTER = """
if tonumber(ARGV[5]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'data', ARGV[3], 'metadata', ARGV[4])
else
  redis.call('XADD', KEYS[2], '*', 'data', ARGV[3], 'metadata', ARGV[4])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
"""

# KEYS: stream.  ARGV: 1 to trim.  The oldest id some group still needs: per group its oldest
# pending entry, else the one after its last delivered.  No groups: false, nothing trimmed.
_LOW_WATER = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local low, low_ms, low_seq = false, 0, 0
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local need
  if info['pending'] > 0 then
    need = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    need = string.format('%d-%d', ms, seq + 1)
  end
  local ms, seq = parse(need)
  if not low or ms < low_ms or (ms == low_ms and seq < low_seq) then
    low, low_ms, low_seq = need, ms, seq
  end
end
if low and ARGV[1] == '1' then redis.call('XTRIM', KEYS[1], 'MINID', low) end
return low
"""

# KEYS: stream.  ARGV: group, consumer.  Delete the consumer only if it holds nothing pending.
_DROP_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


class Scripts:
    """The Lua scripts, registered once per client (redis-py reloads them after a restart)."""

    def __init__(self, client: Redis) -> None:
        self.claim = client.register_script(_CLAIM)
        self.dead_letter = client.register_script(_DEAD_LETTER)
        self.low_water = client.register_script(_LOW_WATER)
        self.drop_consumer = client.register_script(_DROP_CONSUMER)
