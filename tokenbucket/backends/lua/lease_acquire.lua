-- lease_acquire: take the lease if nobody holds it; issue a larger fence.
--
-- KEYS[1]  the lease hash   {<prefix>lease:<name>}:lease
-- KEYS[2]  the fence key    {<prefix>lease:<name>}:fence
-- ARGV[1]  token: the new holder's random secret
-- ARGV[2]  ttl in ms (integer, > 0)
-- ARGV[3]  host    ARGV[4] pid    ARGV[5] task    ARGV[6] name
-- ARGV[7]  fence TTL in ms: how long the counter outlives the last acquisition
-- Reply: {1, info...} when acquired (info of the new lease), {0, info...} when
--   someone holds it (their info; the token is never returned).
-- Fences: INCR of KEYS[2]. A missing counter (first use, expired, or a restart
-- without persistence) is seeded from TIME in ms, so a fence issued after a
-- loss is still larger than every fence issued before it.

local now, now_ms = server_time()
local held = info(KEYS[1])
if held then
  return {0, unpack(held)}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], string.format('%d', now_ms))
end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'fence', string.format('%d', fence), 'host', ARGV[3],
  'pid', ARGV[4], 'task', ARGV[5], 'acquired', now, 'renewed', now, 'renewals', '0', 'ttl', ARGV[2],
  'name', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, unpack(info(KEYS[1]))}
