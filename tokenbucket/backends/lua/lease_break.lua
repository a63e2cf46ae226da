-- lease_break: delete the lease whoever holds it, only if its fence is the expected one; wake a waiter.
--
-- KEYS[1]  the lease hash   {<prefix>lease:<name>}:lease
-- KEYS[2]  the signal list  {<prefix>lease:<name>}:signal
-- ARGV[1]  the expected fence (decimal integer)
-- Reply: {1, info...} broken (the info of the lease that was broken);
--   {0, info...} the fence differs (nothing changed); {0} nobody holds it.

local held = info(KEYS[1])
if not held then
  return {0}
end
if held[1] ~= ARGV[1] then
  return {0, unpack(held)}
end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl')) or 1000
redis.call('DEL', KEYS[1])
signal(KEYS[2], math.max(1000, ttl))
return {1, unpack(held)}
