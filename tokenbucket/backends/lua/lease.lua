-- tokenbucket: helpers shared by every lease_*.lua script.
--
-- This prelude is prepended to each lease_<operation>.lua when the script is
-- loaded, so every lease operation is one EVALSHA. See
-- tokenbucket/backends/_redis_lease.py and tokenbucket/_lease.py for the why.
--
-- Keys of lease <name> (one hash tag, so a lease lives in one cluster slot;
-- every key carries a TTL):
--   {<prefix>lease:<name>}:lease   hash   the holder: token, fence, host, pid, task,
--                                         acquired, renewed (server time, s), renewals,
--                                         ttl (ms), name; expires with the lease
--   {<prefix>lease:<name>}:fence   string the last fence handed out (INCR); kept for
--                                         the fence TTL after the last acquisition
--   {<prefix>lease:<name>}:signal  list   one element pushed on release or break:
--                                         waiters BLPOP it instead of polling
-- Times come from Redis TIME: one clock for every host.
--
-- A lease "info" reply is the flat array
--   {fence, host, pid, task, acquired, renewed, renewals, expires_in_ms, name}

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 7: replicate effects, so TIME may precede writes
end

local function server_time()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2])), tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The info array of the lease in hash `key`, or nil when there is none.
local function info(key)
  local h = redis.call('HMGET', key, 'fence', 'host', 'pid', 'task', 'acquired', 'renewed', 'renewals', 'name')
  if not h[1] then return nil end
  local pttl = redis.call('PTTL', key)
  return {h[1], h[2], h[3], h[4], h[5], h[6], h[7], tostring(pttl), h[8]}
end

-- Wake one waiter: leave one element in the signal list, expiring after `ms`.
local function signal(key, ms)
  redis.call('DEL', key)
  redis.call('RPUSH', key, '1')
  redis.call('PEXPIRE', key, ms)
end
