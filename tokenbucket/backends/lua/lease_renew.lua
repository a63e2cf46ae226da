-- lease_renew: extend the lease if the caller's token still holds it. Never re-acquires.
--
-- KEYS[1]  the lease hash   {<prefix>lease:<name>}:lease
-- ARGV[1]  token
-- ARGV[2]  ttl in ms (integer, > 0): the lease now expires this long after TIME
-- Reply: {1, info...} renewed; {0, info...} held by another token (left alone);
--   {0} nobody holds it (expired, deleted, broken, or lost in a restart).

local held = info(KEYS[1])
if not held then
  return {0}
end
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return {0, unpack(held)}
end
local now = server_time()
redis.call('HSET', KEYS[1], 'renewed', now, 'ttl', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'renewals', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, unpack(info(KEYS[1]))}
