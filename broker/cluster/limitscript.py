"""The Lua scripts that count a key's limits in Redis, each run atomically by one EVALSHA.

Four keys per API key, in one hash slot (the `{bucket}` hash tag, so Redis Cluster takes
them in one script): a sorted set of the starts of the last minute, scored by the time
they started (ms); a sorted set of the leases in flight, scored by the time each expires
(ms); a hash with today's UTC day number (`day`) and the tokens used on it (`used`); and a
sorted set of the ids of the releases whose tokens were counted in the last minute.
Time is Redis's own (`TIME`), so the instances' clocks play no part. Reading the time in a
script that then writes needs script effects replication, the default from Redis 5 (the
cluster as a whole needs Redis 6.2, see docs/cluster.md).

Both scripts first apply the releases handed to them (lease ids, and the tokens they
used, each with an id so that a release sent twice counts once): an admission carries this
instance's releases of the same key that have not been sent yet, so a client that sends its
next request as soon as one ends finds its slot free.
"""

from __future__ import annotations

from typing import Final

_PRELUDE = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(sec / 86400)
local function release(first)
  -- ARGV[first]: n; then n pairs (release id, tokens); then the released lease ids.
  local n = tonumber(ARGV[first])
  local ids = first + 1 + 2 * n
  for i = ids, #ARGV do
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
  if n == 0 then
    return
  end
  -- Each release's tokens count once: its id is kept a minute, so one sent again (its
  -- first sending's outcome unknown to the sender) adds nothing the second time.
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 60000)
  local today = redis.call('HGET', KEYS[3], 'day') == tostring(day)
  for i = first + 1, ids - 1, 2 do
    local tokens = tonumber(ARGV[i + 1])
    -- Tokens count on today's counter only: absent (expired, or Redis restarted), it is
    -- seeded from the store, whose usage rows hold these tokens already.
    if redis.call('ZADD', KEYS[4], 'NX', now, ARGV[i]) == 1 and today and tokens > 0 then
      redis.call('HINCRBY', KEYS[3], 'used', tokens)
    end
  end
  redis.call('PEXPIRE', KEYS[4], 60000)
end
"""

ADMIT: Final = (
    _PRELUDE
    + """
-- KEYS: starts, leases, tokens, applied releases
-- ARGV: rpm, concurrency, daily tokens, lease id, lease ttl (ms), seed day, seed tokens,
--       n, n pairs (release id, tokens), released lease ids...
local rpm, concurrency, daily = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, ttl = ARGV[4], tonumber(ARGV[5])
release(8)
-- An admission its instance gave up on (its answer lost) and gave back before it ran here.
if redis.call('ZSCORE', KEYS[4], lease) then
  return {'gone', 0}
end
if daily > 0 then
  if redis.call('HGET', KEYS[3], 'day') ~= tostring(day) then
    if ARGV[6] ~= tostring(day) then
      return {'seed', day * 86400}
    end
    redis.call('HSET', KEYS[3], 'day', day, 'used', ARGV[7])
    redis.call('EXPIREAT', KEYS[3], (day + 1) * 86400 + 3600)
  end
  if tonumber(redis.call('HGET', KEYS[3], 'used')) >= daily then
    return {'daily', (day + 1) * 86400 - sec}
  end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'rpm', math.ceil((tonumber(oldest[2]) + 60000 - now) / 1000)}
  end
end
if concurrency > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= concurrency then
    return {'concurrency', 1}
  end
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, lease)
  redis.call('PEXPIRE', KEYS[1], 60000)
end
if concurrency > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {'ok', 0}
"""
)
"""Admit one request, or say which limit refuses it and in how many seconds to retry.

Replies `{'ok', 0}`, `{'rpm' | 'concurrency' | 'daily', seconds}`, or `{'seed', day start}`
when today's token counter is absent and the caller must read the day's usage from the
store and call again with it (the counter is set only if still absent). An admission whose
lease id is among the releases counted (given back by its instance, which lost its answer,
before Redis ran it) records nothing: `{'gone', 0}`, which nobody reads.
"""

RELEASE: Final = (
    _PRELUDE
    + """
-- KEYS: starts, leases, tokens, applied releases
-- ARGV: n, n pairs (release id, tokens), released lease ids...
release(1)
return 0
"""
)
"""Give leases back and count the tokens they used."""

REFRESH: Final = """
-- KEYS: leases; ARGV: lease ttl (ms), lease ids held...
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
"""
"""Push back the expiry of the leases this instance still holds (its requests still run);
only those Redis still has (XX): one released meanwhile is not brought back."""
