-- slot_renew: extend the slot held by the token. Never re-acquires.
--
-- ARGV[1] token   ARGV[2] ttl in ms   ARGV[3] name
-- Reply: {1, info...} renewed; {0} the token holds no slot (expired, broken, or lost in a restart).

local now, stamp = server_time()
purge(now)
local token = ARGV[1]
local raw = call('HGET', KEYS[2], token)
if not raw or not call('ZSCORE', KEYS[1], token) then
  return {0}
end
local f = fields(raw)
f[3] = stamp
f[4] = string.format('%d', tonumber(f[4]) + 1)
call('HSET', KEYS[2], token, table.concat(f, SEP))
call('ZADD', KEYS[1], now + tonumber(ARGV[2]), token)
keep(now)
return {1, unpack(info(token, now, ARGV[3]))}
