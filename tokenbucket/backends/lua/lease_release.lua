-- lease_release: delete the lease if the caller's token holds it, and wake a waiter.
--
-- KEYS[1]  the lease hash   {<prefix>lease:<name>}:lease
-- KEYS[2]  the signal list  {<prefix>lease:<name>}:signal
-- ARGV[1]  token
-- Reply: 1 released; 0 not held by this token (nothing changed).

if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl')) or 1000
redis.call('DEL', KEYS[1])
signal(KEYS[2], math.max(1000, ttl))
return 1
