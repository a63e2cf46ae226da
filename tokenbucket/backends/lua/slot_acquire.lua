-- slot_acquire: take a slot if the caller is at the front of the line and one is free;
-- else keep (or give) the caller its place in line.
--
-- ARGV[1] token   ARGV[2] limit   ARGV[3] ttl in ms   ARGV[4] wait ttl in ms (0: do not join the line)
-- ARGV[5] host    ARGV[6] pid     ARGV[7] task        ARGV[8] name
-- ARGV[9] fence TTL in ms: how long the counter outlives the last acquisition
-- Reply: {1, info...} granted (or already held by this token);
--        {0, ahead, soonest_ms} not granted: waiters before the caller, and the ms until the
--        soonest holder's slot expires (-1 when none is held);
--        an error 'tokenbucket-slots limit <stored>' when the name is in use with another limit.
-- Fences: INCR of KEYS[6], seeded from TIME in ms when missing (as lease_acquire.lua).

local now, stamp = server_time()
purge(now)
local token, limit = ARGV[1], tonumber(ARGV[2])
local held = call('ZCARD', KEYS[1])
local waiting = call('ZCARD', KEYS[3])
if held == 0 and waiting == 0 then
  call('HSET', KEYS[5], 'limit', ARGV[2])
else
  local stored = tonumber(call('HGET', KEYS[5], 'limit') or '0')
  if stored ~= limit then
    return redis.error_reply('ERR tokenbucket-slots limit ' .. string.format('%d', stored))
  end
end
if call('ZSCORE', KEYS[1], token) then
  return {1, unpack(info(token, now, ARGV[8]))}
end
local free = limit - held
local ahead = call('ZRANK', KEYS[3], token) or waiting
if ahead < free then
  call('ZREM', KEYS[3], token)
  call('ZREM', KEYS[4], token)
  if call('EXISTS', KEYS[6]) == 0 then
    call('SET', KEYS[6], string.format('%d', now))
  end
  local fence = call('INCR', KEYS[6])
  call('PEXPIRE', KEYS[6], ARGV[9])
  call('ZADD', KEYS[1], now + tonumber(ARGV[3]), token)
  call('HSET', KEYS[2], token, table.concat({string.format('%d', fence), stamp, stamp, '0', ARGV[5], ARGV[6], ARGV[7]}, SEP))
  call('DEL', TAG .. ':wake:' .. token)
  keep(now)
  return {1, unpack(info(token, now, ARGV[8]))}
end
if tonumber(ARGV[4]) > 0 then
  if not call('ZSCORE', KEYS[3], token) then
    call('ZADD', KEYS[3], call('HINCRBY', KEYS[5], 'seq', 1), token)
  end
  call('ZADD', KEYS[4], now + tonumber(ARGV[4]), token)
end
keep(now)
local first = call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local soonest = first[2] and (tonumber(first[2]) - now) or -1
return {0, ahead, soonest}
